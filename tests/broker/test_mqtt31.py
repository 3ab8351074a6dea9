"""MQTT 3.1 ("MQIsdp", level 3) clients: accepted with 3.1's Client Identifier rule (1 to 23
characters, else CONNACK 0x02) and otherwise 3.1.1 semantics. Raw clients and paho's MQTTv31."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from edgebus.protocol import ConnAck, Connect, PubAck, Publish, SubAck, Subscribe, Subscription
from edgebus.protocol.enums import MQTT_3_1
from tests.clients import MQTT_3_1_1, PahoClient, RawClient, WillSpec, edgebus_only
from tests.conftest import BrokerHandle

RawFactory = Callable[..., Awaitable[RawClient]]


async def connect_3_1(client: RawClient, client_id: str, clean: bool = True) -> ConnAck | None:
    """Send a 3.1 CONNECT; the CONNACK, or None if the broker closed without one."""
    await client.send_packet(Connect(client_id, MQTT_3_1, "MQIsdp", clean_start=clean), MQTT_3_1)
    packet = await client.receive_packet_or_close()
    assert packet is None or isinstance(packet, ConnAck)
    return packet


async def test_3_1_connect_is_accepted_and_speaks_3_1_1(broker: BrokerHandle, raw: RawFactory) -> None:
    """§3.1 of the v3.1 spec: "MQIsdp" / 3 is accepted (CONNACK 0, §3.2 of 3.1); then a QoS 1 PUBLISH
    is acknowledged as on 3.1.1 [MQTT-4.3.2-2]."""
    client = await raw(broker, MQTT_3_1_1)
    connack = await connect_3_1(client, "dev-31")
    assert connack == ConnAck(False, 0)
    await client.send_packet(Publish("t/31", b"x", qos=1, packet_id=7))
    assert await client.receive_packet() == PubAck(7)


@pytest.mark.parametrize("client_id", ["a" * 23, "é" * 23, "1"])
async def test_3_1_client_id_of_1_to_23_characters_is_accepted(
    broker: BrokerHandle, raw: RawFactory, client_id: str
) -> None:
    """§3.1 of the v3.1 spec: the Client Identifier is 1 to 23 characters."""
    client = await raw(broker, MQTT_3_1_1)
    assert await connect_3_1(client, client_id) == ConnAck(False, 0)


@pytest.mark.parametrize(
    "client_id",
    [
        pytest.param(
            "a" * 24, marks=edgebus_only("Mosquitto 2.0.11 accepts a 3.1 client id over 23 characters")
        ),
        "",
    ],
)
async def test_3_1_client_id_too_long_or_empty_is_rejected(
    broker: BrokerHandle, raw: RawFactory, client_id: str
) -> None:
    """§3.1 of the v3.1 spec: a Client Identifier longer than 23 characters (or none: 3.1 has no
    server-assigned identifier) is answered with CONNACK 0x02 "Identifier rejected" and the close."""
    client = await raw(broker, MQTT_3_1_1)
    assert await connect_3_1(client, client_id) == ConnAck(False, 0x02)
    assert await client.expect_closed() == []


async def test_3_1_connack_has_no_session_present(broker: BrokerHandle, raw: RawFactory) -> None:
    """3.1's CONNACK byte 1 is reserved (§3.2 of 3.1): a resumed session is not announced there, while
    the same session resumed on 3.1.1 is [MQTT-3.2.2-2]."""
    first = await raw(broker, MQTT_3_1_1)
    assert await connect_3_1(first, "keep-31", clean=False) == ConnAck(False, 0)
    await first.aclose()
    again = await raw(broker, MQTT_3_1_1)
    assert await connect_3_1(again, "keep-31", clean=False) == ConnAck(False, 0)


@edgebus_only("Mosquitto 2.0.11 closes the connection on an invalid topic filter")
async def test_3_1_refused_subscription_gets_0x80(broker: BrokerHandle, raw: RawFactory) -> None:
    """3.1 defines no SUBACK failure code; a filter that cannot be granted ("a/#/b" is not a filter,
    [MQTT-4.7.1-2]) gets 0x80 as on 3.1.1 [MQTT-3.9.3-2]; the other filter of the same SUBSCRIBE is
    granted. (3.1 clients read any value outside 0-2 as a failure; closing instead would make a device
    reconnect and resubscribe in a loop.)"""
    client = await raw(broker, MQTT_3_1_1)
    assert await connect_3_1(client, "sub-31") == ConnAck(False, 0)
    await client.send_packet(Subscribe(3, (Subscription("a/#/b", 1), Subscription("ok/+", 1))))
    assert await client.receive_packet() == SubAck(3, (0x80, 1))


async def test_paho_3_1_qos_both_ways_retained_and_will(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """paho's MQTTv31 against the broker: subscribe, QoS 0/1/2 publish in both directions (3.1 to 3.1.1
    and back) with QoS downgraded to the granted maximum [MQTT-3.8.4-6], a retained message to a new
    3.1 subscription [MQTT-3.3.1-6], and a 3.1 client's will on an unclean close [MQTT-3.1.2-8]."""
    sub31 = paho("sub31", MQTT_3_1)
    pub31 = paho("pub31", MQTT_3_1)
    v311 = paho("peer311", MQTT_3_1_1)
    assert (await sub31.connect(*broker.address)).reason_code == 0
    assert (
        await pub31.connect(*broker.address, will=WillSpec("will/31", b"gone", 1, False))
    ).reason_code == 0
    assert (await v311.connect(*broker.address)).reason_code == 0
    assert await sub31.subscribe("to31/#", 2) == 2
    assert await v311.subscribe("from31/#", 2) == 2
    assert await v311.subscribe("will/31", 1) == 1
    for qos in (0, 1, 2):
        await pub31.publish(f"from31/{qos}", f"up{qos}".encode(), qos)
        await v311.publish(f"to31/{qos}", f"down{qos}".encode(), qos)
    up = sorted((m.topic, m.payload, m.qos) for m in await v311.expect_messages(3))
    down = sorted((m.topic, m.payload, m.qos) for m in await sub31.expect_messages(3))
    assert up == [(f"from31/{q}", f"up{q}".encode(), q) for q in (0, 1, 2)]
    assert down == [(f"to31/{q}", f"down{q}".encode(), q) for q in (0, 1, 2)]

    await pub31.publish("ret/31", b"kept", 1, retain=True)
    late = paho("late31", MQTT_3_1)
    assert (await late.connect(*broker.address)).reason_code == 0
    assert await late.subscribe("ret/#", 1) == 1
    retained = await late.expect_message()
    assert (retained.topic, retained.payload, retained.qos, retained.retain) == ("ret/31", b"kept", 1, True)

    await pub31.close()
    will = await v311.expect_message()
    assert (will.topic, will.payload, will.qos) == ("will/31", b"gone", 1)


@edgebus_only("Mosquitto 2.0.11 accepts a 3.1 client id over 23 characters")
async def test_paho_3_1_23_character_client_id(broker: BrokerHandle, paho: Callable[..., PahoClient]) -> None:
    """§3.1 of the v3.1 spec through paho's MQTTv31: 23 characters accepted, 24 refused with 0x02."""
    assert (await paho("c" * 23, MQTT_3_1).connect(*broker.address)).reason_code == 0
    refused = await paho("c" * 24, MQTT_3_1).connect(*broker.address)
    assert refused.reason_code == 0x85  # paho reports return code 0x02 as its 5.0 equivalent, 0x85

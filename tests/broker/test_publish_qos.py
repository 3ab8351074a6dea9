"""QoS 0, 1 and 2 in both directions, redelivery after reconnect, and per-topic order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from edgebus.protocol import PubAck, PubComp, Publish, PubRec, PubRel
from edgebus.protocol.packets import Properties
from tests.clients import (
    BOTH_VERSIONS,
    MQTT_5,
    PahoClient,
    RawClient,
    Sub,
    assert_protocol_close,
)
from tests.conftest import BrokerHandle, StartBroker

RawFactory = Callable[..., Awaitable[RawClient]]


def _session_properties(version: int) -> Properties | None:
    """A session that outlives the connection: Clean Session 0 on 3.1.1, plus an expiry on 5.0."""
    return Properties(session_expiry_interval=60) if version == MQTT_5 else None


@BOTH_VERSIONS
@pytest.mark.parametrize("published_qos", [0, 1, 2])
@pytest.mark.parametrize("granted_qos", [0, 1, 2])
async def test_delivered_qos_is_the_minimum_of_published_and_granted(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int, published_qos: int, granted_qos: int
) -> None:
    """Messages go out at min(published QoS, granted QoS) [MQTT-3.8.4-6] (3.1.1) / [MQTT-3.8.4-8] (5.0);
    DUP is 0 on a first delivery [MQTT-3.3.1-2] [MQTT-4.3.2-1] [MQTT-4.3.3-1] (3.1.1)."""
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    assert await subscriber.subscribe("qos/t", granted_qos) == granted_qos
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("qos/t", b"m", published_qos)
    message = await subscriber.expect_message()
    assert (message.topic, message.payload, message.qos) == ("qos/t", b"m", min(published_qos, granted_qos))
    assert message.dup is False


@BOTH_VERSIONS
async def test_qos1_publish_is_acknowledged_with_its_packet_id(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """The receiver of a QoS 1 PUBLISH answers PUBACK with the same Packet Identifier [MQTT-2.3.1-6]
    [MQTT-4.3.2-2] (3.1.1) / [MQTT-2.2.1-5] [MQTT-4.3.2-4] (5.0)."""
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("qos1/t", 1)
    publisher = await raw(broker, version)
    await publisher.mqtt_connect("raw-pub")
    await publisher.send_packet(Publish(topic="qos1/t", payload=b"one", qos=1, packet_id=7))
    ack = await publisher.receive_packet()
    assert isinstance(ack, PubAck)
    assert (ack.packet_id, ack.reason_code) == (7, 0)
    message = await subscriber.expect_message()
    assert (message.payload, message.qos) == (b"one", 1)


@BOTH_VERSIONS
async def test_qos2_inbound_flow_delivers_exactly_once(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """QoS 2 from a client: PUBREC for the PUBLISH and again for its DUP resend, PUBCOMP for the PUBREL,
    and the subscriber gets the message once [MQTT-4.3.3-2] (3.1.1) / [MQTT-4.3.3-8] [MQTT-4.3.3-10]
    [MQTT-4.3.3-11] (5.0)."""
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("qos2/t", 2)
    publisher = await raw(broker, version)
    await publisher.mqtt_connect("raw-pub")
    publish = Publish(topic="qos2/t", payload=b"two", qos=2, packet_id=9)
    await publisher.send_packet(publish)
    first = await publisher.receive_packet()
    assert isinstance(first, PubRec)
    assert (first.packet_id, first.reason_code) == (9, 0)
    await publisher.send_packet(Publish(topic="qos2/t", payload=b"two", qos=2, packet_id=9, dup=True))
    second = await publisher.receive_packet()
    assert isinstance(second, PubRec)
    assert second.packet_id == 9
    await publisher.send_packet(PubRel(packet_id=9))
    complete = await publisher.receive_packet()
    assert isinstance(complete, PubComp)
    assert (complete.packet_id, complete.reason_code) == (9, 0)
    message = await subscriber.expect_message()
    assert (message.payload, message.qos) == (b"two", 2)
    await subscriber.expect_no_message()


@BOTH_VERSIONS
async def test_qos1_outbound_flow(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """The server sends QoS 1 with a non-zero Packet Identifier and DUP 0 [MQTT-2.3.1-1] [MQTT-4.3.2-1]
    (3.1.1) / [MQTT-2.2.1-4] [MQTT-4.3.2-2] (5.0)."""
    subscriber = await raw(broker, version)
    await subscriber.mqtt_connect("raw-sub")
    assert (await subscriber.subscribe(Sub("out1/t", 1))).reason_codes == (1,)
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("out1/t", b"to raw", 1)
    publish = await subscriber.receive_packet()
    assert isinstance(publish, Publish)
    assert (publish.topic, publish.payload, publish.qos, publish.dup, publish.retain) == (
        "out1/t",
        b"to raw",
        1,
        False,
        False,
    )
    assert publish.packet_id
    await subscriber.send_packet(PubAck(packet_id=publish.packet_id))
    await subscriber.expect_no_packet()


@BOTH_VERSIONS
async def test_qos2_outbound_flow(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """The server answers PUBREC with a PUBREL of the same Packet Identifier [MQTT-4.3.3-1] (3.1.1) /
    [MQTT-4.3.3-4] (5.0) and sends nothing more after PUBCOMP."""
    subscriber = await raw(broker, version)
    await subscriber.mqtt_connect("raw-sub")
    await subscriber.subscribe(Sub("out2/t", 2))
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("out2/t", b"exactly once", 2)
    publish = await subscriber.receive_packet()
    assert isinstance(publish, Publish)
    assert (publish.payload, publish.qos, publish.dup) == (b"exactly once", 2, False)
    assert publish.packet_id
    await subscriber.send_packet(PubRec(packet_id=publish.packet_id))
    release = await subscriber.receive_packet()
    assert isinstance(release, PubRel)
    assert release.packet_id == publish.packet_id
    await subscriber.send_packet(PubComp(packet_id=publish.packet_id))
    await subscriber.expect_no_packet()


@BOTH_VERSIONS
async def test_inbound_dup_flag_is_not_propagated(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """DUP on the outgoing PUBLISH depends only on whether that PUBLISH is a retransmission [MQTT-3.3.1-3]."""
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("dup/t", 1)
    publisher = await raw(broker, version)
    await publisher.mqtt_connect("raw-pub")
    await publisher.send_packet(Publish(topic="dup/t", payload=b"d", qos=1, packet_id=3, dup=True))
    assert isinstance(await publisher.receive_packet(), PubAck)
    message = await subscriber.expect_message()
    assert (message.payload, message.dup) == (b"d", False)


@BOTH_VERSIONS
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_messages_on_one_topic_keep_their_order(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int, qos: int
) -> None:
    """Messages from one client on one topic at one QoS arrive in publication order [MQTT-4.6.0-6]
    (3.1.1) / [MQTT-4.6.0-5] [MQTT-4.6.0-6] (5.0)."""
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("order/t", qos)
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    count = 40
    results = [await publisher.publish("order/t", str(i).encode(), qos, wait=False) for i in range(count)]
    for result in results:
        await publisher.wait_published(result.mid)
    received = await subscriber.expect_messages(count)
    assert [m.payload for m in received] == [str(i).encode() for i in range(count)]


@BOTH_VERSIONS
async def test_unacknowledged_qos1_resent_with_dup_after_reconnect(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """On reconnect with a stored session the server re-sends unacknowledged PUBLISHes with their original
    Packet Identifiers [MQTT-4.4.0-1], DUP 1 [MQTT-3.3.1-1], in the original order [MQTT-4.6.0-1] (3.1.1);
    Session Present is 1 [MQTT-3.2.2-2] (3.1.1) / [MQTT-3.2.2-3] (5.0)."""
    subscriber = await raw(broker, version)
    await subscriber.mqtt_connect("resend", clean_start=False, properties=_session_properties(version))
    await subscriber.subscribe(Sub("resend/t", 1))
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("resend/t", b"first", 1)
    await publisher.publish("resend/t", b"second", 1)
    originals = await subscriber.receive_packets(2)
    assert all(isinstance(p, Publish) and not p.dup for p in originals)
    await subscriber.aclose()  # no PUBACK, no DISCONNECT

    again = await raw(broker, version)
    connack = await again.mqtt_connect("resend", clean_start=False, properties=_session_properties(version))
    assert connack.session_present is True
    resent = await again.receive_packets(2)
    assert [(p.payload, p.packet_id, p.dup, p.qos) for p in resent if isinstance(p, Publish)] == [
        (p.payload, p.packet_id, True, 1) for p in originals if isinstance(p, Publish)
    ]
    for packet in resent:
        assert isinstance(packet, Publish) and packet.packet_id is not None
        await again.send_packet(PubAck(packet_id=packet.packet_id))
    await again.expect_no_packet()


@BOTH_VERSIONS
async def test_pubrel_not_publish_resent_after_reconnect(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """A QoS 2 delivery interrupted after PUBREC resumes with the PUBREL [MQTT-4.4.0-1]; the PUBLISH is not
    sent again once its PUBREL was sent [MQTT-4.3.3-1] (3.1.1) / [MQTT-4.3.3-6] (5.0)."""
    subscriber = await raw(broker, version)
    await subscriber.mqtt_connect("pubrel", clean_start=False, properties=_session_properties(version))
    await subscriber.subscribe(Sub("pubrel/t", 2))
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("pubrel/t", b"q2", 2)
    publish = await subscriber.receive_packet()
    assert isinstance(publish, Publish) and publish.packet_id is not None
    await subscriber.send_packet(PubRec(packet_id=publish.packet_id))
    assert await subscriber.receive_packet() == PubRel(packet_id=publish.packet_id)
    await subscriber.aclose()  # no PUBCOMP

    again = await raw(broker, version)
    connack = await again.mqtt_connect("pubrel", clean_start=False, properties=_session_properties(version))
    assert connack.session_present is True
    assert await again.receive_packet() == PubRel(packet_id=publish.packet_id)
    await again.send_packet(PubComp(packet_id=publish.packet_id))
    await again.expect_no_packet()


async def test_no_resend_within_a_connection_v5(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """5.0 servers resend only on reconnect, never at other times [MQTT-4.4.0-1] (5.0)."""
    subscriber = await raw(broker, MQTT_5)
    await subscriber.mqtt_connect("slow-acker")
    await subscriber.subscribe(Sub("noresend/t", 1))
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("noresend/t", b"once", 1)
    publish = await subscriber.receive_packet()
    assert isinstance(publish, Publish)
    await subscriber.expect_no_packet(timeout=2.0)


async def test_publish_above_maximum_qos_is_refused_v5(
    start_broker: StartBroker, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """With Maximum QoS 1 a subscription asking QoS 2 is still accepted (granted 1) [MQTT-3.2.2-10] (5.0),
    and a QoS 2 PUBLISH gets DISCONNECT 0x9B "QoS not supported" (§3.2.2.3.4)."""
    broker = await start_broker(mqtt={"max_qos": 1})
    subscriber = paho("sub", MQTT_5)
    assert (await subscriber.connect(*broker.address)).properties.get("maximum_qos") == 1
    assert await subscriber.subscribe("maxqos/t", 2) == 1
    publisher = await raw(broker, MQTT_5)
    await publisher.mqtt_connect("too-high")
    await publisher.send_packet(Publish(topic="maxqos/t", payload=b"x", qos=2, packet_id=1))
    assert_protocol_close(await publisher.expect_closed(), MQTT_5, {0x9B})
    await subscriber.expect_no_message()

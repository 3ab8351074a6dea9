"""A CONNECT whose Protocol Level has the bridge bit (0x80, Mosquitto's ``try_private``): the connection
is accepted as a bridge, and its subscriptions get No Local and Retain As Published, as Mosquitto gives
them, so that what a bridge forwards is never sent back to it and retained flags cross it as published."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from edgebus.protocol import ConnAck, Connect, Publish, SubAck, Subscribe, Subscription
from edgebus.protocol.enums import BRIDGE_BIT, MQTT_3_1
from tests.clients import MQTT_3_1_1, RawClient, edgebus_only
from tests.conftest import BrokerHandle

RawFactory = Callable[..., Awaitable[RawClient]]

pytestmark = edgebus_only("the bridge bit is a Mosquitto extension; these check edgebus's answer to it")


async def connect_as(client: RawClient, client_id: str, level: int) -> None:
    name = "MQIsdp" if level & ~BRIDGE_BIT == MQTT_3_1 else "MQTT"
    await client.send_packet(Connect(client_id, level, name), level)
    assert await client.receive_packet() == ConnAck(False, 0)


@pytest.mark.parametrize("level", [MQTT_3_1 | BRIDGE_BIT, MQTT_3_1_1 | BRIDGE_BIT], ids=["0x83", "0x84"])
async def test_bridge_gets_no_echo_and_retain_as_published(
    broker: BrokerHandle, raw: RawFactory, level: int
) -> None:
    """Mosquitto's bridge protocol: level 0x83 / 0x84 is accepted (CONNACK 0) where [MQTT-3.1.2-2] would
    refuse it; the bridge's own PUBLISH is not sent back to it (No Local, [MQTT-3.8.3-3] of 5.0), and a
    retained PUBLISH from another client reaches it with RETAIN 1 (Retain As Published,
    [MQTT-3.3.1-13] of 5.0) where a 3.1.1 subscription gets RETAIN 0 [MQTT-3.3.1-9]."""
    bridge = await raw(broker, MQTT_3_1_1)
    await connect_as(bridge, "mosq-bridge", level)
    plain = await raw(broker, MQTT_3_1_1)
    await connect_as(plain, "plain", MQTT_3_1_1)
    for client in (bridge, plain):
        await client.send_packet(Subscribe(1, (Subscription("b/#", 0),)))
        assert await client.receive_packet() == SubAck(1, (0,))

    await bridge.send_packet(Publish("b/from-bridge", b"1"))
    assert await plain.receive_packet() == Publish("b/from-bridge", b"1")
    await bridge.expect_no_packet()  # no echo

    await plain.send_packet(Publish("b/kept", b"2", retain=True))
    assert await bridge.receive_packet() == Publish("b/kept", b"2", retain=True)
    assert await plain.receive_packet() == Publish("b/kept", b"2")  # echoed, RETAIN 0: no bridge bit

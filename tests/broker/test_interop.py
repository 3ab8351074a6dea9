"""Independent client implementations exchange messages through the broker: paho (3.1.1 and 5.0), amqtt,
mosquitto_pub and mosquitto_sub."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.clients import (
    MQTT_3_1_1,
    MQTT_5,
    AmqttClient,
    MosquittoSub,
    PahoClient,
    mosquitto_pub,
    mosquitto_sub,
)
from tests.conftest import BrokerHandle

QOS_LEVELS = pytest.mark.parametrize("qos", [0, 1, 2])


@QOS_LEVELS
@pytest.mark.parametrize(
    ("publisher_version", "subscriber_version"),
    [(MQTT_3_1_1, MQTT_5), (MQTT_5, MQTT_3_1_1)],
    ids=["v311-to-v5", "v5-to-v311"],
)
async def test_paho_versions_exchange_messages(
    broker: BrokerHandle,
    paho: Callable[..., PahoClient],
    qos: int,
    publisher_version: int,
    subscriber_version: int,
) -> None:
    """A message crosses protocol versions at the QoS it was sent with [MQTT-4.5.0-1] (3.1.1 and 5.0)."""
    subscriber = paho("sub", subscriber_version)
    await subscriber.connect(*broker.address)
    assert await subscriber.subscribe("interop/paho", 2) == 2
    publisher = paho("pub", publisher_version)
    await publisher.connect(*broker.address)
    await publisher.publish("interop/paho", b"across versions", qos)
    message = await subscriber.expect_message()
    assert (message.topic, message.payload, message.qos) == ("interop/paho", b"across versions", qos)


@QOS_LEVELS
async def test_amqtt_publishes_to_paho(
    broker: BrokerHandle, paho: Callable[..., PahoClient], amqtt: Callable[[str], AmqttClient], qos: int
) -> None:
    """amqtt (3.1.1) publishes at each QoS; a paho 5.0 subscriber gets it at that QoS [MQTT-3.8.4-8]."""
    subscriber = paho("paho-sub", MQTT_5)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("interop/amqtt/#", 2)
    publisher = amqtt("amqtt-pub")
    assert await publisher.connect(*broker.address) == 0
    await publisher.publish("interop/amqtt/x", b"from amqtt", qos)
    message = await subscriber.expect_message()
    assert (message.topic, message.payload, message.qos) == ("interop/amqtt/x", b"from amqtt", qos)
    await publisher.disconnect()


@QOS_LEVELS
async def test_paho_publishes_to_amqtt(
    broker: BrokerHandle, paho: Callable[..., PahoClient], amqtt: Callable[[str], AmqttClient], qos: int
) -> None:
    """amqtt subscribes with QoS 2 and receives a paho message at the published QoS [MQTT-3.8.4-6]."""
    subscriber = amqtt("amqtt-sub")
    await subscriber.connect(*broker.address)
    assert await subscriber.subscribe([("interop/to-amqtt", 2)]) == [2]
    publisher = paho("paho-pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("interop/to-amqtt", b"to amqtt", qos)
    message = await subscriber.expect_message()
    assert (message.topic, message.payload, message.qos) == ("interop/to-amqtt", b"to amqtt", qos)
    await subscriber.disconnect()


async def test_amqtt_retained_message_reaches_mosquitto_sub(
    broker: BrokerHandle, amqtt: Callable[[str], AmqttClient]
) -> None:
    """A retained message from amqtt is delivered to a later mosquitto_sub with RETAIN=1 [MQTT-3.3.1-6]
    [MQTT-3.3.1-8] (3.1.1)."""
    publisher = amqtt("amqtt-retain")
    await publisher.connect(*broker.address)
    await publisher.publish("interop/retained", b"kept", qos=1, retain=True)
    await publisher.disconnect()
    (line,) = await mosquitto_sub(*broker.address, "interop/retained", count=1, qos=1)
    assert (line.topic, line.payload, line.retain, line.qos) == ("interop/retained", b"kept", True, 1)


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
async def test_mosquitto_pub_to_paho(broker: BrokerHandle, paho: Callable[..., PahoClient], v5: bool) -> None:
    """mosquitto_pub's QoS 2 message arrives at a paho subscriber exactly once [MQTT-4.3.3-2]."""
    subscriber = paho("paho-sub", MQTT_5)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("interop/cli", 2)
    await mosquitto_pub(*broker.address, "interop/cli", b"from the cli", qos=2, v5=v5)
    message = await subscriber.expect_message()
    assert (message.topic, message.payload, message.qos) == ("interop/cli", b"from the cli", 2)
    await subscriber.expect_no_message()


async def test_paho_to_mosquitto_sub_with_user_properties(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """User properties from paho reach mosquitto_sub unaltered and in order [MQTT-3.3.2-17]
    [MQTT-3.3.2-18]."""
    publisher = paho("paho-pub", MQTT_5)
    await publisher.connect(*broker.address)
    async with MosquittoSub(*broker.address, "interop/props", count=1, qos=1, v5=True) as sub:
        await publisher.publish(
            "interop/props", b"p", 1, properties={"user_properties": [("k", "1"), ("j", "2"), ("k", "3")]}
        )
        (line,) = await sub.collect()
    assert (line.topic, line.payload, line.qos) == ("interop/props", b"p", 1)
    assert line.user_properties == "k:1 j:2 k:3"


async def test_mosquitto_pub_user_properties_to_paho(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """User properties set by mosquitto_pub reach paho in order, repeated names kept [MQTT-3.3.2-18]."""
    subscriber = paho("paho-sub", MQTT_5)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("interop/cli-props", 1)
    await mosquitto_pub(
        *broker.address,
        "interop/cli-props",
        "x",
        qos=1,
        v5=True,
        properties=[("PUBLISH", "user-property", "a", "1"), ("PUBLISH", "user-property", "a", "2")],
    )
    message = await subscriber.expect_message()
    assert message.properties.user_properties == (("a", "1"), ("a", "2"))


async def test_four_clients_share_one_topic_tree(
    broker: BrokerHandle, paho: Callable[..., PahoClient], amqtt: Callable[[str], AmqttClient]
) -> None:
    """Every implementation publishes once; every subscriber receives all four messages, each publisher's
    in order [MQTT-4.5.0-1] [MQTT-4.6.0-6] (3.1.1)."""
    paho_v311 = paho("paho311", MQTT_3_1_1)
    paho_v5 = paho("paho5", MQTT_5)
    amqtt_client = amqtt("amqtt")
    for client in (paho_v311, paho_v5):
        await client.connect(*broker.address)
        await client.subscribe("chat/#", 1)
    await amqtt_client.connect(*broker.address)
    await amqtt_client.subscribe([("chat/#", 1)])
    async with MosquittoSub(*broker.address, "chat/#", count=4, qos=1, v5=True) as cli_sub:
        await paho_v311.publish("chat/paho311", b"hi from paho 3.1.1", 1)
        await paho_v5.publish("chat/paho5", b"hi from paho 5", 1)
        await amqtt_client.publish("chat/amqtt", b"hi from amqtt", 1)
        await mosquitto_pub(*broker.address, "chat/cli", b"hi from the cli", qos=1)
        cli_lines = await cli_sub.collect()
    expected = {
        ("chat/paho311", b"hi from paho 3.1.1"),
        ("chat/paho5", b"hi from paho 5"),
        ("chat/amqtt", b"hi from amqtt"),
        ("chat/cli", b"hi from the cli"),
    }
    assert {(line.topic, line.payload) for line in cli_lines} == expected
    for client in (paho_v311, paho_v5):
        assert {(m.topic, m.payload) for m in await client.expect_messages(4)} == expected
    amqtt_seen = {(m.topic, m.payload) for m in [await amqtt_client.expect_message() for _ in range(4)]}
    assert amqtt_seen == expected
    await amqtt_client.disconnect()

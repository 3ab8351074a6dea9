"""Retained messages: set, replace, clear, deliver on subscribe, RETAIN flag on live delivery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from edgebus.protocol import Publish
from tests.clients import BOTH_VERSIONS, MQTT_3_1_1, MQTT_5, PahoClient, RawClient, Sub, assert_protocol_close
from tests.conftest import BrokerHandle, StartBroker

RawFactory = Callable[..., Awaitable[RawClient]]


@BOTH_VERSIONS
async def test_retained_message_delivered_on_subscribe(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """A retained message is stored [MQTT-3.3.1-5] and sent to a new subscriber [MQTT-3.3.1-6] with RETAIN
    1 [MQTT-3.3.1-8] (3.1.1) / [MQTT-3.3.1-5] [MQTT-3.3.1-9] (5.0), at min(QoS, granted QoS)."""
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("ret/t", b"kept", 1, retain=True)
    await publisher.disconnect()
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("ret/#", 2)
    message = await subscriber.expect_message()
    assert (message.topic, message.payload, message.retain, message.qos) == ("ret/t", b"kept", True, 1)
    low = paho("low", version)
    await low.connect(*broker.address)
    await low.subscribe("ret/t", 0)
    message = await low.expect_message()
    assert (message.payload, message.retain, message.qos) == (b"kept", True, 0)


@BOTH_VERSIONS
async def test_retained_message_replaced(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """A new retained message replaces the one stored for the topic [MQTT-3.3.1-5] (both versions)."""
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("ret/t", b"old", 1, retain=True)
    await publisher.publish("ret/t", b"new", 1, retain=True)
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("ret/t", 1)
    message = await subscriber.expect_message()
    assert (message.payload, message.retain) == (b"new", True)
    await subscriber.expect_no_message()


@BOTH_VERSIONS
async def test_retained_message_cleared_by_empty_payload(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """A retained PUBLISH with an empty payload is delivered normally but removes the retained message and
    is not stored itself [MQTT-3.3.1-10] [MQTT-3.3.1-11] (3.1.1) / [MQTT-3.3.1-6] [MQTT-3.3.1-7] (5.0)."""
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("ret/t", b"kept", 1, retain=True)
    live = paho("live", version)
    await live.connect(*broker.address)
    await live.subscribe("ret/t", 1)
    assert (await live.expect_message()).payload == b"kept"
    await publisher.publish("ret/t", b"", 1, retain=True)
    cleared = await live.expect_message()
    assert (cleared.topic, cleared.payload) == ("ret/t", b"")
    late = paho("late", version)
    await late.connect(*broker.address)
    await late.subscribe("ret/#", 1)
    await late.expect_no_message()


@BOTH_VERSIONS
async def test_live_delivery_clears_the_retain_flag(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """A retained message that matches an established subscription goes out with RETAIN 0 [MQTT-3.3.1-9]
    (3.1.1) / [MQTT-3.3.1-12] (5.0, Retain As Published 0)."""
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("ret/t", 1)
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("ret/t", b"live", 1, retain=True)
    message = await subscriber.expect_message()
    assert (message.payload, message.retain) == (b"live", False)


@BOTH_VERSIONS
async def test_non_retained_publish_leaves_the_retained_message(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """RETAIN 0 neither stores nor removes nor replaces a retained message [MQTT-3.3.1-12] (3.1.1) /
    [MQTT-3.3.1-8] (5.0)."""
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("ret/t", b"kept", 1, retain=True)
    await publisher.publish("ret/t", b"passing", 1, retain=False)
    await publisher.publish("ret/other", b"not kept", 1, retain=False)
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("ret/#", 1)
    message = await subscriber.expect_message()
    assert (message.topic, message.payload, message.retain) == ("ret/t", b"kept", True)
    await subscriber.expect_no_message()


@BOTH_VERSIONS
async def test_wildcard_subscription_gets_every_matching_retained_message(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """The last retained message on each matching topic is sent [MQTT-3.3.1-6] (3.1.1)."""
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    topics = ["house/kitchen/temp", "house/hall/temp", "house/kitchen/light", "garden/temp"]
    for topic in topics:
        await publisher.publish(topic, topic.encode(), 1, retain=True)
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("house/+/temp", 1)
    received = await subscriber.expect_messages(2)
    assert {(m.topic, m.payload, m.retain) for m in received} == {
        ("house/kitchen/temp", b"house/kitchen/temp", True),
        ("house/hall/temp", b"house/hall/temp", True),
    }
    await subscriber.expect_no_message()


@BOTH_VERSIONS
async def test_retained_message_resent_on_resubscribe(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """Re-subscribing with the same filter re-sends the matching retained messages [MQTT-3.8.4-3] (3.1.1) /
    [MQTT-3.8.4-4] (5.0, Retain Handling 0)."""
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("ret/t", b"kept", 0, retain=True)
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("ret/t", 1)
    assert (await subscriber.expect_message()).retain is True
    await subscriber.subscribe("ret/t", 1)
    again = await subscriber.expect_message()
    assert (again.payload, again.retain) == (b"kept", True)


async def test_retained_qos0_message_is_stored(broker: BrokerHandle, raw: RawFactory) -> None:
    """A QoS 0 retained message replaces the retained message; the server SHOULD store it
    [MQTT-3.3.1-7] (3.1.1). Checked on the wire: RETAIN 1, QoS 0, no Packet Identifier."""
    publisher = await raw(broker, MQTT_3_1_1)
    await publisher.mqtt_connect("raw-pub")
    await publisher.send_packet(Publish(topic="ret/q0", payload=b"zero", qos=0, retain=True))
    await trio.sleep(0.1)  # QoS 0 has no acknowledgement to wait for
    subscriber = await raw(broker, MQTT_3_1_1)
    await subscriber.mqtt_connect("raw-sub")
    await subscriber.subscribe(Sub("ret/q0", 2))
    message = await subscriber.receive_packet()
    assert message == Publish(topic="ret/q0", payload=b"zero", qos=0, retain=True)


async def test_retain_not_available_v5(
    start_broker: StartBroker, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """With retained messages off, CONNACK says Retain Available 0 (§3.2.2.3.5) and a PUBLISH with RETAIN 1
    gets DISCONNECT 0x9A "Retain not supported" (§3.3.1.3)."""
    broker = await start_broker(mqtt={"retain_available": False})
    client = await raw(broker, MQTT_5)
    connack = await client.mqtt_connect("retainer")
    assert connack.properties.retain_available == 0
    await client.send_packet(Publish(topic="ret/t", payload=b"x", qos=1, packet_id=1, retain=True))
    assert_protocol_close(await client.expect_closed(), MQTT_5, {0x9A})

"""SUBSCRIBE / UNSUBSCRIBE: SUBACK codes, wildcard matching, overlapping subscriptions, '$' topics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from edgebus.protocol import SubAck, Subscribe, Subscription
from tests.clients import (
    BOTH_VERSIONS,
    MQTT_3_1_1,
    MQTT_5,
    PahoClient,
    RawClient,
    Sub,
    edgebus_only,
)
from tests.conftest import BrokerHandle, StartBroker

RawFactory = Callable[..., Awaitable[RawClient]]


@BOTH_VERSIONS
async def test_suback_grants_each_filter_in_order(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """One SUBACK code per filter, in the order of the SUBSCRIBE, each the granted QoS [MQTT-3.8.4-1]
    [MQTT-3.8.4-5] [MQTT-3.9.3-1] (3.1.1) / [MQTT-3.8.4-6] [MQTT-3.8.4-7] [MQTT-3.9.3-1] (5.0)."""
    client = paho("sub", version)
    await client.connect(*broker.address)
    codes = await client.subscribe_many([Sub("s/two", 2), Sub("s/zero", 0), Sub("s/one", 1)])
    assert codes == [2, 0, 1]


@BOTH_VERSIONS
async def test_suback_carries_the_subscribe_packet_id(
    broker: BrokerHandle, raw: RawFactory, version: int
) -> None:
    """The SUBACK has the Packet Identifier of its SUBSCRIBE [MQTT-3.8.4-2] (both versions)."""
    client = await raw(broker, version)
    await client.mqtt_connect("raw-sub")
    await client.send_packet(Subscribe(packet_id=4242, subscriptions=(Subscription("pid/t", 1),)))
    assert await client.receive_packet() == SubAck(packet_id=4242, reason_codes=(1,))


@BOTH_VERSIONS
async def test_unsubscribe_stops_delivery(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """After UNSUBACK no new messages are delivered for the filter [MQTT-3.10.4-2] [MQTT-3.10.4-4]; other
    subscriptions stay."""
    client = paho("sub", version)
    await client.connect(*broker.address)
    await client.subscribe_many([Sub("un/gone", 1), Sub("un/kept", 1)])
    codes = await client.unsubscribe("un/gone")
    assert codes == ([0x00] if version == MQTT_5 else [])
    await client.publish("un/gone", b"x", 1)
    await client.publish("un/kept", b"y", 1)
    message = await client.expect_message()
    assert (message.topic, message.payload) == ("un/kept", b"y")
    await client.expect_no_message()


async def test_unsuback_reason_codes_in_order_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """UNSUBACK has one code per filter in order [MQTT-3.11.3-1]: 0x00 for a removed subscription, 0x11
    "No subscription existed" for the others (§3.11.3); unknown filters still get an UNSUBACK
    [MQTT-3.10.4-5]."""
    client = paho("sub", MQTT_5)
    await client.connect(*broker.address)
    await client.subscribe_many([Sub("u/a", 0), Sub("u/c", 0)])
    assert await client.unsubscribe("u/a", "u/b", "u/c") == [0x00, 0x11, 0x00]


async def test_unsuback_for_unknown_filter_v311(broker: BrokerHandle, raw: RawFactory) -> None:
    """Even where nothing is removed the server answers UNSUBACK with the same Packet Identifier
    [MQTT-3.10.4-4] [MQTT-3.10.4-5] (3.1.1)."""
    from edgebus.protocol import UnsubAck, Unsubscribe

    client = await raw(broker, MQTT_3_1_1)
    await client.mqtt_connect("raw-unsub")
    await client.send_packet(Unsubscribe(packet_id=77, topic_filters=("never/subscribed",)))
    assert await client.receive_packet() == UnsubAck(packet_id=77)


@BOTH_VERSIONS
async def test_resubscribe_replaces_the_subscription(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """A SUBSCRIBE with an existing filter replaces that subscription: one copy, at the new QoS
    [MQTT-3.8.4-3] (both versions)."""
    client = paho("sub", version)
    await client.connect(*broker.address)
    assert await client.subscribe("re/t", 2) == 2
    assert await client.subscribe("re/t", 0) == 0
    await client.publish("re/t", b"once", 2)
    message = await client.expect_message()
    assert (message.payload, message.qos) == (b"once", 0)
    await client.expect_no_message()


@BOTH_VERSIONS
@edgebus_only("one copy is edgebus's choice; Mosquitto 2.0.11 sends one per subscription, as §3.3.5 allows")
async def test_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """Overlapping subscriptions: the message is delivered respecting the maximum QoS of all matching
    subscriptions [MQTT-3.3.5-1] (3.1.1) / [MQTT-3.3.4-2] (5.0); edgebus sends exactly one copy."""
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe_many([Sub("ov/+", 0), Sub("ov/#", 2), Sub("ov/t", 1)])
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("ov/t", b"overlap", 2)
    message = await subscriber.expect_message()
    assert (message.topic, message.payload, message.qos) == ("ov/t", b"overlap", 2)
    await subscriber.expect_no_message()


@BOTH_VERSIONS
async def test_overlapping_subscriptions_respect_the_highest_qos(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """Whatever the number of copies, one of them comes at the maximum QoS of the matching subscriptions
    and none above it [MQTT-3.3.5-1] (3.1.1) / [MQTT-3.3.4-2] (5.0)."""
    subscriber = paho("sub", version)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe_many([Sub("ov2/+", 0), Sub("ov2/t", 1)])
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    await publisher.publish("ov2/t", b"overlap", 2)
    received = [await subscriber.expect_message()]
    await trio.sleep(0.3)
    received += subscriber.drain_messages()
    assert 1 <= len(received) <= 2
    assert max(m.qos for m in received) == 1
    assert all(m.payload == b"overlap" for m in received)


# Filters and the topics each must match, from the examples of §4.7.1.2, §4.7.1.3 and §4.7.3.
WILDCARD_CASES = {
    "sport/#": {"sport", "sport/tennis", "sport/tennis/player1", "sport/"},
    "sport/tennis/+": {"sport/tennis/player1"},
    "sport/+": {"sport/tennis", "sport/"},
    "+/+": {"sport/tennis", "/finance", "sport/"},
    "/+": {"/finance"},
    "+": {"sport", "Sport"},
    "#": {"sport", "sport/tennis", "sport/tennis/player1", "sport/", "/finance", "Sport"},
    "Sport": {"Sport"},
}
WILDCARD_TOPICS = ["sport", "sport/tennis", "sport/tennis/player1", "sport/", "/finance", "Sport"]


@BOTH_VERSIONS
async def test_wildcard_matching(broker: BrokerHandle, paho: Callable[..., PahoClient], version: int) -> None:
    """'#' matches the parent level and any number of levels, '+' exactly one level (also an empty one),
    a leading '/' makes an empty first level (§4.7.1.2, §4.7.1.3, §4.7.3); matching is case sensitive and
    without normalization [MQTT-4.7.3-4]."""
    subscribers: dict[str, PahoClient] = {}
    for number, topic_filter in enumerate(WILDCARD_CASES):
        client = paho(f"wild{number}", version)
        await client.connect(*broker.address)
        assert await client.subscribe(topic_filter, 1) == 1
        subscribers[topic_filter] = client
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    for topic in WILDCARD_TOPICS:
        await publisher.publish(topic, topic.encode(), 1)
    for topic_filter, client in subscribers.items():
        expected = WILDCARD_CASES[topic_filter]
        received = await client.expect_messages(len(expected))
        assert {m.topic for m in received} == expected, topic_filter
    await trio.sleep(0.3)
    for topic_filter, client in subscribers.items():
        assert client.drain_messages() == [], topic_filter


@BOTH_VERSIONS
async def test_dollar_topics_not_matched_by_leading_wildcards(
    start_broker: StartBroker, paho: Callable[..., PahoClient], version: int
) -> None:
    """Filters starting with '#' or '+' do not match topics starting with '$' [MQTT-4.7.2-1]; '$SYS/#'
    does."""
    broker = await start_broker(sys={"interval": 1})
    wildcard = paho("wildcard", version)
    await wildcard.connect(*broker.address)
    await wildcard.subscribe_many([Sub("#", 0), Sub("+/broker/#", 0), Sub("+/+", 0)])
    system = paho("system", version)
    await system.connect(*broker.address)
    await system.subscribe("$SYS/#", 0)
    sys_message = await system.expect_message(timeout=3.0)
    assert sys_message.topic.startswith("$SYS/")
    await trio.sleep(1.2)  # at least one more $SYS interval
    assert [m.topic for m in wildcard.drain_messages() if m.topic.startswith("$")] == []


async def test_sys_interval_zero_disables_sys_topics(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """With sys.interval 0 nothing is published under $SYS."""
    broker = await start_broker(sys={"interval": 0})
    client = paho("system", MQTT_5)
    await client.connect(*broker.address)
    await client.subscribe("$SYS/#", 0)
    await client.expect_no_message(timeout=1.5)


@edgebus_only("the $SYS topic names and values are edgebus's")
async def test_sys_topics_report_the_broker(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """$SYS/broker/version names edgebus, and the connected-clients count includes this client."""
    broker = await start_broker(sys={"interval": 1})
    client = paho("system", MQTT_5)
    await client.connect(*broker.address)
    await client.subscribe("$SYS/broker/#", 0)
    values: dict[str, bytes] = {}
    # The retained values may predate this client; the next publication (interval 1 s) counts it.
    with trio.fail_after(3):
        while not (
            {"$SYS/broker/version", "$SYS/broker/uptime"} <= set(values)
            and int(values.get("$SYS/broker/clients/connected", b"0")) >= 1
        ):
            message = await client.expect_message()
            values[message.topic] = message.payload
    assert values["$SYS/broker/version"].startswith(b"edgebus ")
    assert values["$SYS/broker/uptime"].endswith(b" seconds")


@BOTH_VERSIONS
async def test_malformed_topic_filter_is_not_granted(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """'#' not last, or a wildcard sharing a level, breaks [MQTT-4.7.1-2] [MQTT-4.7.1-3] (3.1.1) /
    [MQTT-4.7.1-1] [MQTT-4.7.1-2] (5.0): the server either refuses the subscription (SUBACK 0x80 / 0x8F) or
    closes the connection; it never grants it, and other clients are unaffected."""
    from edgebus.protocol import Disconnect

    client = await raw(broker, version)
    await client.mqtt_connect("bad-filter")
    await client.send_packet(Subscribe(packet_id=5, subscriptions=(Subscription("a/#/b", 1),)))
    answer = await client.receive_packet_or_close()
    if isinstance(answer, SubAck):
        assert answer.packet_id == 5
        assert answer.reason_codes[0] >= 0x80
    else:
        assert answer is None or (isinstance(answer, Disconnect) and answer.reason_code >= 0x80), answer
        await client.expect_closed()
    healthy = paho("healthy", version)
    await healthy.connect(*broker.address)
    await healthy.subscribe("ok/t", 1)
    await healthy.publish("ok/t", b"fine", 1)
    assert (await healthy.expect_message()).payload == b"fine"


async def test_wildcard_subscriptions_can_be_disabled_v5(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """With wildcards off, CONNACK says Wildcard Subscription Available 0 (§3.2.2.3.11) and a filter with a
    wildcard gets SUBACK 0xA2 "Wildcard Subscriptions not supported" (§3.9.3) while a plain one is
    granted."""
    broker = await start_broker(mqtt={"wildcard_subscriptions": False})
    client = paho("sub", MQTT_5)
    connack = await client.connect(*broker.address)
    assert connack.properties.get("wildcard_subscription_available") == 0
    assert await client.subscribe_many([Sub("w/+", 1), Sub("w/t", 1), Sub("w/#", 1)]) == [0xA2, 1, 0xA2]

"""MQTT 5.0 features: properties passed through, message expiry, topic aliases, maximum packet size, flow
control, AUTH, subscription identifiers and options (No Local, Retain As Published, Retain Handling)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from edgebus.protocol import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PubAck,
    Publish,
    PubRec,
    UnsubAck,
    Unsubscribe,
)
from edgebus.protocol.packets import Properties, Subscribe, Subscription
from tests.clients import (
    MQTT_5,
    PahoClient,
    RawClient,
    Sub,
    assert_protocol_close,
    edgebus_only,
    mosquitto_deviates,
    raw_packet,
    utf8,
)
from tests.conftest import BrokerHandle, StartBroker

RawFactory = Callable[..., Awaitable[RawClient]]


async def _pair(
    paho: Callable[..., PahoClient], broker: BrokerHandle, topic_filter: str
) -> tuple[PahoClient, PahoClient]:
    """A 5.0 subscriber on ``topic_filter`` (QoS 2) and a 5.0 publisher."""
    subscriber = paho("sub", MQTT_5)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe(topic_filter, 2)
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    return subscriber, publisher


# --- properties passed through ------------------------------------------------------------------------


async def test_user_properties_forwarded_unaltered_and_in_order(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """User properties reach the subscriber unaltered [MQTT-3.3.2-17] and in order, repeated names
    included [MQTT-3.3.2-18]."""
    subscriber, publisher = await _pair(paho, broker, "up/t")
    user_properties = [("b", "1"), ("a", "2"), ("b", "3"), ("ключ", "значение"), ("empty", "")]
    await publisher.publish("up/t", b"x", 1, properties={"user_properties": user_properties})
    message = await subscriber.expect_message()
    assert message.properties.user_properties == tuple(user_properties)


async def test_request_response_properties_forwarded(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """Response Topic, Correlation Data, Content Type and Payload Format Indicator are passed unaltered
    [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-20] [MQTT-3.3.2-4], so a responder can answer a requester
    (§4.10)."""
    responder, requester = await _pair(paho, broker, "service/request")
    await requester.subscribe("client/reply", 1)
    request_properties = {
        "response_topic": "client/reply",
        "correlation_data": b"\x00\xffid-42",
        "content_type": "application/json",
        "payload_format_indicator": 1,
    }
    await requester.publish("service/request", b'{"q": 1}', 1, properties=request_properties)
    request = await responder.expect_message()
    assert request.properties.response_topic == "client/reply"
    assert request.properties.correlation_data == b"\x00\xffid-42"
    assert request.properties.content_type == "application/json"
    assert request.properties.payload_format_indicator == 1
    await responder.publish(
        request.properties.response_topic,
        b'{"a": 2}',
        1,
        properties={"correlation_data": request.properties.correlation_data},
    )
    reply = await requester.expect_message()
    assert (reply.topic, reply.payload, reply.properties.correlation_data) == (
        "client/reply",
        b'{"a": 2}',
        b"\x00\xffid-42",
    )


async def test_message_expiry_counted_down_while_queued(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """A queued message whose Message Expiry Interval has passed is not delivered [MQTT-3.3.2-5]; one still
    valid carries the received interval minus the time it waited [MQTT-3.3.2-6]."""
    subscriber = paho("offline", MQTT_5)
    await subscriber.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    await subscriber.subscribe("exp/#", 1)
    await subscriber.disconnect()
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("exp/short", b"stale", 1, properties={"message_expiry_interval": 1})
    await publisher.publish("exp/long", b"fresh", 1, properties={"message_expiry_interval": 30})
    await trio.sleep(2.2)
    await subscriber.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    message = await subscriber.expect_message()
    assert (message.topic, message.payload) == ("exp/long", b"fresh")
    remaining = message.properties.message_expiry_interval
    assert remaining is not None and 25 <= remaining <= 28, remaining
    await subscriber.expect_no_message()


async def test_request_problem_information_zero_suppresses_reason_strings(
    broker: BrokerHandle, raw: RawFactory
) -> None:
    """With Request Problem Information 0 the server sends no Reason String or User Properties on packets
    other than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29]: an UNSUBACK 0x11 comes bare."""
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("quiet", properties=Properties(request_problem_information=0))
    await client.send_packet(Unsubscribe(packet_id=3, topic_filters=("never/subscribed",)))
    unsuback = await client.receive_packet()
    assert isinstance(unsuback, UnsubAck)
    assert (unsuback.packet_id, unsuback.reason_codes) == (3, (0x11,))
    assert unsuback.properties.reason_string is None
    assert unsuback.properties.user_properties == ()


# --- topic aliases ------------------------------------------------------------------------------------


async def test_topic_alias_from_client(
    start_broker: StartBroker, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """The server announces its Topic Alias Maximum (§3.2.2.3.8) and accepts aliases 1..maximum
    [MQTT-3.3.2-12]: a PUBLISH with a topic sets the alias, an empty topic uses it, a new topic remaps it."""
    broker = await start_broker(mqtt={"topic_alias_maximum": 5})
    subscriber = paho("sub", MQTT_5)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("alias/#", 1)
    publisher = await raw(broker, MQTT_5)
    connack = await publisher.mqtt_connect("aliaser")
    assert connack.properties.topic_alias_maximum == 5
    sends = [
        ("alias/first", b"1", "alias/first"),
        ("", b"2", "alias/first"),
        ("alias/second", b"3", "alias/second"),
    ]
    for packet_id, (topic, payload, _) in enumerate(sends, start=1):
        alias = Properties(topic_alias=5)
        await publisher.send_packet(
            Publish(topic=topic, payload=payload, qos=1, packet_id=packet_id, properties=alias)
        )
        assert await publisher.receive_packet() == PubAck(packet_id=packet_id)
    received = await subscriber.expect_messages(3)
    assert [(m.topic, m.payload) for m in received] == [(topic, payload) for _, payload, topic in sends]


@pytest.mark.parametrize(
    "alias",
    [pytest.param(0, marks=mosquitto_deviates("answers Topic Alias 0 with 0x81, not 0x94 (§3.3.2.3.4)")), 6],
)
async def test_topic_alias_out_of_range_closes(
    start_broker: StartBroker, raw: RawFactory, alias: int
) -> None:
    """Topic Alias 0 [MQTT-3.3.2-8] or above the Topic Alias Maximum [MQTT-3.2.2-17] is answered with
    DISCONNECT 0x94 "Topic Alias invalid" (§3.3.2.3.4)."""
    broker = await start_broker(mqtt={"topic_alias_maximum": 5})
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("bad-alias")
    # Written by hand: the codec refuses to encode Topic Alias 0. Property 0x23 is a two-byte integer.
    properties = b"\x23" + alias.to_bytes(2, "big")
    await client.send(raw_packet(0x30, utf8("alias/t") + bytes((len(properties),)) + properties + b"x"))
    assert_protocol_close(await client.expect_closed(), MQTT_5, {0x94})


async def test_unknown_topic_alias_closes(start_broker: StartBroker, raw: RawFactory) -> None:
    """An empty topic with an alias that has no mapping is a Protocol Error (§3.3.4): DISCONNECT 0x82 (or
    0x94 "Topic Alias invalid")."""
    broker = await start_broker(mqtt={"topic_alias_maximum": 5})
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("unknown-alias")
    await client.send_packet(Publish(topic="", payload=b"x", properties=Properties(topic_alias=2)))
    assert_protocol_close(await client.expect_closed(), MQTT_5, {0x82, 0x94})


async def test_topic_aliases_to_client_stay_within_its_maximum(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """Aliases the server sends are 1..the client's Topic Alias Maximum [MQTT-3.3.2-8] [MQTT-3.3.2-11]
    [MQTT-3.1.2-26], and every PUBLISH resolves to the topic that was published."""
    subscriber = await raw(broker, MQTT_5)
    await subscriber.mqtt_connect("alias-sub", properties=Properties(topic_alias_maximum=2))
    await subscriber.subscribe(Sub("ta/#", 0))
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    topics = ["ta/a", "ta/a", "ta/b", "ta/c", "ta/a", "ta/b", "ta/b", "ta/c"]
    for number, topic in enumerate(topics):
        await publisher.publish(topic, str(number).encode(), 1)
    aliases: dict[int, str] = {}
    resolved = []
    for _ in topics:
        publish = await subscriber.receive_packet()
        assert isinstance(publish, Publish)
        alias = publish.properties.topic_alias
        topic = publish.topic
        if alias is not None:
            assert 1 <= alias <= 2
            if topic:
                aliases[alias] = topic
            else:
                topic = aliases[alias]
        resolved.append((topic, publish.payload))
    assert resolved == [(topic, str(number).encode()) for number, topic in enumerate(topics)]


async def test_no_topic_alias_to_client_without_maximum(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """A client that sent no Topic Alias Maximum gets no Topic Aliases [MQTT-3.1.2-27]."""
    subscriber = await raw(broker, MQTT_5)
    await subscriber.mqtt_connect("no-alias-sub")
    await subscriber.subscribe(Sub("na/t", 0))
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    for number in range(3):
        await publisher.publish("na/t", str(number).encode(), 0)
    for _ in range(3):
        publish = await subscriber.receive_packet()
        assert isinstance(publish, Publish)
        assert (publish.topic, publish.properties.topic_alias) == ("na/t", None)


# --- maximum packet size ------------------------------------------------------------------------------


async def test_packet_larger_than_server_maximum_closes(
    start_broker: StartBroker, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """The server announces Maximum Packet Size (§3.2.2.3.6); a larger packet from the client is answered
    with DISCONNECT 0x95 "Packet too large" and the connection closed (§3.2.2.3.6, §4.13)."""
    broker = await start_broker(mqtt={"max_packet_size": 1024})
    client = await raw(broker, MQTT_5)
    connack = await client.mqtt_connect("big-sender")
    assert connack.properties.maximum_packet_size == 1024
    await client.send_packet(Publish(topic="big/t", payload=b"x" * 2000, qos=1, packet_id=1))
    assert_protocol_close(await client.expect_closed(), MQTT_5, {0x95})


async def test_packets_larger_than_client_maximum_are_not_sent(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """The server does not send packets exceeding the client's Maximum Packet Size [MQTT-3.1.2-24]; it
    discards them as if sent [MQTT-3.1.2-25], and later messages still arrive."""
    subscriber = await raw(broker, MQTT_5)
    await subscriber.mqtt_connect("small-receiver", properties=Properties(maximum_packet_size=200))
    await subscriber.subscribe(Sub("size/t", 1))
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("size/t", b"L" * 500, 1)
    await publisher.publish("size/t", b"small", 1)
    publish = await subscriber.receive_packet()
    assert isinstance(publish, Publish)
    assert publish.payload == b"small"
    assert publish.packet_id is not None
    await subscriber.send_packet(PubAck(packet_id=publish.packet_id))
    await subscriber.expect_no_packet()


# --- flow control -------------------------------------------------------------------------------------


@mosquitto_deviates("does not enforce its own Receive Maximum on inbound QoS 2 (§3.3.4, 0x93)")
async def test_receive_maximum_exceeded_closes(start_broker: StartBroker, raw: RawFactory) -> None:
    """A client sending more unacknowledged QoS 2 PUBLISHes than the server's Receive Maximum breaks
    [MQTT-3.3.4-7]; the server answers DISCONNECT 0x93 "Receive Maximum exceeded" (§3.3.4)."""
    broker = await start_broker(mqtt={"receive_maximum": 2})
    client = await raw(broker, MQTT_5)
    connack = await client.mqtt_connect("flooder")
    assert connack.properties.receive_maximum == 2
    for packet_id in (1, 2, 3):  # no PUBREL: each QoS 2 flow stays open
        await client.send_packet(Publish(topic="flood/t", payload=b"x", qos=2, packet_id=packet_id))
    packets = await client.expect_closed()
    acknowledgements = [p for p in packets if isinstance(p, PubRec)]
    assert [p.packet_id for p in acknowledgements] == [1, 2]
    assert_protocol_close([p for p in packets if not isinstance(p, PubRec)], MQTT_5, {0x93})


@mosquitto_deviates("sends Receive Maximum + 1 QoS 1 PUBLISHes after the first PUBACK [MQTT-3.3.4-9]")
async def test_server_respects_client_receive_maximum(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """The server never has more unacknowledged QoS 1 PUBLISHes out than the client's Receive Maximum
    [MQTT-3.3.4-9]; each PUBACK lets the next one go, in order."""
    subscriber = await raw(broker, MQTT_5)
    await subscriber.mqtt_connect("slow", properties=Properties(receive_maximum=2))
    await subscriber.subscribe(Sub("flow/t", 1))
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    for number in range(5):
        await publisher.publish("flow/t", str(number).encode(), 1)
    window = await subscriber.receive_packets(2)
    await subscriber.expect_no_packet()
    received: list[bytes] = []
    while len(received) < 5:
        oldest = window.pop(0)
        assert isinstance(oldest, Publish) and oldest.packet_id is not None
        received.append(oldest.payload)
        await subscriber.send_packet(PubAck(packet_id=oldest.packet_id))
        if len(received) + len(window) < 5:
            window.append(await subscriber.receive_packet())
        await subscriber.expect_no_packet(timeout=0.1)
    assert received == [b"0", b"1", b"2", b"3", b"4"]


# --- AUTH ---------------------------------------------------------------------------------------------


async def test_unsupported_authentication_method_is_refused(broker: BrokerHandle, raw: RawFactory) -> None:
    """A CONNECT with an Authentication Method the server does not support: CONNACK 0x8C "Bad
    authentication method" (or 0x87) and close [MQTT-4.12.0-1]."""
    client = await raw(broker, MQTT_5)
    connect = Connect(client_id="scram", properties=Properties(authentication_method="SCRAM-SHA-1"))
    await client.send_packet(connect)
    packets = await client.expect_closed()
    assert len(packets) == 1, packets
    (connack,) = packets
    assert isinstance(connack, ConnAck)
    assert connack.reason_code in (0x8C, 0x87)
    assert connack.session_present is False  # [MQTT-3.2.2-6]


async def test_auth_packet_without_authentication_method_closes(
    broker: BrokerHandle, raw: RawFactory
) -> None:
    """A client that did not set an Authentication Method in CONNECT must not send AUTH [MQTT-4.12.0-7];
    the server treats it as a Protocol Error: DISCONNECT 0x82 and close (§4.13)."""
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("no-method")
    await client.send_packet(
        Auth(reason_code=0x19, properties=Properties(authentication_method="SCRAM-SHA-1"))
    )
    assert_protocol_close(await client.expect_closed(), MQTT_5, {0x82})


# --- subscription identifiers and options ---------------------------------------------------------------


async def test_subscription_identifiers_delivered(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """A message published because of subscriptions with identifiers carries them [MQTT-3.3.4-3]; a single
    copy for overlapping subscriptions carries all of them [MQTT-3.3.4-4]."""
    subscriber = paho("sub", MQTT_5)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("sid/#", 1, subscription_identifier=7)
    await subscriber.subscribe("sid/t", 1, subscription_identifier=268_435_455)
    await subscriber.subscribe("sid/+", 1)  # no identifier
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    for topic, expected in (("sid/other", {7}), ("sid/t", {7, 268_435_455})):
        await publisher.publish(topic, b"m", 1)
        copies = [await subscriber.expect_message()]
        await trio.sleep(0.3)  # a broker may send one copy per matching subscription (§3.3.4)
        copies += subscriber.drain_messages()
        identifiers = [set(m.properties.subscription_identifiers) for m in copies]
        assert set().union(*identifiers) == expected, topic
        if len(copies) == 1:
            assert identifiers == [expected], topic


async def test_subscription_identifiers_can_be_disabled(start_broker: StartBroker, raw: RawFactory) -> None:
    """Without support, CONNACK says Subscription Identifiers Available 0 (§3.2.2.3.12) and a SUBSCRIBE
    carrying one gets DISCONNECT 0xA1 "Subscription Identifiers not supported" (§3.2.2.3.12)."""
    from edgebus.protocol import Subscribe, Subscription

    broker = await start_broker(mqtt={"subscription_identifiers": False})
    client = await raw(broker, MQTT_5)
    connack = await client.mqtt_connect("sid-user")
    assert connack.properties.subscription_identifier_available == 0
    await client.send_packet(
        Subscribe(
            packet_id=1,
            subscriptions=(Subscription("sid/t", 1),),
            properties=Properties(subscription_identifiers=(3,)),
        )
    )
    assert_protocol_close(await client.expect_closed(), MQTT_5, {0xA1})


async def test_no_local(broker: BrokerHandle, paho: Callable[..., PahoClient]) -> None:
    """No Local 1: messages are not forwarded to the connection with the publisher's ClientID
    [MQTT-3.8.3-3]; other publishers' messages are."""
    client = paho("talker", MQTT_5)
    await client.connect(*broker.address)
    await client.subscribe("nl/t", 1, no_local=True)
    await client.publish("nl/t", b"mine", 1)
    other = paho("other", MQTT_5)
    await other.connect(*broker.address)
    await other.publish("nl/t", b"theirs", 1)
    message = await client.expect_message()
    assert message.payload == b"theirs"
    await client.expect_no_message()


async def test_retain_as_published(broker: BrokerHandle, paho: Callable[..., PahoClient]) -> None:
    """Retain As Published 0 clears RETAIN on forwarded messages [MQTT-3.3.1-12]; 1 keeps the flag as
    published [MQTT-3.3.1-13]."""
    plain, keeper = paho("plain", MQTT_5), paho("keeper", MQTT_5)
    await plain.connect(*broker.address)
    await plain.subscribe("rap/t", 1, retain_as_published=False)
    await keeper.connect(*broker.address)
    await keeper.subscribe("rap/t", 1, retain_as_published=True)
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("rap/t", b"retained", 1, retain=True)
    await publisher.publish("rap/t", b"plain", 1, retain=False)
    assert [(m.payload, m.retain) for m in await plain.expect_messages(2)] == [
        (b"retained", False),
        (b"plain", False),
    ]
    assert [(m.payload, m.retain) for m in await keeper.expect_messages(2)] == [
        (b"retained", True),
        (b"plain", False),
    ]


@pytest.mark.parametrize(
    ("retain_handling", "first_time", "second_time"),
    [(0, True, True), (1, True, False), (2, False, False)],
    ids=["send-on-subscribe", "send-if-new", "do-not-send"],
)
async def test_retain_handling(
    broker: BrokerHandle,
    paho: Callable[..., PahoClient],
    retain_handling: int,
    first_time: bool,
    second_time: bool,
) -> None:
    """Retain Handling 0 sends retained messages on every SUBSCRIBE [MQTT-3.3.1-9], 1 only when the
    subscription is new [MQTT-3.3.1-10], 2 never [MQTT-3.3.1-11]."""
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("rh/t", b"kept", 1, retain=True)
    subscriber = paho("sub", MQTT_5)
    await subscriber.connect(*broker.address)
    for expected in (first_time, second_time):
        await subscriber.subscribe("rh/t", 1, retain_handling=retain_handling)
        if expected:
            message = await subscriber.expect_message()
            assert (message.payload, message.retain) == (b"kept", True)
        else:
            await subscriber.expect_no_message()


async def test_puback_says_no_matching_subscribers(broker: BrokerHandle, raw: RawFactory) -> None:
    """A v5 publisher learns that nobody subscribed: PUBACK / PUBREC 0x10 No matching subscribers, a
    success code, so the message counts as accepted (§3.4.2.1, §3.5.2.1)."""
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("lonely")
    await client.send_packet(Publish("nobody/listens", b"x", qos=1, packet_id=1))
    puback = await client.receive_packet()
    assert isinstance(puback, PubAck) and (puback.packet_id, puback.reason_code) == (1, 0x10)
    await client.send_packet(Publish("nobody/listens", b"x", qos=2, packet_id=2))
    pubrec = await client.receive_packet()
    assert isinstance(pubrec, PubRec) and (pubrec.packet_id, pubrec.reason_code) == (2, 0x10)


@edgebus_only("the Reason String's text is edgebus's")
async def test_disconnect_carries_a_reason_string(broker: BrokerHandle, raw: RawFactory) -> None:
    """A server DISCONNECT for a protocol error says why in its Reason String (§3.14.2.2.3): here No
    Local on a shared subscription, a Protocol Error [MQTT-3.8.3-4]."""
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("careless")
    await client.send_packet(Subscribe(1, (Subscription("$share/g/t", qos=0, no_local=True),)))
    packets = await client.expect_closed()
    assert_protocol_close(packets, MQTT_5, {0x82})
    (disconnect,) = packets
    assert isinstance(disconnect, Disconnect)
    assert disconnect.properties.reason_string == "No Local on a shared subscription"

"""Shared subscriptions ($share/<group>/<filter>, §4.8.2 of 5.0; also offered to 3.1.1 clients)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from edgebus.protocol import Disconnect, Publish, SubAck, Subscribe, Subscription
from tests.clients import (
    BOTH_VERSIONS,
    MQTT_5,
    PahoClient,
    RawClient,
    ReceivedMessage,
    Sub,
    assert_protocol_close,
    mosquitto_deviates,
)
from tests.conftest import BrokerHandle, StartBroker

RawFactory = Callable[..., Awaitable[RawClient]]


async def _collect(
    clients: list[PahoClient], total: int, within_s: float = 5.0
) -> list[list[ReceivedMessage]]:
    """Messages received by each client until ``total`` arrived altogether, then a short quiet period."""
    received: list[list[ReceivedMessage]] = [[] for _ in clients]
    deadline = trio.current_time() + within_s
    while sum(map(len, received)) < total:
        for index, client in enumerate(clients):
            received[index] += client.drain_messages()
        if trio.current_time() > deadline:
            got = [[m.payload for m in per_client] for per_client in received]
            raise AssertionError(f"{total} messages expected within {within_s} s, got {got}")
        await trio.sleep(0.02)
    await trio.sleep(0.3)
    for index, client in enumerate(clients):
        received[index] += client.drain_messages()
    return received


async def _members(
    paho: Callable[..., PahoClient],
    broker: BrokerHandle,
    version: int,
    topic_filter: str,
    count: int,
    qos: int = 1,
) -> list[PahoClient]:
    members = []
    for number in range(count):
        member = paho(f"member{number}", version)
        await member.connect(*broker.address)
        assert await member.subscribe(topic_filter, qos) == qos
        members.append(member)
    return members


@BOTH_VERSIONS
async def test_each_message_goes_to_one_member_and_load_is_balanced(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """Each message matching a shared subscription goes to exactly one member of the group (§4.8.2), and
    the members share the load."""
    members = await _members(paho, broker, version, "$share/workers/jobs/#", 2)
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    count = 20
    for number in range(count):
        await publisher.publish(f"jobs/{number % 3}", str(number).encode(), 1)
    received = await _collect(members, count)
    payloads = Counter(m.payload for per_member in received for m in per_member)
    assert payloads == Counter(str(number).encode() for number in range(count))  # each exactly once
    assert all(len(per_member) >= count // 4 for per_member in received), [len(r) for r in received]
    assert all(m.topic.startswith("jobs/") for per_member in received for m in per_member)


@BOTH_VERSIONS
async def test_shared_and_plain_subscriptions_coexist(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """A plain subscription gets every message; each shared group gets one copy per message (§4.8.2)."""
    group_a = await _members(paho, broker, version, "$share/a/feed", 2)
    (group_b,) = await _members(paho, broker, version, "$share/b/feed", 1)
    plain = paho("plain", version)
    await plain.connect(*broker.address)
    await plain.subscribe("feed", 1)
    publisher = paho("pub", version)
    await publisher.connect(*broker.address)
    count = 10
    for number in range(count):
        await publisher.publish("feed", str(number).encode(), 1)
    expected = [str(number).encode() for number in range(count)]
    assert [m.payload for m in await plain.expect_messages(count)] == expected
    assert [m.payload for m in await group_b.expect_messages(count)] == expected
    received = await _collect(group_a, count)
    assert sorted(m.payload for per_member in received for m in per_member) == sorted(expected)


async def test_shared_delivery_respects_the_members_granted_qos(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """The server respects the granted QoS of the member's subscription [MQTT-4.8.2-3] (5.0)."""
    (member,) = await _members(paho, broker, MQTT_5, "$share/g/q/t", 1, qos=0)
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("q/t", b"down", 2)
    message = await member.expect_message()
    assert (message.topic, message.payload, message.qos) == ("q/t", b"down", 0)


@mosquitto_deviates("does not hand a departed member's unacknowledged QoS 1 message to another (§4.8.2)")
async def test_inflight_qos1_of_a_departed_member_goes_to_another_member(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """A QoS 1 message sent to a member whose session ends before it acknowledged SHOULD go to another
    member of the group (§4.8.2 of 5.0): nothing is lost."""
    leaver = await raw(broker, MQTT_5)
    await leaver.mqtt_connect("leaver")  # no Session Expiry: the session ends with the connection
    assert (await leaver.subscribe(Sub("$share/g/work", 1))).reason_codes == (1,)
    (stayer,) = await _members(paho, broker, MQTT_5, "$share/g/work", 1)
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    held: Publish | None = None
    published = 0
    while held is None and published < 10:
        await publisher.publish("work", f"job{published}".encode(), 1)
        published += 1
        with trio.move_on_after(0.3):
            packet = await leaver.receive_packet()
            assert isinstance(packet, Publish)
            held = packet
    assert held is not None, "the group never picked the raw member"
    await leaver.aclose()  # leaves without acknowledging
    received = await _collect([stayer], published, within_s=5.0)
    payloads = [m.payload for m in received[0]]
    assert held.payload in payloads
    assert sorted(set(payloads)) == sorted(f"job{n}".encode() for n in range(published))


@mosquitto_deviates("accepts No Local on a shared subscription [MQTT-3.8.3-4]")
async def test_no_local_on_a_shared_subscription_is_a_protocol_error(
    broker: BrokerHandle, raw: RawFactory
) -> None:
    """No Local 1 on a Shared Subscription is a Protocol Error [MQTT-3.8.3-4]: DISCONNECT 0x82 and close."""
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("no-local-share")
    await client.send_packet(
        Subscribe(packet_id=1, subscriptions=(Subscription("$share/g/t", 1, no_local=True),))
    )
    assert_protocol_close(await client.expect_closed(), MQTT_5, {0x82})


@mosquitto_deviates("grants the filter '$share//t' (empty ShareName) [MQTT-4.8.2-1]")
async def test_malformed_share_name_is_not_granted_v5(broker: BrokerHandle, raw: RawFactory) -> None:
    """A ShareName must be at least one character and be followed by '/' and a Topic Filter [MQTT-4.8.2-1]
    [MQTT-4.8.2-2] (5.0): "$share//t" is refused (SUBACK failure) or the connection is closed."""
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("bad-share")
    await client.send_packet(Subscribe(packet_id=2, subscriptions=(Subscription("$share//t", 1),)))
    answer = await client.receive_packet_or_close()
    if isinstance(answer, SubAck):
        assert answer.packet_id == 2
        assert answer.reason_codes[0] >= 0x80
    else:
        assert answer is None or (isinstance(answer, Disconnect) and answer.reason_code >= 0x80), answer
        await client.expect_closed()


async def test_shared_subscriptions_can_be_disabled_v5(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """Without support, CONNACK says Shared Subscription Available 0 (§3.2.2.3.13) and a $share filter gets
    SUBACK 0x9E "Shared Subscriptions not supported" (§3.9.3)."""
    broker = await start_broker(mqtt={"shared_subscriptions": False})
    client = paho("sub", MQTT_5)
    connack = await client.connect(*broker.address)
    assert connack.properties.get("shared_subscription_available") == 0
    assert await client.subscribe_many([Sub("$share/g/t", 1), Sub("plain/t", 1)]) == [0x9E, 1]

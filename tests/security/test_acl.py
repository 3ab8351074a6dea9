"""Authorization with a Mosquitto-format ACL file on a live broker: PUBLISH, SUBSCRIBE, per-message READ
checks on wildcard subscriptions, $SYS, patterns, wills, and reload."""

from __future__ import annotations

from pathlib import Path

from edgebus.protocol import PubAck, Publish, SubAck, Will
from tests.clients import BOTH_VERSIONS, MQTT_3_1_1, MQTT_5, RawClient, Sub
from tests.conftest import BrokerHandle, StartBroker
from tests.security.helpers import acl_file, connack_code, connect_with, password_file

ACL = """\
topic read public/#

user alice
topic readwrite alice/#
topic read shared/#
topic deny shared/private/#
topic read $SYS/#

user bob
topic readwrite bob/#
topic write shared/#

pattern readwrite clients/%c/#
pattern read users/%u/inbox
"""


async def acl_broker(start_broker: StartBroker, tmp_path: Path, **sys: float) -> BrokerHandle:
    users = password_file(tmp_path, {"alice": "a", "bob": "b"})
    return await start_broker(
        security={
            "password_file": str(users),
            "acl_file": str(acl_file(tmp_path, ACL)),
            "auth_failure_delay": 0,
        },
        sys=dict(sys),
    )


async def login(broker: BrokerHandle, version: int, client_id: str, user: str | None) -> RawClient:
    password = {"alice": b"a", "bob": b"b"}.get(user or "")
    client, answer = await connect_with(broker, version, client_id, user, password)
    assert connack_code(answer) == 0
    return client


@BOTH_VERSIONS
async def test_denied_subscribe_gets_failure_code(
    start_broker: StartBroker, tmp_path: Path, version: int
) -> None:
    """A SUBSCRIBE the ACL refuses: SUBACK 0x80 on 3.1.1 (§3.9.3) and 0x87 Not authorized on 5.0
    [MQTT-3.9.3-?, §3.9.3]; the other filters of the same packet are granted [MQTT-3.8.4-5]."""
    broker = await acl_broker(start_broker, tmp_path)
    alice = await login(broker, version, "a1", "alice")
    suback = await alice.subscribe(Sub("bob/#", 1), Sub("alice/x", 1), Sub("shared/private/+", 0))
    assert isinstance(suback, SubAck)
    denied = 0x80 if version == MQTT_3_1_1 else 0x87
    assert list(suback.reason_codes) == [denied, 1, denied]
    await alice.aclose()


async def test_denied_publish_v5_gets_0x87_and_is_dropped(start_broker: StartBroker, tmp_path: Path) -> None:
    """A v5 QoS 1 PUBLISH without write access: PUBACK 0x87 Not authorized (§3.4.2.1); nobody receives it."""
    broker = await acl_broker(start_broker, tmp_path)
    bob = await login(broker, MQTT_5, "b1", "bob")
    await bob.subscribe(Sub("bob/#", 1))
    alice = await login(broker, MQTT_5, "a1", "alice")
    await alice.send_packet(Publish("bob/inbox", b"intrusion", qos=1, packet_id=3))
    ack = await alice.receive_packet()
    assert isinstance(ack, PubAck) and (ack.packet_id, ack.reason_code) == (3, 0x87)
    await bob.expect_no_packet()
    await alice.send_packet(Publish("alice/ok", b"fine", qos=1, packet_id=4))
    ack = await alice.receive_packet()
    assert isinstance(ack, PubAck) and ack.reason_code in (0x00, 0x10)
    for client in (alice, bob):
        await client.aclose()


async def test_denied_publish_v311_is_acknowledged_and_dropped(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    """3.1.1 has no negative PUBACK: the message is acknowledged [MQTT-4.3.2-2] and dropped (Mosquitto)."""
    broker = await acl_broker(start_broker, tmp_path)
    bob = await login(broker, MQTT_3_1_1, "b1", "bob")
    await bob.subscribe(Sub("bob/#", 1))
    alice = await login(broker, MQTT_3_1_1, "a1", "alice")
    await alice.send_packet(Publish("bob/inbox", b"intrusion", qos=1, packet_id=3))
    ack = await alice.receive_packet()
    assert isinstance(ack, PubAck) and (ack.packet_id, ack.reason_code) == (3, 0)
    await bob.expect_no_packet()
    for client in (alice, bob):
        await client.aclose()


async def test_wildcard_subscription_only_delivers_readable_topics(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    """Read access is checked for each message delivered, as Mosquitto does: alice's `shared/#` yields
    shared/news but not shared/private/x (deny), and her `#`... only what she may read."""
    broker = await acl_broker(start_broker, tmp_path)
    alice = await login(broker, MQTT_5, "a1", "alice")
    suback = await alice.subscribe(Sub("shared/#", 0), Sub("#", 0))
    assert isinstance(suback, SubAck) and list(suback.reason_codes) == [0, 0]
    bob = await login(broker, MQTT_5, "b1", "bob")
    for topic in ("shared/private/x", "shared/news", "bob/x"):
        await bob.send_packet(Publish(topic, topic.encode()))
    message = await alice.receive_packet()
    assert isinstance(message, Publish) and message.topic == "shared/news"
    await alice.expect_no_packet()
    for client in (alice, bob):
        await client.aclose()


async def test_sys_topics_readable_only_where_allowed(start_broker: StartBroker, tmp_path: Path) -> None:
    """$SYS is subject to the ACL; `#` never reaches it [MQTT-4.7.2-1]; alice has `topic read $SYS/#`."""
    broker = await acl_broker(start_broker, tmp_path, interval=0.2)
    bob = await login(broker, MQTT_5, "b1", "bob")
    suback = await bob.subscribe(Sub("$SYS/#", 0))
    assert isinstance(suback, SubAck) and list(suback.reason_codes) == [0x87]
    alice = await login(broker, MQTT_5, "a1", "alice")
    suback = await alice.subscribe(Sub("$SYS/broker/uptime", 0))
    assert isinstance(suback, SubAck) and list(suback.reason_codes) == [0]
    message = await alice.receive_packet()
    assert isinstance(message, Publish) and message.topic == "$SYS/broker/uptime"
    for client in (alice, bob):
        await client.aclose()


async def test_anonymous_rules_and_patterns(start_broker: StartBroker, tmp_path: Path) -> None:
    """Lines before any `user` apply to anonymous clients; `pattern` lines to everyone, with %c = client
    id and %u = user name (Mosquitto acl_file)."""
    broker = await acl_broker(start_broker, tmp_path)
    anon = await login(broker, MQTT_5, "dev-1", None)
    suback = await anon.subscribe(Sub("public/#", 0), Sub("alice/#", 0), Sub("clients/dev-1/#", 0))
    assert isinstance(suback, SubAck) and list(suback.reason_codes) == [0, 0x87, 0]
    await anon.send_packet(Publish("clients/dev-1/up", b"self", qos=1, packet_id=1))
    ack = await anon.receive_packet()
    assert isinstance(ack, PubAck) and ack.reason_code == 0
    message = await anon.receive_packet()
    assert isinstance(message, Publish) and message.payload == b"self"
    await anon.send_packet(Publish("clients/dev-2/up", b"other", qos=1, packet_id=2))
    ack = await anon.receive_packet()
    assert isinstance(ack, PubAck) and ack.reason_code == 0x87
    bob = await login(broker, MQTT_5, "b1", "bob")
    suback = await bob.subscribe(Sub("users/bob/inbox", 0), Sub("users/alice/inbox", 0))
    assert isinstance(suback, SubAck) and list(suback.reason_codes) == [0, 0x87]
    for client in (anon, bob):
        await client.aclose()


async def test_will_on_a_denied_topic_refuses_the_connect(start_broker: StartBroker, tmp_path: Path) -> None:
    """A Will Message is a publish the client asks for in advance: without write access to its topic the
    CONNECT is refused with 0x87 Not authorized (as Mosquitto 2.0 does)."""
    broker = await acl_broker(start_broker, tmp_path)
    client, answer = await connect_with(broker, MQTT_5, "b1", "bob", b"b", Will("alice/x", b"gone"))
    assert connack_code(answer) == 0x87
    await client.aclose()
    client, answer = await connect_with(broker, MQTT_5, "b2", "bob", b"b", Will("bob/status", b"gone"))
    assert connack_code(answer) == 0
    await client.aclose()


async def test_reload_applies_new_acl_to_open_connections(start_broker: StartBroker, tmp_path: Path) -> None:
    """SIGHUP re-reads the ACL: an open connection keeps going and meets the new rules."""
    broker = await acl_broker(start_broker, tmp_path)
    bob = await login(broker, MQTT_5, "b1", "bob")
    await bob.send_packet(Publish("bob/x", b"1", qos=1, packet_id=1))
    ack = await bob.receive_packet()
    assert isinstance(ack, PubAck) and ack.reason_code in (0, 0x10)
    acl_file(tmp_path, "user bob\ntopic read bob/#\n")
    assert broker.broker is not None
    broker.broker.reload_security()
    await bob.send_packet(Publish("bob/x", b"2", qos=1, packet_id=2))
    ack = await bob.receive_packet()
    assert isinstance(ack, PubAck) and ack.reason_code == 0x87
    await bob.aclose()

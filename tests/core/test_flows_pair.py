"""The client role (core/client.py) against the server role (core/server.py) over an in-memory link.

Whole packets go from one machine's `take_output` into the other's `receive_data`; the test plays the
broker: it answers CONNECT with the session it keeps for the client, routes each message the server
receives into a subscriber session's outbox and acknowledges it. Every QoS 1 and QoS 2 flow runs in
both directions on 3.1.1 and 5.0, and the link is lost at every step of each flow: the client comes
back with the session (Session Present 1) and the flow completes, exactly once for QoS 2 and at least
once for QoS 1. Receive Maximum and topic aliases are checked both ways too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from edgebus.core.client import (
    ClientOptions,
    Connected,
    DisconnectReceived,
    MessageReceived,
    MqttClient,
    ProtocolViolation,
    PublishAcknowledged,
)
from edgebus.core.message import Message
from edgebus.core.outbox import Delivery, Outbox
from edgebus.core.server import Connection
from edgebus.core.server_events import ConnectionLimits, ConnectReceived
from edgebus.core.server_events import MessageReceived as Routed
from edgebus.core.server_events import ProtocolViolation as ServerViolation
from edgebus.core.session import Session
from edgebus.core.stats import Stats
from edgebus.protocol import (
    MQTT_3_1_1,
    MQTT_5,
    ConnAck,
    Disconnect,
    PacketDecoder,
    Properties,
    Publish,
    PubRel,
    encode,
)
from edgebus.protocol.enums import PacketType, ReasonCode

LEVELS = [pytest.param(MQTT_3_1_1, id="3.1.1"), pytest.param(MQTT_5, id="5.0")]
P = PacketType

#: Where a link can be lost in each flow: (nothing), then each packet of the flow in turn.
QOS1_STEPS = [None, P.PUBLISH, P.PUBACK]
QOS2_STEPS = [None, P.PUBLISH, P.PUBREC, P.PUBREL, P.PUBCOMP]
FLOWS = [
    pytest.param(qos, lost, id=f"qos{qos}-{'no-loss' if lost is None else lost.name + '-lost'}")
    for qos, steps in ((1, QOS1_STEPS), (2, QOS2_STEPS))
    for lost in steps
]


@dataclass
class Broker:
    """What edgebus.server.broker does around a server-role Connection, as far as these flows need:
    one session for the client "dev" that outlives its connections, and a subscriber session that
    everything the client publishes is routed to."""

    level: int
    limits: ConnectionLimits
    session: Session = field(default_factory=lambda: Session("dev", Outbox(1000, 1 << 20, "drop-oldest")))
    subscriber: Session = field(default_factory=lambda: Session("sub", Outbox(1000, 1 << 20, "drop-oldest")))
    stats: Stats = field(default_factory=Stats)
    acknowledge_at_once: bool = True
    held: list[tuple[int, int]] = field(default_factory=list)  # acknowledgements not given yet
    violations: list[ServerViolation] = field(default_factory=list)
    conn: Connection | None = None
    known: bool = False  # whether it holds a session for "dev"

    def connect(self) -> Connection:
        self.conn = Connection(self.limits, self.stats)
        return self.conn

    def routed(self) -> list[Message]:
        return [delivery.message for delivery in self.subscriber.outbox]

    def handle(self, conn: Connection, now: float) -> None:
        while (event := conn.next_event(now)) is not None:
            if isinstance(event, ConnectReceived):
                resumed = self.known and not event.connect.clean_start
                if not resumed:
                    self.session = Session("dev", Outbox(1000, 1 << 20, "drop-oldest"))
                self.known = True
                props = Properties()
                if self.level == MQTT_5:
                    props = Properties(
                        receive_maximum=self.limits.receive_maximum,
                        topic_alias_maximum=self.limits.topic_alias_maximum or None,
                    )
                conn.accept(self.session, encode(ConnAck(resumed, 0, props), self.level), event.connect)
            elif isinstance(event, Routed):
                message = event.message
                self.subscriber.outbox.offer(Delivery(message, message.qos, False))
                if message.qos and self.acknowledge_at_once:
                    conn.acknowledge(message.qos, event.packet_id)
                elif message.qos:
                    self.held.append((message.qos, event.packet_id))
            elif isinstance(event, ServerViolation):
                self.violations.append(event)
                if self.level == MQTT_5:
                    conn.send(Disconnect(event.error.reason_code))
                conn.close()

    def acknowledge_held(self) -> None:
        assert self.conn is not None
        for qos, packet_id in self.held:
            self.conn.acknowledge(qos, packet_id)
        self.held.clear()

    def offer(self, topic: str, payload: bytes, qos: int) -> None:
        """A message routed to "dev" from elsewhere (the broker offers it to the session's outbox)."""
        assert self.session.outbox.offer(Delivery(Message(topic, payload, qos, False), qos, False))
        if self.session.connection is not None:
            self.session.connection.wake()

    def lost(self) -> None:
        """The network connection is gone: the session stays, detached (the broker's close)."""
        assert self.conn is not None
        self.conn.close()
        self.session.connection = None


class Pair:
    """A client and the broker on either end of a link that carries whole packets and can be cut."""

    def __init__(self, level: int, limits: ConnectionLimits | None = None, **options: object) -> None:
        self.level = level
        self.client = MqttClient(
            ClientOptions(
                "dev",
                protocol_level=level,
                clean_start=False,
                session_expiry_interval=3600 if level == MQTT_5 else 0,
                keep_alive=0,
                **options,  # type: ignore[arg-type]
            )
        )
        self.broker = Broker(level, limits or ConnectionLimits(receive_maximum=100, topic_alias_maximum=8))
        self.now = 0.0
        self.events: list[object] = []
        # Every packet that arrived: (connection number, "up" | "down", bytes).
        self.wire: list[tuple[int, str, bytes]] = []
        self.connections = 0
        self.up = False

    def open(self, lose: PacketType | None = None) -> Connected:
        """A new network connection, run as `run` does; returns the client's Connected event."""
        self.now += 1.0
        self.client.connect(self.now)
        self.broker.connect()
        self.connections += 1
        self.up = True
        before = len(self.events)
        self.run(lose)
        (connected,) = [e for e in self.events[before:] if isinstance(e, Connected)]
        return connected

    def run(self, lose: PacketType | None = None) -> None:
        """Carry packets both ways until neither side has more to say. With ``lose``, the first packet
        of that type is lost on the way, and the link with it."""
        client, conn = self.client, self.broker.conn
        assert conn is not None
        while self.up:
            moved = False
            for direction, chunks in (
                ("up", client.take_output(self.now)),
                ("down", conn.take_output(self.now)),
            ):
                for chunk in chunks:
                    # Both machines write one packet per chunk: its first byte says which.
                    if lose is not None and chunk[0] >> 4 == lose:
                        self.cut()
                        return
                    self.wire.append((self.connections, direction, chunk))
                    (conn if direction == "up" else client).receive_data(chunk)
                    moved = True
                self.broker.handle(conn, self.now)
                while (event := client.next_event(self.now)) is not None:
                    self.events.append(event)
            if not moved:
                return

    def cut(self) -> None:
        self.up = False
        self.client.connection_lost()
        self.broker.lost()

    def packets(self, direction: str) -> list[object]:
        """What went ``direction`` on the wire so far, decoded, connection after connection."""
        packets: list[object] = []
        for number in range(1, self.connections + 1):
            decoder = PacketDecoder(
                role="server" if direction == "up" else "client", protocol_level=self.level
            )
            data = b"".join(chunk for n, way, chunk in self.wire if n == number and way == direction)
            packets.extend(decoder.receive_data(data))
        return packets

    def received(self) -> list[Publish]:
        return [e.publish for e in self.events if isinstance(e, MessageReceived)]

    def acknowledged(self) -> list[PublishAcknowledged]:
        return [e for e in self.events if isinstance(e, PublishAcknowledged)]

    def assert_flows_ended(self) -> None:
        """Nothing in flight either way, on either side [MQTT-4.3.2-3] [MQTT-4.3.3-5]."""
        assert not self.client.inflight and not self.client.inbound_qos2
        assert not self.broker.session.inflight and not self.broker.session.inbound_qos2
        conn = self.broker.conn
        assert conn is not None and conn.inbound is not None and not conn.inbound.unacknowledged
        assert not any(isinstance(e, ProtocolViolation) for e in self.events) and not self.broker.violations


def resend_after_loss(pair: Pair, lose: PacketType | None) -> None:
    """Run the flow; if the link is lost on the way, come back with the session: CONNACK says Session
    Present 1, and both sides resend what is unacknowledged [MQTT-4.4.0-1]."""
    pair.run(lose)
    if lose is None:
        assert pair.up
        return
    assert not pair.up
    assert pair.open().session_present
    pair.run()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(("qos", "lose"), FLOWS)
def test_client_to_server(level: int, qos: int, lose: PacketType | None) -> None:
    # QoS 2: exactly once whatever is lost [MQTT-4.3.3-10]; QoS 1: at least once, a lost PUBACK means
    # a resend the receiver takes for a new message [MQTT-4.3.2-5].
    pair = Pair(level)
    assert not pair.open().session_present
    assert pair.client.publish("up/t", b"m", qos=qos, token="m")
    resend_after_loss(pair, lose)
    routed = [(m.topic, m.payload, m.qos) for m in pair.broker.routed()]
    assert routed == [("up/t", b"m", qos)] * (2 if lose is P.PUBACK else 1)
    (ack,) = pair.acknowledged()
    assert (ack.token, ack.qos) == ("m", qos)
    # The one case with a non-zero code: the PUBCOMP was lost, so the resent PUBREL finds the server
    # holding nothing under the id any more: PUBCOMP 0x92 on 5.0 (§3.7.2.1), which ends the flow.
    assert ack.reason_code == (
        ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if lose is P.PUBCOMP and level == 5 else 0
    )
    pair.assert_flows_ended()
    publishes = [p for p in pair.packets("up") if isinstance(p, Publish)]
    # The original goes out with DUP 0 [MQTT-4.3.2-2] [MQTT-4.3.3-2]; the PUBLISH is resent, DUP 1
    # [MQTT-3.3.1-1], until its PUBREC / PUBACK arrived, and never after the PUBREL [MQTT-4.3.3-6].
    resent = lose in (P.PUBACK, P.PUBREC)  # (a lost PUBLISH never reached the wire's far end)
    assert [p.dup for p in publishes] == ([False, True] if resent else [lose is P.PUBLISH])
    assert len({p.packet_id for p in publishes}) == 1  # the original packet id [MQTT-4.4.0-1]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(("qos", "lose"), FLOWS)
def test_server_to_client(level: int, qos: int, lose: PacketType | None) -> None:
    # The same flows with the roles swapped: the broker sends, the client receives.
    pair = Pair(level)
    pair.open()
    pair.broker.offer("down/t", b"m", qos)
    resend_after_loss(pair, lose)
    received = [(p.topic, p.payload, p.qos) for p in pair.received()]
    assert received == [("down/t", b"m", qos)] * (2 if lose is P.PUBACK else 1)
    pair.assert_flows_ended()
    publishes = [p for p in pair.packets("down") if isinstance(p, Publish)]
    resent = lose in (P.PUBACK, P.PUBREC)
    assert [p.dup for p in publishes] == ([False, True] if resent else [lose is P.PUBLISH])
    assert len({p.packet_id for p in publishes}) == 1
    pubrels = [p for p in pair.packets("down") if isinstance(p, PubRel)]
    # The PUBREL is resent after a lost PUBREL or PUBCOMP, with the same id [MQTT-4.4.0-1] (a lost one
    # never reached the wire's far end).
    assert len(pubrels) == (0 if qos == 1 else 2 if lose is P.PUBCOMP else 1)
    assert len({p.packet_id for p in pubrels} | {p.packet_id for p in publishes}) == 1


@pytest.mark.parametrize("level", LEVELS)
def test_qos2_acknowledged_after_the_link_went_is_not_handed_on_twice(level: int) -> None:
    # The application acknowledges a QoS 2 message after the connection is lost: the PUBREC never
    # goes out, but the id is kept awaiting PUBREL, so the server's resend is answered PUBREC and not
    # handed on again [MQTT-4.3.3-10]. (Both roles: the server keeps it in the session the same way.)
    pair = Pair(level, auto_acknowledge=False)
    pair.open()
    pair.broker.offer("down/t", b"once", 2)
    pair.run()
    (publish,) = pair.received()
    pair.cut()
    assert publish.packet_id is not None
    pair.client.acknowledge(publish.packet_id)
    assert pair.open().session_present
    pair.run()
    assert [p.payload for p in pair.received()] == [b"once"]
    pair.assert_flows_ended()


@pytest.mark.parametrize("level", LEVELS)
def test_many_flows_interleaved_with_losses(level: int) -> None:
    # Messages of both QoS in both directions at once, the link lost after each kind of packet in turn:
    # every QoS 2 message arrives once, every QoS 1 message at least once, in order per direction
    # [MQTT-4.6.0-1] [MQTT-4.6.0-2] [MQTT-4.6.0-3].
    pair = Pair(level)
    pair.open()
    sent = []
    for n in range(12):
        qos = 1 + n % 2
        payload = f"{n}".encode()
        sent.append((payload, qos))
        assert pair.client.publish("up/t", payload, qos=qos)
        pair.broker.offer("down/t", payload, qos)
    pair.run(P.PUBLISH)
    for lost, lose in (
        (P.PUBLISH, P.PUBACK),
        (P.PUBACK, P.PUBREC),
        (P.PUBREC, P.PUBREL),
        (P.PUBREL, P.PUBCOMP),
    ):
        assert not pair.up, f"no {lost.name} to lose"
        assert pair.open(lose).session_present
    assert not pair.up, "no PUBCOMP to lose"
    assert pair.open().session_present
    for got in (
        [(m.payload, m.qos) for m in pair.broker.routed()],
        [(p.payload, p.qos) for p in pair.received()],
    ):
        assert [item for item in sent if item[1] == 2] == [item for item in got if item[1] == 2]
        assert set(got) == set(sent)
        firsts = [item for i, item in enumerate(got) if item not in got[:i]]
        assert firsts == sent
    pair.assert_flows_ended()


@pytest.mark.parametrize("qos", [1, 2])
def test_receive_maximum_client_to_server(qos: int) -> None:
    # The client keeps to the server's Receive Maximum [MQTT-3.3.4-7] [MQTT-4.9.0-2]: the server, which
    # holds its acknowledgements back, never sees more unacknowledged PUBLISH packets than it allows
    # (it would close with 0x93), and the rest follow as acknowledgements free the quota.
    pair = Pair(MQTT_5, ConnectionLimits(receive_maximum=3))
    pair.broker.acknowledge_at_once = False
    pair.open()
    assert pair.client.send_window == 3
    for n in range(10):
        assert pair.client.publish("up/t", bytes([n]), qos=qos)
    routed: list[int] = []
    while len(routed) < 10:
        pair.run()
        now = [m.payload[0] for m in pair.broker.routed()]
        assert len(now) - len(routed) <= 3 and len(pair.client.inflight) <= 3
        routed = now
        pair.broker.acknowledge_held()
    pair.run()
    assert routed == list(range(10)) and len(pair.acknowledged()) == 10
    pair.assert_flows_ended()


@pytest.mark.parametrize("qos", [1, 2])
def test_receive_maximum_server_to_client(qos: int) -> None:
    # The server keeps to the client's Receive Maximum [MQTT-3.3.4-9]; the client, acknowledging late,
    # never has more than that unacknowledged (it would close with 0x93).
    pair = Pair(MQTT_5, receive_maximum=3, auto_acknowledge=False)
    pair.open()
    for n in range(10):
        pair.broker.offer("down/t", bytes([n]), qos)
    done = 0
    while done < 10:
        pair.run()
        fresh = pair.received()[done:]
        assert 0 < len(fresh) <= 3 and len(pair.broker.session.inflight) <= 3
        for publish in fresh:
            assert publish.packet_id is not None
            pair.client.acknowledge(publish.packet_id)
        done += len(fresh)
    pair.run()
    assert [p.payload[0] for p in pair.received()] == list(range(10))
    pair.assert_flows_ended()


def test_topic_aliases_server_to_client_start_afresh_on_each_connection() -> None:
    # The server gives aliases up to the client's Topic Alias Maximum [MQTT-3.3.2-11]: a new one goes
    # with its topic name, a known one replaces it; the client resolves them [MQTT-3.3.2-10]. A new
    # connection carries none over [MQTT-3.3.2-7]: the resend after a loss names its topic again.
    pair = Pair(MQTT_5, topic_alias_maximum=2)
    pair.open()
    for topic in ("a/1", "a/1", "b/2", "c/3", "a/1"):
        pair.broker.offer(topic, topic.encode(), 1)
    pair.run()
    assert [p.topic for p in pair.received()] == ["a/1", "a/1", "b/2", "c/3", "a/1"]
    wire = [(p.topic, p.properties.topic_alias) for p in pair.packets("down") if isinstance(p, Publish)]
    assert wire == [("a/1", 1), ("", 1), ("b/2", 2), ("c/3", None), ("", 1)]
    pair.broker.offer("a/1", b"again", 1)
    pair.run(P.PUBACK)
    assert pair.open().session_present
    pair.run()
    resent = [p for p in pair.packets("down") if isinstance(p, Publish)][-1]
    assert (resent.topic, resent.dup, resent.properties.topic_alias) == ("a/1", True, None)
    assert [p.topic for p in pair.received()][-2:] == ["a/1", "a/1"]
    pair.assert_flows_ended()


def test_topic_aliases_client_to_server_and_the_range_check() -> None:
    # The server resolves the aliases the client sets, up to the Topic Alias Maximum it announced
    # [MQTT-3.3.2-12], and does not forward them; one above it is a Topic Alias invalid, 0x94
    # [MQTT-3.3.2-9], and the connection closes.
    pair = Pair(MQTT_5, ConnectionLimits(topic_alias_maximum=2))
    pair.open()
    pair.client.publish("x/y", b"1", qos=1, properties=Properties(topic_alias=2))
    pair.run()
    (message,) = pair.broker.routed()
    assert message.topic == "x/y" and message.properties.topic_alias is None
    pair.client.publish("x/z", b"2", qos=1, properties=Properties(topic_alias=3))
    pair.run()
    (violation,) = pair.broker.violations
    assert violation.error.reason_code is ReasonCode.TOPIC_ALIAS_INVALID
    disconnects = [e for e in pair.events if isinstance(e, DisconnectReceived)]
    assert [d.disconnect.reason_code for d in disconnects] == [ReasonCode.TOPIC_ALIAS_INVALID]

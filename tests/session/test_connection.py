"""Sans-IO tests of the per-connection protocol machine: bytes in, events and bytes out."""

from __future__ import annotations

from edgebus.core.message import Message
from edgebus.core.outbox import Delivery, Outbox
from edgebus.core.server import Connection
from edgebus.core.server_events import (
    ConnectionLimits,
    ConnectReceived,
    DisconnectReceived,
    Event,
    MessageReceived,
    ProtocolViolation,
)
from edgebus.core.session import Session
from edgebus.core.stats import Stats
from edgebus.protocol import (
    MQTT_3_1_1,
    MQTT_5,
    Connect,
    Disconnect,
    PacketDecoder,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    encode,
)
from edgebus.protocol.packets import Packet


class Peer:
    """A connection on the server side, driven with packets as a client would send them."""

    def __init__(
        self, level: int = MQTT_5, limits: ConnectionLimits | None = None, **connect: object
    ) -> None:
        self.level = level
        self.conn = Connection(limits or ConnectionLimits(receive_maximum=10, topic_alias_maximum=5), Stats())
        self.client = PacketDecoder(role="client", protocol_level=level)
        self.session = Session("c1", Outbox(100, 1 << 20, "drop-oldest"))
        self.now = 0.0
        self.wakes = 0
        self.conn.wake = self._count_wake
        packet = Connect(client_id="c1", protocol_level=level, **connect)  # type: ignore[arg-type]
        events = self.feed(packet)
        assert isinstance(events[0], ConnectReceived)
        self.conn.accept(self.session, b"CONNACK", packet)
        assert self.take() == []  # the fake CONNACK is not decodable, skip it

    def feed(self, *packets: Packet) -> list[Event]:
        self.conn.receive_data(b"".join(encode(p, self.level) for p in packets))
        events = []
        while (event := self.conn.next_event(self.now)) is not None:
            events.append(event)
        return events

    def _count_wake(self) -> None:
        self.wakes += 1

    def take(self) -> list[Packet]:
        out = self.conn.take_output(self.now)
        # Whatever produced output must have woken the writer, or it would sit unsent.
        assert not out or self.wakes, "output queued without wake()"
        self.wakes = 0
        data = b"".join(chunk for chunk in out if chunk != b"CONNACK")
        return self.client.receive_data(data) if data else []

    def offer(self, topic: str, qos: int, payload: bytes = b"x", **kw: object) -> None:
        message = Message(topic, payload, qos, False, **kw)  # type: ignore[arg-type]
        assert self.session.outbox.offer(Delivery(message, qos, False))
        self.wakes += 1  # the broker wakes the connection after an offer


def test_qos1_inbound_is_acked_only_when_the_broker_says_so() -> None:
    # [MQTT-4.3.2-2]: the receiver answers a QoS 1 PUBLISH with PUBACK (once the broker owns it).
    peer = Peer()
    events = peer.feed(Publish("a/b", b"hi", qos=1, packet_id=7))
    assert len(events) == 1 and isinstance(events[0], MessageReceived)
    assert events[0].message.topic == "a/b" and events[0].packet_id == 7
    assert peer.take() == []
    peer.conn.acknowledge(1, 7)
    assert peer.take() == [PubAck(7)]


def test_qos2_duplicate_is_not_delivered_twice() -> None:
    # [MQTT-4.3.3-10]: until PUBREL, a PUBLISH with the same packet id is not delivered again.
    peer = Peer()
    (event,) = peer.feed(Publish("t", b"1", qos=2, packet_id=3))
    assert isinstance(event, MessageReceived)
    peer.conn.acknowledge(2, 3)
    assert peer.take() == [PubRec(3)]
    assert peer.feed(Publish("t", b"1", qos=2, dup=True, packet_id=3)) == []
    assert peer.take() == [PubRec(3)]
    assert peer.feed(PubRel(3)) == []
    assert peer.take() == [PubComp(3)]
    # After PUBCOMP the id is free: the same id is a new message [MQTT-4.3.3-12].
    (again,) = peer.feed(Publish("t", b"2", qos=2, packet_id=3))
    assert isinstance(again, MessageReceived)


def test_pubrel_for_unknown_id_gets_pubcomp_0x92() -> None:
    # §3.7.2.1: PUBCOMP 0x92 Packet Identifier not found.
    peer = Peer()
    assert peer.feed(PubRel(99)) == []
    assert peer.take() == [PubComp(99, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)]


def test_receive_maximum_exceeded_is_0x93() -> None:
    # [MQTT-3.3.4-9]: more unacknowledged QoS>0 PUBLISH than Receive Maximum -> DISCONNECT 0x93.
    peer = Peer(limits=ConnectionLimits(receive_maximum=2))
    events = peer.feed(*(Publish("t", b"", qos=1, packet_id=i) for i in (1, 2, 3)))
    assert [type(e) for e in events] == [MessageReceived, MessageReceived, ProtocolViolation]
    last = events[2]
    assert isinstance(last, ProtocolViolation)
    assert last.error.reason_code is ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


def test_ping() -> None:
    peer = Peer()
    assert peer.feed(PingReq()) == []
    assert peer.take() == [PingResp()]  # [MQTT-3.12.4-1]


def test_inbound_topic_alias_set_then_used_and_out_of_range() -> None:
    peer = Peer()
    (first,) = peer.feed(Publish("long/topic", b"1", properties=Properties(topic_alias=2)))
    (second,) = peer.feed(Publish("", b"2", properties=Properties(topic_alias=2)))
    assert isinstance(first, MessageReceived) and isinstance(second, MessageReceived)
    assert second.message.topic == "long/topic"
    # The alias is not forwarded to subscribers [MQTT-3.3.2-?]: it is per connection.
    assert second.message.properties.topic_alias is None
    # [MQTT-3.3.2-10]: an alias above the Topic Alias Maximum we announced -> 0x94.
    (bad,) = peer.feed(Publish("x", b"", properties=Properties(topic_alias=6)))
    assert isinstance(bad, ProtocolViolation)
    assert bad.error.reason_code is ReasonCode.TOPIC_ALIAS_INVALID


def test_a_received_topic_is_forwarded_with_the_bytes_it_came_with() -> None:
    """The topic of a decoded PUBLISH is kept as it came on the wire and written to subscribers as is (not
    decoded and encoded again per message), but not the empty topic of a PUBLISH that uses an alias: the
    subscriber gets the topic the alias stands for [MQTT-3.3.2-3]."""
    for level in (MQTT_3_1_1, MQTT_5):
        peer = Peer(level)
        (event,) = peer.feed(Publish("wire/topic", b"1", qos=1, packet_id=1))
        assert isinstance(event, MessageReceived)
        assert event.message._topic_bytes == b"\x00\x0awire/topic"  # before any encode: the wire's own
    peer = Peer()
    (first,) = peer.feed(Publish("long/topic", b"1", properties=Properties(topic_alias=2)))
    (second,) = peer.feed(Publish("", b"2", properties=Properties(topic_alias=2)))
    assert isinstance(first, MessageReceived) and isinstance(second, MessageReceived)
    for event in (first, second):
        for level in (MQTT_3_1_1, MQTT_5):
            (delivered,) = PacketDecoder(role="client", protocol_level=level).receive_data(
                event.message.encode(level, 0, False)
            )
            assert isinstance(delivered, Publish) and delivered.topic == "long/topic"


def test_unknown_topic_alias_is_protocol_error() -> None:
    peer = Peer()
    (bad,) = peer.feed(Publish("", b"", properties=Properties(topic_alias=1)))
    assert isinstance(bad, ProtocolViolation)
    assert bad.error.reason_code is ReasonCode.PROTOCOL_ERROR


def test_send_window_is_the_clients_receive_maximum() -> None:
    # [MQTT-3.3.4-7]: no more unacknowledged QoS>0 PUBLISH than the client's Receive Maximum.
    peer = Peer(properties=Properties(receive_maximum=2))
    for i in range(4):
        peer.offer(f"t/{i}", 1)
    sent = peer.take()
    assert [p.topic for p in sent if isinstance(p, Publish)] == ["t/0", "t/1"]
    first = sent[0]
    assert isinstance(first, Publish) and first.packet_id is not None
    assert peer.feed(PubAck(first.packet_id)) == []
    more = peer.take()
    assert [p.topic for p in more if isinstance(p, Publish)] == ["t/2"]


def test_qos2_outbound_flow_and_resend_after_reconnect() -> None:
    # [MQTT-4.4.0-1]: on resuming a session, unacknowledged PUBLISH are resent with DUP=1 and
    # PUBREL for those already PUBREC'd.
    peer = Peer(clean_start=False)
    peer.offer("a", 2)
    peer.offer("b", 2)
    pub_a, pub_b = peer.take()
    assert isinstance(pub_a, Publish) and isinstance(pub_b, Publish)
    assert pub_a.packet_id is not None and pub_b.packet_id is not None
    assert peer.feed(PubRec(pub_a.packet_id)) == []
    assert peer.take() == [PubRel(pub_a.packet_id)]
    # The connection drops; a new one resumes the session.
    again = Connection(peer.conn.limits, Stats())
    again.receive_data(encode(Connect(client_id="c1", clean_start=False), MQTT_5))
    assert isinstance(again.next_event(0.0), ConnectReceived)
    again.accept(peer.session, b"", Connect(client_id="c1", clean_start=False))
    resent = PacketDecoder(role="client", protocol_level=MQTT_5).receive_data(
        b"".join(again.take_output(0.0))
    )
    assert resent == [
        PubRel(pub_a.packet_id),
        Publish("b", b"x", qos=2, dup=True, packet_id=pub_b.packet_id),
    ]


def test_message_expiry_counts_down_and_expired_messages_are_not_sent() -> None:
    # [MQTT-3.3.2-6]: the forwarded expiry is the received value minus the time waited;
    # [MQTT-3.3.2-5]: once expired the message is not sent.
    peer = Peer()
    peer.offer("keep", 0, expiry_deadline=100.0)
    peer.offer("gone", 0, expiry_deadline=5.0)
    peer.now = 40.0
    (sent,) = peer.take()
    assert isinstance(sent, Publish) and sent.topic == "keep"
    assert sent.properties.message_expiry_interval == 60
    assert peer.conn.stats.messages_expired == 1


def test_outbound_topic_aliases_up_to_the_clients_maximum() -> None:
    peer = Peer(properties=Properties(topic_alias_maximum=1))
    peer.offer("sensors/one", 0)
    peer.offer("sensors/one", 0)
    peer.offer("sensors/two", 0)
    first, second, third = peer.take()
    assert isinstance(first, Publish) and isinstance(second, Publish) and isinstance(third, Publish)
    assert (first.topic, first.properties.topic_alias) == ("sensors/one", 1)
    assert (second.topic, second.properties.topic_alias) == ("", 1)
    assert (third.topic, third.properties.topic_alias) == ("sensors/two", None)


def test_message_over_clients_maximum_packet_size_is_not_sent() -> None:
    # [MQTT-3.1.2-24], [MQTT-3.1.2-25]
    peer = Peer(properties=Properties(maximum_packet_size=64))
    peer.offer("big", 1, payload=b"x" * 100)
    peer.offer("small", 1, payload=b"y")
    sent = peer.take()
    assert [p.topic for p in sent if isinstance(p, Publish)] == ["small"]
    assert peer.conn.stats.messages_too_large == 1
    assert len(peer.session.inflight) == 1


def test_second_connect_is_protocol_error() -> None:
    peer = Peer()
    (event,) = peer.feed(Connect(client_id="again"))
    assert isinstance(event, ProtocolViolation)  # [MQTT-3.1.0-2]
    assert event.error.reason_code is ReasonCode.PROTOCOL_ERROR


def test_packet_before_connect_is_protocol_error() -> None:
    conn = Connection(ConnectionLimits(), Stats())
    conn.receive_data(encode(PingReq(), 4))
    event = conn.next_event(0.0)
    assert isinstance(event, ProtocolViolation)  # [MQTT-3.1.0-1]


def test_pipelined_packets_wait_for_the_connect_answer() -> None:
    # Packets after CONNECT in the same read are only looked at once the CONNECT is answered.
    conn = Connection(ConnectionLimits(), Stats())
    connect = Connect(client_id="p", protocol_level=4)
    conn.receive_data(encode(connect, 4) + encode(Publish("t", b"x"), 4))
    assert isinstance(conn.next_event(0.0), ConnectReceived)
    assert conn.next_event(0.0) is None
    conn.accept(Session("p", Outbox(10, 1 << 20, "drop-oldest")), b"", connect)
    assert isinstance(conn.next_event(0.0), MessageReceived)


def test_disconnect_ends_reading_and_session_expiry_rule() -> None:
    peer = Peer()
    (event,) = peer.feed(Disconnect(), PingReq())
    assert isinstance(event, DisconnectReceived)
    assert peer.take() == []  # nothing after DISCONNECT is processed [MQTT-3.14.4-2]
    # [MQTT-3.14.2-2]: non-zero Session Expiry at DISCONNECT after 0 at CONNECT.
    other = Peer()
    (bad,) = other.feed(Disconnect(properties=Properties(session_expiry_interval=10)))
    assert isinstance(bad, ProtocolViolation)


def test_payload_format_indicator_checked() -> None:
    # §3.3.2.3.2: a payload marked UTF-8 that is not is refused with 0x99.
    peer = Peer()
    marked = Properties(payload_format_indicator=1)
    assert peer.feed(Publish("t", b"\xff", qos=1, packet_id=1, properties=marked)) == []
    assert peer.take() == [PubAck(1, ReasonCode.PAYLOAD_FORMAT_INVALID)]


def test_garbage_after_valid_packets_closes_without_waiting_for_more_input() -> None:
    # The packets before the garbage are processed; the Malformed Packet then ends the connection
    # at once (§4.13), not on a later read that a silent peer may never cause.
    peer = Peer()
    peer.conn.receive_data(encode(Publish("ok", b"1"), MQTT_5) + b"\x00\x00")
    first = peer.conn.next_event(0.0)
    second = peer.conn.next_event(0.0)
    assert isinstance(first, MessageReceived)
    assert isinstance(second, ProtocolViolation)
    assert second.error.reason_code is ReasonCode.MALFORMED_PACKET


def test_refused_publish_is_still_acknowledged_on_3_1_1() -> None:
    # 3.1.1 has no negative PUBACK: a message the broker refuses (quota, not authorized) is
    # acknowledged and dropped, or the client's in-flight window would stall.
    peer = Peer(level=4)
    (event,) = peer.feed(Publish("t", b"x", qos=1, packet_id=4))
    assert isinstance(event, MessageReceived)
    peer.conn.acknowledge(1, 4, ReasonCode.QUOTA_EXCEEDED)
    assert peer.take() == [PubAck(4)]

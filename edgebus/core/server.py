"""The server-role connection machine (sans-IO): one network connection from CONNECT to close.

Bytes and a clock go in; events for the broker and bytes to write come out: packet ids, QoS 1/2
flows both ways, receive maximum, topic aliases, keep-alive. Nothing here awaits, and nothing
imports trio, sockets or the store (a test walks the imports).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edgebus.core.flows import FlowState
from edgebus.core.message import Message, forwarded_properties
from edgebus.core.session import Inflight, Session
from edgebus.core.stats import Stats
from edgebus.protocol.decoder import PacketDecoder
from edgebus.protocol.encoder import encode
from edgebus.protocol.enums import MQTT_5, ReasonCode
from edgebus.protocol.errors import ProtocolError, protocol_violation
from edgebus.protocol.packets import (
    Auth,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Unsubscribe,
)


class ConnectionState(enum.Enum):
    AWAIT_CONNECT = 1
    CONNECTING = 2  # CONNECT decoded, the broker has not answered yet
    CONNECTED = 3
    CLOSED = 4


# --- events the connection hands to the broker -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectReceived:
    connect: Connect


@dataclass(slots=True)  # not frozen: one per PUBLISH, and frozen __init__ is slower
class MessageReceived:
    """A PUBLISH to route. For QoS 1/2 the broker calls `Connection.acknowledge` once it is safe."""

    message: Message
    packet_id: int


@dataclass(frozen=True, slots=True)
class SubscribeReceived:
    subscribe: Subscribe


@dataclass(frozen=True, slots=True)
class UnsubscribeReceived:
    unsubscribe: Unsubscribe


@dataclass(frozen=True, slots=True)
class DisconnectReceived:
    disconnect: Disconnect


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The connection must close; on v5 with a DISCONNECT carrying ``error.reason_code`` first."""

    error: ProtocolError


Event = (
    ConnectReceived
    | MessageReceived
    | SubscribeReceived
    | UnsubscribeReceived
    | DisconnectReceived
    | ProtocolViolation
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What this broker announces and enforces on every connection."""

    max_packet_size: int = 268_435_460
    receive_maximum: int = 65535  # our inbound window
    max_inflight: int = 65535  # cap on our outbound window
    topic_alias_maximum: int = 0  # inbound aliases we accept
    max_qos: int = 2
    retain_available: bool = True


class Connection:
    """The protocol machine of one network connection, server role.

    `receive_data` feeds bytes; `next_event` returns what the broker must act on, one at a time
    (so a CONNECT is answered before the packets pipelined behind it are looked at); the rules
    the broker need not see (acks, pings, QoS 2 duplicates, aliases, flow control) are applied
    here. `take_output` returns the bytes to write, stamping packet ids and aliases on queued
    deliveries as the send window allows.
    """

    __slots__ = (
        "_control",
        "_error",
        "_held",
        "_packet_index",
        "_packets",
        "_unacked_in",
        "aliases_in",
        "aliases_out",
        "client_id",
        "client_max_packet_size",
        "client_topic_alias_maximum",
        "committed_seq",
        "decoder",
        "keep_alive",
        "limits",
        "on_hold",
        "protocol_level",
        "send_window",
        "session",
        "session_expiry_at_connect",
        "state",
        "stats",
        "wake",
    )

    def __init__(self, limits: ConnectionLimits, stats: Stats) -> None:
        self.limits = limits
        self.stats = stats
        self.decoder = PacketDecoder(role="server", max_packet_size=limits.max_packet_size)
        self.state = ConnectionState.AWAIT_CONNECT
        self.protocol_level = 4
        self.client_id = ""
        self.keep_alive = 0  # effective, after a Server Keep Alive override
        self.session: Session | None = None
        # Called when there is something new to write; the broker wires it to its writer task.
        self.wake: Callable[[], None] = _nothing
        self._packets: list[Packet] = []
        self._packet_index = 0
        self._error: ProtocolError | None = None
        self._control: list[bytes] = []  # acks, SUBACKs, PINGRESPs: written before queued messages
        # Replies waiting for a store commit, in order: (commit number, bytes). Once one waits,
        # everything after it waits too, so acks keep the order of their PUBLISHes [MQTT-4.6.0-2].
        self._held: deque[tuple[int, bytes]] = deque()
        self.committed_seq = 0
        # Called when the first reply is held, so the broker knows to call `release` on commits.
        self.on_hold: Callable[[Connection], None] = _nothing_for
        # What the client told us in CONNECT (§3.1.2.11).
        self.send_window = limits.max_inflight
        self.client_max_packet_size = 268_435_460
        self.client_topic_alias_maximum = 0
        self.aliases_in: dict[int, str] = {}
        self.aliases_out: dict[str, int] = {}
        # Inbound QoS 1/2 PUBLISH packet ids not yet acknowledged by the broker.
        self._unacked_in: dict[int, int] = {}
        self.session_expiry_at_connect = 0

    # --- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the network (b"" at EOF)."""
        if self._error is not None:
            return
        decoder = self.decoder
        try:
            packets = decoder.receive_data(data)
        except ProtocolError as exc:
            self._error = exc
            return
        # Garbage after valid packets: those are handled first, then the error, now rather than
        # on a next read that a silent peer may never cause.
        self._error = decoder.pending_error
        if packets:
            if self._packet_index:
                del self._packets[: self._packet_index]
                self._packet_index = 0
            self._packets.extend(packets)

    def next_event(self, now: float) -> Event | None:
        """The next event for the broker, or None when every packet fed so far is handled."""
        while self.state is not ConnectionState.CLOSED:
            if self.state is ConnectionState.CONNECTING:
                return None  # wait for accept() / reject() before reading on
            if self._packet_index >= len(self._packets):
                if self._error is not None:
                    error, self._error = self._error, None
                    self.state = ConnectionState.CLOSED
                    return ProtocolViolation(error)
                return None
            packet = self._packets[self._packet_index]
            self._packet_index += 1
            try:
                event = self._handle(packet, now)
            except ProtocolError as exc:
                self.state = ConnectionState.CLOSED
                return ProtocolViolation(exc)
            if event is not None:
                return event
        return None

    def _handle(self, packet: Packet, now: float) -> Event | None:
        if isinstance(packet, Publish):
            return self._on_publish(packet, now)
        if self.state is ConnectionState.AWAIT_CONNECT:
            if isinstance(packet, Connect):
                self.state = ConnectionState.CONNECTING
                self.protocol_level = packet.protocol_level
                self.client_id = packet.client_id
                return ConnectReceived(packet)
            # The first packet from a client MUST be CONNECT [MQTT-3.1.0-1].
            raise protocol_violation("first packet is not CONNECT")
        if isinstance(packet, PubAck):
            self._on_puback(packet)
        elif isinstance(packet, PubRec):
            self._on_pubrec(packet)
        elif isinstance(packet, PubRel):
            self._on_pubrel(packet)
        elif isinstance(packet, PubComp):
            self._on_pubcomp(packet)
        elif isinstance(packet, PingReq):
            self._reply(encode(PingResp(), self.protocol_level))  # [MQTT-3.12.4-1]
        elif isinstance(packet, Subscribe):
            return SubscribeReceived(packet)
        elif isinstance(packet, Unsubscribe):
            return UnsubscribeReceived(packet)
        elif isinstance(packet, Disconnect):
            return self._on_disconnect(packet)
        elif isinstance(packet, Connect):
            # A second CONNECT is a Protocol Error [MQTT-3.1.0-2].
            raise protocol_violation("second CONNECT on one connection")
        elif isinstance(packet, Auth):
            # No enhanced authentication method was agreed in CONNECT, so AUTH is a protocol
            # error [MQTT-4.12.0-1] (§4.12: AUTH only follows a CONNECT with a method).
            raise protocol_violation("AUTH without an authentication method")
        else:  # pragma: no cover - the decoder only yields client packets in the server role
            raise protocol_violation(f"unexpected {type(packet).__name__}")
        return None

    def _on_publish(self, packet: Publish, now: float) -> Event | None:
        if self.state is not ConnectionState.CONNECTED:
            raise protocol_violation("PUBLISH before CONNECT")
        stats = self.stats
        stats.messages_received += 1
        qos = packet.qos
        props = packet.properties
        topic = packet.topic
        if qos > self.limits.max_qos:
            # [MQTT-3.2.2-11]: a QoS above Maximum QoS is answered with DISCONNECT 0x9B.
            raise ProtocolError(ReasonCode.QOS_NOT_SUPPORTED, f"QoS {qos} exceeds Maximum QoS")
        if packet.retain and not self.limits.retain_available:
            raise ProtocolError(ReasonCode.RETAIN_NOT_SUPPORTED, "retain is not available")  # [MQTT-3.2.2-14]
        if self.protocol_level == MQTT_5:
            alias = props.topic_alias
            if alias is not None:
                # [MQTT-3.3.2-9] [MQTT-3.3.2-10]: 0 and values above our Topic Alias Maximum.
                if alias > self.limits.topic_alias_maximum:
                    raise ProtocolError(ReasonCode.TOPIC_ALIAS_INVALID, f"topic alias {alias} out of range")
                if topic:
                    self.aliases_in[alias] = topic
                else:
                    known = self.aliases_in.get(alias)
                    if known is None:
                        raise protocol_violation(f"unknown topic alias {alias}")
                    topic = known
            if props.payload_format_indicator == 1 and not _is_utf8(packet.payload):
                # §3.3.2.3.2: the receiver may check the payload format and answer 0x99.
                if qos == 0:
                    raise ProtocolError(ReasonCode.PAYLOAD_FORMAT_INVALID, "payload is not UTF-8")
                assert packet.packet_id is not None
                self._begin_inbound(packet.packet_id, qos)
                self.acknowledge(qos, packet.packet_id, ReasonCode.PAYLOAD_FORMAT_INVALID)
                return None
            expiry = props.message_expiry_interval
            message = Message(
                topic,
                packet.payload,
                qos,
                packet.retain,
                forwarded_properties(props),
                publisher_id=self.client_id,
                expiry_deadline=None if expiry is None else now + expiry,
            )
        else:
            message = Message(topic, packet.payload, qos, packet.retain, publisher_id=self.client_id)
        if qos == 0:
            return MessageReceived(message, 0)
        packet_id = packet.packet_id
        assert packet_id is not None
        session = self.session
        assert session is not None
        if qos == 2 and packet_id in session.inbound_qos2:
            # A resend of a QoS 2 PUBLISH already PUBREC'd: answer PUBREC again, deliver nothing
            # again [MQTT-4.3.3-10].
            self._reply(encode(PubRec(packet_id), self.protocol_level))
            return None
        if packet_id in self._unacked_in:
            return None  # a resend of a message the broker has not acknowledged yet
        self._begin_inbound(packet_id, qos)
        return MessageReceived(message, packet_id)

    def _begin_inbound(self, packet_id: int, qos: int) -> None:
        session = self.session
        assert session is not None
        unacked = len(self._unacked_in) + len(session.inbound_qos2)
        if unacked >= self.limits.receive_maximum and self.protocol_level == MQTT_5:
            # [MQTT-3.3.4-9]: more unacknowledged QoS>0 PUBLISH packets than our Receive Maximum.
            raise ProtocolError(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
        self._unacked_in[packet_id] = qos

    def acknowledge(self, qos: int, packet_id: int, reason_code: int = 0, wait: int = 0) -> None:
        """Send the PUBACK (QoS 1) or PUBREC (QoS 2) for an inbound PUBLISH once the store has
        committed batch ``wait`` (0: at once): the message is as safe as the broker promises."""
        if self._unacked_in.pop(packet_id, None) is None:
            return
        level = self.protocol_level
        if level != MQTT_5:
            # 3.1.1 has no negative acknowledgement: a refused message is acknowledged and dropped
            # (and counted), as Mosquitto does; withholding the ack would stall the client.
            reason_code = 0
        if qos == 1:
            self._reply(encode(PubAck(packet_id, reason_code), level), wait)
        else:
            if reason_code < 0x80:
                session = self.session
                assert session is not None
                session.inbound_qos2.add(packet_id)
                if session.journal is not None:
                    # The id must be on disk before PUBREC, or a resend after a crash would be
                    # delivered twice [MQTT-4.3.3-10].
                    wait = max(wait, session.journal.inbound_received(session, packet_id))
            self._reply(encode(PubRec(packet_id, reason_code), level), wait)

    def _on_puback(self, packet: PubAck) -> None:
        self._finish_outbound(packet.packet_id, FlowState.AWAIT_PUBACK)  # [MQTT-4.3.2-1]

    def _finish_outbound(self, packet_id: int, expected: FlowState) -> None:
        """The last acknowledgement of an outbound flow (PUBACK, PUBCOMP): the id is free again
        and the send window has room for what is queued."""
        session = self.session
        assert session is not None
        flight = session.inflight.get(packet_id)
        if flight is not None and flight.state is expected:
            del session.inflight[packet_id]
            if session.journal is not None:
                session.journal.delivery_finished(session, flight.delivery)
            if session.outbox:
                self.wake()

    def _on_pubrec(self, packet: PubRec) -> None:
        session = self.session
        assert session is not None
        pid = packet.packet_id
        flight = session.inflight.get(pid)
        if flight is None or flight.state is FlowState.AWAIT_PUBACK:
            # §4.3.3: a PUBREC for an id we do not know is answered by PUBREL
            # 0x92 Packet Identifier not found on v5.
            self._reply(encode(PubRel(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), self.protocol_level))
            return
        if packet.reason_code >= 0x80:
            # A failed PUBREC ends the flow: the message is discarded [MQTT-4.3.3-4] (v5).
            del session.inflight[pid]
            if session.journal is not None:
                session.journal.delivery_finished(session, flight.delivery)
            if session.outbox:
                self.wake()
            return
        flight.state = FlowState.AWAIT_PUBCOMP
        wait = 0
        if session.journal is not None:
            # PUBREL only once "PUBREC received" is on disk: after a crash the broker must resend
            # PUBREL, not the PUBLISH, which the client would take for a new message.
            wait = session.journal.delivery_pubrec(session, flight.delivery, pid)
        self._reply(encode(PubRel(pid), self.protocol_level), wait)  # [MQTT-4.3.3-4]

    def _on_pubrel(self, packet: PubRel) -> None:
        session = self.session
        assert session is not None
        pid = packet.packet_id
        if pid in session.inbound_qos2:
            session.inbound_qos2.discard(pid)
            wait = 0
            if session.journal is not None:
                # The id's release must be on disk before PUBCOMP, or after a crash a new message
                # reusing the id would be taken for a duplicate and lost.
                wait = session.journal.inbound_released(session, pid)
            self._reply(encode(PubComp(pid), self.protocol_level), wait)  # [MQTT-4.3.3-11]
        else:
            self._reply(encode(PubComp(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), self.protocol_level))

    def _on_pubcomp(self, packet: PubComp) -> None:
        self._finish_outbound(packet.packet_id, FlowState.AWAIT_PUBCOMP)  # §4.3.3

    def _on_disconnect(self, packet: Disconnect) -> Event:
        if self.protocol_level == MQTT_5:
            expiry = packet.properties.session_expiry_interval
            if expiry is not None and expiry != 0 and self.session_expiry_at_connect == 0:
                # [MQTT-3.14.2-2]: setting a non-zero expiry at DISCONNECT after 0 at CONNECT.
                raise protocol_violation("session expiry set at DISCONNECT after 0 in CONNECT")
        self.state = ConnectionState.CLOSED  # nothing after DISCONNECT is read [MQTT-3.14.4-2]
        return DisconnectReceived(packet)

    # --- the broker's answers --------------------------------------------------------------------

    def accept(self, session: Session, connack: bytes, client: Connect) -> None:
        """CONNECT accepted: attach the session and queue the CONNACK, then resend what the
        session had in flight [MQTT-4.4.0-1]."""
        self.state = ConnectionState.CONNECTED
        self.session = session
        session.connection = self
        self.client_id = session.client_id
        props = client.properties
        if self.protocol_level == MQTT_5:
            if props.receive_maximum is not None:
                self.send_window = min(props.receive_maximum, self.limits.max_inflight)
            if props.maximum_packet_size is not None:
                self.client_max_packet_size = props.maximum_packet_size
            self.client_topic_alias_maximum = props.topic_alias_maximum or 0
            self.session_expiry_at_connect = props.session_expiry_interval or 0
        self._control.append(connack)
        level = self.protocol_level
        for pid, flight in session.inflight.items():
            if flight.state is FlowState.AWAIT_PUBCOMP:
                self._reply(encode(PubRel(pid), level))
            else:
                d = flight.delivery
                self._control.append(
                    d.message.encode(
                        level, d.qos, d.retain, dup=True, packet_id=pid, subscription_ids=d.subscription_ids
                    )
                )
        self.wake()

    def reject(self, connack: bytes) -> None:
        """CONNECT refused: the CONNACK is the last thing written [MQTT-3.2.2-7]."""
        self.state = ConnectionState.CLOSED
        self._control.append(connack)
        self.wake()

    def send(self, packet: Packet, wait: int = 0) -> None:
        """Queue a control packet (SUBACK, UNSUBACK, DISCONNECT, ...), after commit ``wait``."""
        self._reply(encode(packet, self.protocol_level), wait)

    def _reply(self, data: bytes, wait: int = 0) -> None:
        if wait > self.committed_seq or self._held:
            if not self._held:
                self.on_hold(self)
            self._held.append((wait, data))
            return
        self._control.append(data)
        self.wake()

    def release(self, committed_seq: int) -> bool:
        """The store committed batch ``committed_seq``: replies waiting for it go out. Returns
        whether some still wait."""
        self.committed_seq = committed_seq
        held = self._held
        released = False
        while held and held[0][0] <= committed_seq:
            self._control.append(held.popleft()[1])
            released = True
        if released:
            self.wake()
        return bool(held)

    def close(self) -> None:
        self.state = ConnectionState.CLOSED

    @property
    def is_connected(self) -> bool:
        return self.state is ConnectionState.CONNECTED

    # --- output ----------------------------------------------------------------------------------

    def has_output(self) -> bool:
        """Whether `take_output` would return something now."""
        if self._control:
            return True
        session = self.session
        if session is None or self.state is not ConnectionState.CONNECTED or not session.outbox:
            return False
        return session.outbox.peek().qos == 0 or len(session.inflight) < self.send_window

    def take_output(self, now: float, limit_bytes: int = 1 << 62) -> list[bytes]:
        """What there is to write now, about ``limit_bytes`` at most: control packets first, then
        queued deliveries as far as the send window (the client's Receive Maximum) allows
        [MQTT-3.3.4-7]."""
        out = self._control
        self._control = []
        session = self.session
        if session is None or self.state is not ConnectionState.CONNECTED:
            return out
        outbox = session.outbox
        if not outbox:
            return out
        inflight = session.inflight
        window = self.send_window
        level = self.protocol_level
        stats = self.stats
        max_size = self.client_max_packet_size
        aliases = self.aliases_out if self.client_topic_alias_maximum else None
        journal = session.journal
        size = 0
        while outbox:
            delivery = outbox.peek()
            qos = delivery.qos
            if qos and len(inflight) >= window:
                break
            outbox.pop()
            message = delivery.message
            if message.expiry_deadline is not None and now >= message.expiry_deadline:
                stats.messages_expired += 1  # [MQTT-3.3.2-5]: expired messages are not sent
                if journal is not None:
                    journal.delivery_finished(session, delivery)
                continue
            pid = session.allocate_packet_id() if qos else 0
            alias = 0
            send_topic = True
            new_alias = False
            if aliases is not None:
                alias = aliases.get(message.topic, 0)
                if alias:
                    send_topic = False
                elif len(aliases) < self.client_topic_alias_maximum:
                    alias = aliases[message.topic] = len(aliases) + 1
                    new_alias = True
            data = message.encode(
                level,
                qos,
                delivery.retain,
                packet_id=pid,
                subscription_ids=delivery.subscription_ids,
                topic_alias=alias,
                send_topic=send_topic,
                now=now,
            )
            if len(data) > max_size:
                # Never send a packet over the client's Maximum Packet Size; the message is
                # discarded for this client as if it had been sent [MQTT-3.1.2-24, MQTT-3.1.2-25].
                stats.messages_too_large += 1
                if new_alias and aliases is not None:
                    del aliases[message.topic]
                if journal is not None:
                    journal.delivery_finished(session, delivery)
                continue
            if qos:
                inflight[pid] = Inflight(
                    delivery, FlowState.AWAIT_PUBACK if qos == 1 else FlowState.AWAIT_PUBREC
                )
                if journal is not None and delivery.store_seq:
                    # A QoS 2 PUBLISH goes out only once its packet id is on disk: resent after a
                    # crash under another id, the client would deliver it twice.
                    wait = journal.delivery_sent(session, delivery, pid)
                    if wait > self.committed_seq or self._held:
                        if not self._held:
                            self.on_hold(self)
                        self._held.append((wait, data))
                        stats.messages_sent += 1
                        continue
            out.append(data)
            stats.messages_sent += 1
            size += len(data)
            if size >= limit_bytes:
                break
        return out

    @property
    def keep_alive_timeout(self) -> float | None:
        """Seconds of silence after which the client is gone: 1.5 times Keep Alive [MQTT-3.1.2-24]."""
        if self.state is ConnectionState.AWAIT_CONNECT:
            return None
        return self.keep_alive * 1.5 if self.keep_alive else None

    def properties_for_disconnect(self, reason: str) -> Properties:
        return Properties(reason_string=reason) if reason else Properties()


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _nothing() -> None:
    return None


def _nothing_for(_: Connection) -> None:
    return None

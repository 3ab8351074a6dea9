"""The server-role connection machine (sans-IO): one network connection from CONNECT to close.

Bytes and a clock go in; events for the broker (edgebus.core.server_events) and bytes to write come out:
packet ids, QoS 1/2 flows both ways, receive maximum, topic aliases (applied by edgebus.core.flows),
keep-alive. It journals what the flows report; its output half (edgebus.core.output) holds a reply
until the store committed what it promises. Nothing here awaits or imports trio, sockets or the store
(a test walks the imports)."""

from __future__ import annotations

from edgebus.core.flows import InboundFlows, TopicAliases, Trigger, pubrec_trigger
from edgebus.core.message import Message, forwarded_properties, is_utf8
from edgebus.core.output import ConnectionOutput, ConnectionState
from edgebus.core.server_events import (
    REPLY_OVERHEAD_BYTES,
    ConnectionLimits,
    ConnectReceived,
    DisconnectReceived,
    Event,
    MessageReceived,
    ProtocolViolation,
    SubscribeReceived,
    UnsubscribeReceived,
)
from edgebus.core.session import Session
from edgebus.core.stats import Stats
from edgebus.protocol.decoder import PacketDecoder
from edgebus.protocol.encoder import encode
from edgebus.protocol.enums import BRIDGE_BIT, MQTT_5, ReasonCode, session_level
from edgebus.protocol.errors import ProtocolError, protocol_violation
from edgebus.protocol.packets import (
    Auth,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Unsubscribe,
)


class Connection(ConnectionOutput):
    """The protocol machine of one network connection, server role.

    `receive_data` feeds bytes; `next_event` returns what the broker must act on, one at a time (so a
    CONNECT is answered before the packets pipelined behind it are looked at); the rules the broker
    need not see (acks, pings, QoS 2 duplicates, aliases, flow control) are applied here. What it
    writes, `take_output`, is its ConnectionOutput half (edgebus.core.output).
    """

    __slots__ = (
        "_error",
        "_packet_index",
        "_packets",
        "client_id",
        "decoder",
        "inbound",
        "is_bridge",
        "keep_alive",
        "limits",
        "session_expiry_at_connect",
    )

    def __init__(self, limits: ConnectionLimits, stats: Stats) -> None:
        super().__init__(stats)
        self.limits = limits
        self.decoder = PacketDecoder(role="server", max_packet_size=limits.max_packet_size)
        self.is_bridge = False  # CONNECT level byte had the bridge bit (a Mosquitto bridge, try_private)
        self.client_id = ""
        self.keep_alive = 0  # effective, after a Server Keep Alive override
        self._packets: list[Packet] = []
        self._packet_index = 0
        self._error: ProtocolError | None = None
        # The receiver's side of the QoS 1/2 flows, from `accept` on (the session holds the rest).
        self.inbound: InboundFlows | None = None
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
                self.protocol_level = session_level(packet.protocol_level)  # 3.1 speaks 3.1.1 from here on
                self.is_bridge = packet.protocol_level & BRIDGE_BIT != 0
                self.client_id = packet.client_id
                return ConnectReceived(packet)
            # The first packet from a client MUST be CONNECT [MQTT-3.1.0-1].
            raise protocol_violation("first packet is not CONNECT")
        if isinstance(packet, PubAck):
            self._on_ack(Trigger.PUBACK, packet.packet_id)
        elif isinstance(packet, PubRec):
            self._on_ack(pubrec_trigger(packet.reason_code), packet.packet_id)
        elif isinstance(packet, PubRel):
            self._on_pubrel(packet.packet_id)
        elif isinstance(packet, PubComp):
            self._on_ack(Trigger.PUBCOMP, packet.packet_id)
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
        stats.received_by_qos[qos & 3] += 1
        props = packet.properties
        topic = packet.topic
        if qos > self.limits.max_qos:
            # [MQTT-3.2.2-11]: a QoS above Maximum QoS is answered with DISCONNECT 0x9B.
            raise ProtocolError(ReasonCode.QOS_NOT_SUPPORTED, f"QoS {qos} exceeds Maximum QoS")
        if packet.retain and not self.limits.retain_available:
            raise ProtocolError(ReasonCode.RETAIN_NOT_SUPPORTED, "retain is not available")  # [MQTT-3.2.2-14]
        refusal = 0
        if self.protocol_level == MQTT_5:
            alias = props.topic_alias
            if alias is not None:
                aliases = self.aliases
                assert aliases is not None  # a PUBLISH is handled only once the connection is accepted
                topic = aliases.resolve(alias, topic)
            if props.payload_format_indicator == 1 and not is_utf8(packet.payload):
                # §3.3.2.3.2: the receiver may check the payload format and answer 0x99.
                if qos == 0:
                    raise ProtocolError(ReasonCode.PAYLOAD_FORMAT_INVALID, "payload is not UTF-8")
                refusal = ReasonCode.PAYLOAD_FORMAT_INVALID
            expiry = props.message_expiry_interval
            message = Message(
                topic,
                packet.payload,
                qos,
                packet.retain,
                forwarded_properties(props),
                publisher_id=self.client_id,
                expiry_deadline=None if expiry is None else now + expiry,
                topic_wire=packet.topic_wire if alias is None else None,  # an alias: the wire's may be ""
            )
        else:
            message = Message(
                topic,
                packet.payload,
                qos,
                packet.retain,
                publisher_id=self.client_id,
                topic_wire=packet.topic_wire,
            )
        if qos == 0:
            return MessageReceived(message, 0)
        inbound = self.inbound
        packet_id = packet.packet_id
        assert inbound is not None and packet_id is not None
        step = inbound.receive(packet_id, qos)
        if not step.deliver:
            # A resend: of a QoS 2 message already PUBREC'd, answered PUBREC again [MQTT-4.3.3-10];
            # of one the broker has not acknowledged yet, by that acknowledgement.
            if step.reply is not None:
                self._reply(step.reply_bytes(packet_id, self.protocol_level))
            return None
        if refusal:
            self.acknowledge(qos, packet_id, refusal)
            return None
        return MessageReceived(message, packet_id)

    def acknowledge(
        self, qos: int, packet_id: int, reason_code: int = 0, wait: int = 0, settling: Message | None = None
    ) -> None:
        """Send the PUBACK (QoS 1) or PUBREC (QoS 2) for an inbound PUBLISH once the store has
        committed batch ``wait`` (0: at once): the message is as safe as the broker promises.
        ``settling``: a QoS 1 message that wrote nothing but its stored deliveries; its PUBACK may also
        go once those are all finished, for then its subscribers have it and the disk owes it nothing.
        (``qos`` is the PUBLISH's; its flow knows it too.)"""
        inbound = self.inbound
        assert inbound is not None
        if qos != 1:
            settling = None  # a PUBREC also waits for its packet id on disk [MQTT-4.3.3-10]
        step = inbound.acknowledge(packet_id, reason_code)
        if step.reply is None:
            return  # nothing under this id awaits an acknowledgement
        session = self.session
        if step.advanced and session is not None and session.journal is not None:
            # Now awaiting PUBREL: the id must be on disk before PUBREC, or a resend after a crash
            # would be delivered twice [MQTT-4.3.3-10].
            wait = max(wait, session.journal.inbound_received(session, packet_id))
        self._reply(step.reply_bytes(packet_id, self.protocol_level, reason_code), wait, settling)

    def _on_ack(self, trigger: Trigger, packet_id: int) -> None:
        """PUBACK, PUBREC or PUBCOMP for an outbound flow."""
        session = self.session
        assert session is not None
        inflight = session.inflight
        flight = inflight.get(packet_id)
        step = inflight.advance(packet_id, flight, trigger)
        journal = session.journal
        if step.ended:
            assert flight is not None
            if journal is not None:
                journal.delivery_acknowledged(session, flight.delivery)
            if session.outbox:
                self.wake()  # the id is free and the send window has room for what is queued
        elif step.reply is not None:
            wait = 0
            if step.advanced and journal is not None:
                assert flight is not None
                # Now awaiting PUBCOMP: PUBREL only once that is on disk, as after a crash the broker
                # must resend PUBREL, not the PUBLISH (a new message to the client) [MQTT-4.3.3-6].
                wait = journal.delivery_pubrec(session, flight.delivery, packet_id)
            self._reply(step.reply_bytes(packet_id, self.protocol_level), wait)

    def _on_pubrel(self, packet_id: int) -> None:
        session = self.session
        inbound = self.inbound
        assert session is not None and inbound is not None
        step = inbound.release(packet_id)
        wait = 0
        if step.ended and session.journal is not None:
            # The id's release must be on disk before PUBCOMP, or after a crash a new message
            # reusing the id would be taken for a duplicate and lost.
            wait = session.journal.inbound_released(session, packet_id)
        self._reply(step.reply_bytes(packet_id, self.protocol_level), wait)

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
        level = self.protocol_level
        limits = self.limits
        self.inbound = InboundFlows(session.inbound_qos2, level, limits.receive_maximum)
        inflight = session.inflight
        inflight.window = limits.max_inflight
        if level == MQTT_5:
            if props.receive_maximum is not None:
                inflight.window = min(props.receive_maximum, limits.max_inflight)  # [MQTT-3.3.4-9]
            if props.maximum_packet_size is not None:
                self.client_max_packet_size = props.maximum_packet_size
            self.aliases = TopicAliases(limits.topic_alias_maximum, props.topic_alias_maximum or 0)
            self.session_expiry_at_connect = props.session_expiry_interval or 0
        self._control.append(connack)
        self._control.extend(inflight.resend(level, lambda pid, flight: flight.resend(level, pid)))
        self.output_bytes += sum(map(len, self._control)) + REPLY_OVERHEAD_BYTES * len(self._control)
        self.wake()

    def reject(self, connack: bytes) -> None:
        """CONNECT refused: the CONNACK is the last thing written [MQTT-3.2.2-7]."""
        self.state = ConnectionState.CLOSED
        self._reply(connack)

    def close(self) -> None:
        self.state = ConnectionState.CLOSED

    @property
    def keep_alive_timeout(self) -> float | None:
        """Seconds of silence after which the client is gone: 1.5 times Keep Alive [MQTT-3.1.2-24]."""
        if self.state is ConnectionState.AWAIT_CONNECT:
            return None
        return self.keep_alive * 1.5 if self.keep_alive else None


__all__ = ["Connection", "ConnectionState"]

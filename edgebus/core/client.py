"""Sans-IO MQTT 3.1.1 / 5.0 client role: the protocol machine of one client across its connections.

The sibling of ``edgebus.core.server.Connection`` (the server role), with the same shape:
``receive_data(bytes)`` feeds what the network delivered, ``next_event(now)`` returns what the
application must see (``edgebus.core.client_events``), one at a time, and ``take_output(now)`` returns
the bytes to write. The QoS 1/2 flows in both directions, their packet ids, the send window (the
server's Receive Maximum) and resending after a reconnect are the flows of ``edgebus.core.flows``,
driven from here; so is keep-alive, with the clock passed in. Nothing here awaits, and nothing imports
trio or sockets (a test walks the imports). The simulated devices and the upstream bridge drive it from
trio (``edgebus.client_trio``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from edgebus.core.client_events import (
    ClientOptions,
    ClientState,
    Connected,
    ConnectionRefused,
    DisconnectReceived,
    Event,
    KeepAliveTimeout,
    MessageReceived,
    ProtocolViolation,
    PublishAcknowledged,
    SubscribeAcknowledged,
    UnsubscribeAcknowledged,
)
from edgebus.core.client_queue import OutgoingMessage, OutgoingQueue, check_publish
from edgebus.core.flows import InboundFlows, OutboundFlows, TopicAliases, Trigger, pubrec_trigger
from edgebus.protocol.decoder import MAX_PACKET_SIZE, PacketDecoder
from edgebus.protocol.encoder import encode
from edgebus.protocol.enums import MQTT_5, ReasonCode, session_level
from edgebus.protocol.errors import ProtocolError, protocol_violation
from edgebus.protocol.packets import (
    NO_PROPERTIES,
    Auth,
    ConnAck,
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
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
)

#: Receive Maximum assumed when the server sends none (§3.2.2.3.3: absent means 65,535).
DEFAULT_RECEIVE_MAXIMUM = 65535

__all__ = [
    "ClientOptions",
    "ClientState",
    "Connected",
    "ConnectionRefused",
    "DisconnectReceived",
    "Event",
    "KeepAliveTimeout",
    "MessageReceived",
    "MqttClient",
    "ProtocolViolation",
    "PublishAcknowledged",
    "SubscribeAcknowledged",
    "UnsubscribeAcknowledged",
]


class MqttClient:
    """The client's protocol machine: a session that outlives connections, and the current connection.

    Call `connect` when a network connection is open, feed `receive_data`, handle `next_event`, write
    `take_output`, and call `connection_lost` when the connection ends for any reason. QoS 1/2
    messages published while offline wait in the queue; those in flight at a disconnect are resent
    with DUP set when the server resumes the session [MQTT-4.4.0-1], and resent as new messages when
    it does not (the server lost them with the session).
    """

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.state = ClientState.DISCONNECTED
        self.protocol_level = session_level(options.protocol_level)  # 3.1 speaks 3.1.1 after its CONNECT
        self.decoder = PacketDecoder(role="client", protocol_level=self.protocol_level)
        # The session (§4.1, client side): outbound QoS 1/2 messages in flight by packet id in the
        # order first sent (the order they are resent in), and the inbound QoS 2 packet ids PUBREC'd
        # and awaiting PUBREL.
        self.inflight: OutboundFlows[OutgoingMessage] = OutboundFlows()
        self.inflight.window = min(DEFAULT_RECEIVE_MAXIMUM, options.max_inflight)
        self.inbound_qos2: set[int] = set()
        self.queue = OutgoingQueue()  # published, not yet sent
        self._pending_requests: dict[int, type[Subscribe] | type[Unsubscribe]] = {}
        # The current connection's side of the inbound flows, and its topic aliases.
        self.inbound = InboundFlows(self.inbound_qos2, self.protocol_level, options.receive_maximum)
        self.aliases = TopicAliases(options.topic_alias_maximum)
        self._control: list[bytes] = []
        self._packets: deque[Packet] = deque()
        self._error: ProtocolError | None = None
        self._events: deque[Event] = deque()
        # What the server told us in CONNACK.
        self.connack: ConnAck | None = None
        self.keep_alive = options.keep_alive
        self.server_maximum_qos = 2
        self.server_retain_available = True
        self.server_maximum_packet_size = MAX_PACKET_SIZE
        self.assigned_client_id: str | None = None
        # Keep-alive bookkeeping: when we last wrote a packet, and when a PINGREQ went unanswered.
        self._last_sent = 0.0
        self._ping_sent_at: float | None = None

    # --- connection lifecycle ----------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self.state is ClientState.CONNECTED

    @property
    def send_window(self) -> int:
        """How many QoS 1/2 messages may be in flight at once: the server's Receive Maximum, capped
        by ``max_inflight`` [MQTT-4.9.0-1]."""
        return self.inflight.window

    def connect(self, now: float) -> None:
        """A new network connection is open: queue CONNECT. With Clean Start the session is
        discarded first; its unacknowledged messages are queued again as new ones."""
        if self.state is not ClientState.DISCONNECTED:
            raise RuntimeError(f"connect() while {self.state.name}")
        options = self.options
        if options.clean_start:
            self._discard_session()
        self.decoder = PacketDecoder(
            role="client", protocol_level=self.protocol_level, max_packet_size=options.maximum_packet_size
        )
        self._packets.clear()
        self._error = None
        self._control = []
        self.aliases = TopicAliases(options.topic_alias_maximum)  # [MQTT-3.3.2-7]
        self.inbound = InboundFlows(self.inbound_qos2, self.protocol_level, options.receive_maximum)
        self.connack = None
        self._control.append(encode(options.connect_packet(), options.protocol_level))
        self.state = ClientState.CONNECTING
        self._last_sent = now
        self._ping_sent_at = None

    def disconnect(self, reason_code: int = 0, properties: Properties = NO_PROPERTIES) -> None:
        """Queue DISCONNECT; the connection closes once it is written [MQTT-3.14.4-1]. Reason code 0x04
        asks the server to publish the will (MQTT 5)."""
        if self.state in (ClientState.CONNECTED, ClientState.CONNECTING):
            self._control.append(encode(Disconnect(reason_code, properties), self.protocol_level))
        self.state = ClientState.CLOSING

    def connection_lost(self) -> None:
        """The network connection is gone (closed by either side). The session stays for the next
        `connect`; SUBSCRIBE / UNSUBSCRIBE requests not yet answered are forgotten (the application
        subscribes again when the session was not resumed)."""
        self.state = ClientState.DISCONNECTED
        self._control = []
        self._packets.clear()
        self._pending_requests.clear()
        self._ping_sent_at = None

    def _discard_session(self) -> None:
        # In-flight messages the server will never acknowledge now go back to the queue, in order,
        # as new messages; a QoS 2 message past PUBREC reached the server, so it is complete.
        inflight = self.inflight
        requeue = inflight.withdraw()
        for pid, message in inflight.items():
            self._events.append(PublishAcknowledged(message.token, message.qos, pid, 0))
        inflight.clear()
        self.queue.requeue(requeue)
        self.inbound_qos2.clear()

    # --- the application's requests ----------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties = NO_PROPERTIES,
        token: object = None,
        packet_id: int = 0,
        dup: bool = False,
    ) -> bool:
        """Queue an application message; False when it is refused: QoS 0 without a connection (at
        most once means it is not kept), or the queue is full (``max_queued_messages``).

        ``packet_id`` (QoS 1/2) makes the message go out with that id instead of an allocated one (the
        upstream bridge derives it from the outbox sequence, so a resend by a new process carries the
        same id and the receiver de-duplicates it [MQTT-4.3.3-10]); the message then waits in the queue
        while another flow still uses that id [MQTT-2.2.1-3]. ``dup`` sets DUP on its first transmission:
        it may have been sent before, on an earlier connection [MQTT-3.3.1-1]."""
        check_publish(topic, qos, packet_id, dup)
        if qos == 0 and self.state is ClientState.DISCONNECTED:
            return False
        if len(self.queue) >= self.options.max_queued_messages:
            return False
        self.queue.append(OutgoingMessage(topic, payload, qos, retain, properties, token, packet_id, dup))
        return True

    def release(self, packet_id: int, token: object = None) -> None:
        """Send PUBREL for ``packet_id`` as the sender of a QoS 2 message past PUBREC [MQTT-4.3.3-4],
        without the message: a new process that may have sent it before (the upstream bridge after a
        crash) lets the receiver deliver what it holds under that id and forget the id. The PUBCOMP
        ends the flow as a PublishAcknowledged(token, 2, packet_id, reason_code): every PUBREL is answered
        [MQTT-4.3.3-11], by a receiver that holds nothing under that id with 0x92 (MQTT 5, §3.7.2.1)."""
        if self.state is not ClientState.CONNECTED:
            raise RuntimeError(f"release() needs a connection (state {self.state.name})")
        if not 1 <= packet_id <= 0xFFFF:
            raise ValueError(f"packet identifier must be 1..65535, not {packet_id!r}")
        if packet_id in self.inflight or packet_id in self._pending_requests:
            raise ValueError(f"packet identifier {packet_id} is in use [MQTT-2.2.1-3]")
        message = OutgoingMessage("", b"", 2, False, NO_PROPERTIES, token)
        message.packet_id = packet_id
        step = self.inflight.release(packet_id, message)
        self._control.append(step.reply_bytes(packet_id, self.protocol_level))

    def subscribe(self, subscriptions: Sequence[Subscription], properties: Properties = NO_PROPERTIES) -> int:
        """Queue a SUBSCRIBE; returns its packet id (the SubscribeAcknowledged event carries it)."""
        if not subscriptions:
            raise ValueError("SUBSCRIBE needs at least one topic filter [MQTT-3.8.3-2]")
        pid = self._request_id(Subscribe)
        self._control.append(encode(Subscribe(pid, tuple(subscriptions), properties), self.protocol_level))
        return pid

    def unsubscribe(self, topic_filters: Sequence[str], properties: Properties = NO_PROPERTIES) -> int:
        """Queue an UNSUBSCRIBE; returns its packet id."""
        if not topic_filters:
            raise ValueError("UNSUBSCRIBE needs at least one topic filter [MQTT-3.10.3-2]")
        pid = self._request_id(Unsubscribe)
        self._control.append(encode(Unsubscribe(pid, tuple(topic_filters), properties), self.protocol_level))
        return pid

    def _request_id(self, kind: type[Subscribe] | type[Unsubscribe]) -> int:
        if self.state not in (ClientState.CONNECTING, ClientState.CONNECTED):
            raise RuntimeError(f"{kind.__name__} needs a connection (state {self.state.name})")
        pid = self.inflight.allocate(self._reserved)
        self._pending_requests[pid] = kind
        return pid

    def acknowledge(self, packet_id: int, reason_code: int = 0) -> None:
        """Send the PUBACK (QoS 1) or PUBREC (QoS 2) of an inbound message, when ``auto_acknowledge``
        is off: call it once the message is as safe as the application promises. Past a lost
        connection a QoS 2 message still counts as received: its resend is not handed on again."""
        step = self.inbound.acknowledge(packet_id, reason_code)
        if step.reply is not None and self.state is ClientState.CONNECTED:
            self._control.append(step.reply_bytes(packet_id, self.protocol_level, reason_code))

    def _reserved(self, packet_id: int) -> bool:
        """Whether a request uses ``packet_id`` or a queued message chose it: the allocator leaves it
        alone [MQTT-2.2.1-3]."""
        return packet_id in self._pending_requests or self.queue.chose(packet_id)

    # --- input -------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the network (b"" at EOF)."""
        if self._error is not None or self.state is ClientState.DISCONNECTED:
            return
        try:
            packets = self.decoder.receive_data(data)
        except ProtocolError as exc:
            self._error = exc
            return
        self._error = self.decoder.pending_error
        self._packets.extend(packets)

    def next_event(self, now: float) -> Event | None:
        """The next event for the application, or None when everything fed so far is handled."""
        while True:
            if self._events:
                return self._events.popleft()
            if self.state in (ClientState.DISCONNECTED, ClientState.CLOSING):
                return None
            if (
                self._ping_sent_at is not None
                and now - self._ping_sent_at >= self._ping_timeout()
                and not self._packets
            ):
                self.state = ClientState.CLOSING
                return KeepAliveTimeout()
            if not self._packets:
                if self._error is not None:
                    return self._violation(self._error)
                return None
            packet = self._packets.popleft()
            try:
                event = self._handle(packet, now)
            except ProtocolError as exc:
                return self._violation(exc)
            if event is not None:
                return event

    def _violation(self, error: ProtocolError) -> ProtocolViolation:
        self._error = None
        if self.state is ClientState.CONNECTED and self.protocol_level == MQTT_5:
            # §4.13.1: on a protocol error the client MAY send DISCONNECT with the reason code first.
            self._control.append(encode(Disconnect(error.reason_code), MQTT_5))
        self.state = ClientState.CLOSING
        return ProtocolViolation(error)

    def _handle(self, packet: Packet, now: float) -> Event | None:
        if self.state is ClientState.CONNECTING:
            if isinstance(packet, ConnAck):
                return self._on_connack(packet)
            # The first packet from the Server MUST be CONNACK [MQTT-3.2.0-1].
            raise protocol_violation(f"{type(packet).__name__} before CONNACK")
        if isinstance(packet, Publish):
            return self._on_publish(packet)
        if isinstance(packet, PubAck):
            return self._on_ack(Trigger.PUBACK, packet.packet_id, packet.reason_code)
        if isinstance(packet, PubRec):
            return self._on_ack(pubrec_trigger(packet.reason_code), packet.packet_id, packet.reason_code)
        if isinstance(packet, PubComp):
            return self._on_ack(Trigger.PUBCOMP, packet.packet_id, packet.reason_code)
        if isinstance(packet, PubRel):
            step = self.inbound.release(packet.packet_id)  # [MQTT-4.3.3-11]
            self._control.append(step.reply_bytes(packet.packet_id, self.protocol_level))
        elif isinstance(packet, PingResp):
            self._ping_sent_at = None
        elif isinstance(packet, SubAck | UnsubAck):
            kind = self._pending_requests.get(packet.packet_id)
            expected = Subscribe if isinstance(packet, SubAck) else Unsubscribe
            if kind is not expected:
                return None  # an answer to a request of an earlier connection: nobody waits for it
            del self._pending_requests[packet.packet_id]
            if isinstance(packet, SubAck):
                return SubscribeAcknowledged(packet)
            return UnsubscribeAcknowledged(packet)
        elif isinstance(packet, Disconnect):
            self.state = ClientState.CLOSING
            return DisconnectReceived(packet)
        elif isinstance(packet, ConnAck):
            raise protocol_violation("second CONNACK on one connection [MQTT-3.2.0-2]")
        elif isinstance(packet, Auth):
            # We named no authentication method in CONNECT, so AUTH is a protocol error [MQTT-4.12.0-1].
            raise protocol_violation("AUTH without an authentication method")
        else:  # pragma: no cover - the decoder only yields server packets in the client role
            raise protocol_violation(f"unexpected {type(packet).__name__}")
        return None

    def _on_connack(self, connack: ConnAck) -> Event:
        if connack.reason_code != 0:
            self.state = ClientState.CLOSING  # the server closes the connection [MQTT-3.2.2-7]
            return ConnectionRefused(connack)
        if connack.session_present and self.options.clean_start:
            # With Clean Start the server MUST set Session Present 0 [MQTT-3.2.2-2]; a client that
            # receives 1 closes the connection (§3.2.2.1.1 of 5.0, [MQTT-3.2.2-4] of 3.1.1).
            raise protocol_violation("CONNACK session present after a clean start")
        self.connack = connack
        self.state = ClientState.CONNECTED
        props = connack.properties
        options = self.options
        if self.protocol_level == MQTT_5:
            receive_maximum = props.receive_maximum or DEFAULT_RECEIVE_MAXIMUM
            self.inflight.window = min(receive_maximum, options.max_inflight)  # [MQTT-4.9.0-1]
            if props.server_keep_alive is not None:
                self.keep_alive = props.server_keep_alive  # [MQTT-3.2.2-21]
            self.server_maximum_qos = 2 if props.maximum_qos is None else props.maximum_qos
            self.server_retain_available = props.retain_available != 0
            if props.maximum_packet_size is not None:
                self.server_maximum_packet_size = props.maximum_packet_size
            if props.assigned_client_identifier is not None:
                self.assigned_client_id = props.assigned_client_identifier
        else:
            self.inflight.window = options.max_inflight
        if not connack.session_present:
            # The server has no session for us: ours is discarded [MQTT-3.2.2-5] (§4.1 of 3.1.1),
            # and what it had in flight is sent again as new messages.
            self._discard_session()
        else:
            # Resend unacknowledged PUBLISH (DUP set) and PUBREL packets with their original packet
            # ids, in the order first sent [MQTT-4.4.0-1] [MQTT-4.6.0-1].
            level = self.protocol_level
            self._control.extend(
                self.inflight.resend(level, lambda _, message: message.encode(level, dup=True))
            )
        return Connected(connack)

    def _on_publish(self, packet: Publish) -> Event | None:
        alias = packet.properties.topic_alias
        if alias is not None:
            topic = self.aliases.resolve(alias, packet.topic)
            if not packet.topic:  # the application sees the topic the alias stands for
                packet = replace(packet, topic=topic)
        qos = packet.qos
        if qos == 0:
            return MessageReceived(packet)
        pid = packet.packet_id
        assert pid is not None
        step = self.inbound.receive(pid, qos)
        if not step.deliver:
            # A resend: of a QoS 2 message already PUBREC'd, answered PUBREC again [MQTT-4.3.3-10];
            # of one the application has not acknowledged yet, by that acknowledgement.
            if step.reply is not None:
                self._control.append(step.reply_bytes(pid, self.protocol_level))
            return None
        if self.options.auto_acknowledge:
            self.acknowledge(pid)
        return MessageReceived(packet)

    def _on_ack(self, trigger: Trigger, packet_id: int, reason_code: int) -> Event | None:
        """PUBACK, PUBREC or PUBCOMP for an outbound flow: the end of the flow is an event."""
        inflight = self.inflight
        message = inflight.get(packet_id)
        step = inflight.advance(packet_id, message, trigger)
        if step.reply is not None:
            self._control.append(step.reply_bytes(packet_id, self.protocol_level))
        if message is None or not (step.advanced or step.ended):
            return None
        if step.ended:
            return PublishAcknowledged(message.token, message.qos, packet_id, reason_code)
        message.payload = b""  # past PUBREC only the packet id is needed, until PUBCOMP [MQTT-4.3.3-6]
        return None

    # --- output ------------------------------------------------------------------------------------

    def has_output(self) -> bool:
        """Whether `take_output` would return packets now (keep-alive aside)."""
        if self._control:
            return True
        queue = self.queue
        if self.state is not ClientState.CONNECTED or not queue:
            return False
        return not queue.head_blocked(self.inflight, self._pending_requests)

    def take_output(self, now: float) -> list[bytes]:
        """The packets to write now: control packets, then queued messages as far as the send window
        (the server's Receive Maximum) allows [MQTT-4.9.0-2], then a PINGREQ when the keep-alive
        interval passed without a packet sent [MQTT-3.1.2-23]."""
        out = self._control
        self._control = []
        if self.state is ClientState.CONNECTED:
            queue = self.queue
            inflight = self.inflight
            while queue:
                if queue.head_blocked(inflight, self._pending_requests):
                    break  # in order: nothing overtakes a message that waits
                message = queue.popleft()
                qos = message.qos
                if qos > self.server_maximum_qos or (message.retain and not self.server_retain_available):
                    # The server told us it does not support this [MQTT-3.2.2-11] [MQTT-3.2.2-14]:
                    # the message is refused here rather than sent into a DISCONNECT.
                    code = (
                        ReasonCode.QOS_NOT_SUPPORTED
                        if qos > self.server_maximum_qos
                        else ReasonCode.RETAIN_NOT_SUPPORTED
                    )
                    if qos:
                        self._events.append(PublishAcknowledged(message.token, qos, 0, code))
                    continue
                if qos:
                    pid = message.packet_id = message.fixed_id or inflight.allocate(self._reserved)
                    inflight.send(pid, message, qos)
                out.append(message.encode(self.protocol_level))
            keep_alive = self.keep_alive
            if keep_alive and not out and self._ping_sent_at is None and now - self._last_sent >= keep_alive:
                out.append(encode(PingReq(), self.protocol_level))
                self._ping_sent_at = now
        if out:
            self._last_sent = now
        return out

    def _ping_timeout(self) -> float:
        timeout = self.options.ping_timeout
        return float(self.keep_alive) if timeout is None else timeout

    def next_deadline(self) -> float | None:
        """When `take_output` (a PINGREQ is due) or `next_event` (a PINGRESP is overdue) next needs a
        call even if nothing else happens; None when no timer runs."""
        if self.state is not ClientState.CONNECTED or not self.keep_alive:
            return None
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self._ping_timeout()
        return self._last_sent + self.keep_alive

    @property
    def unacknowledged(self) -> int:
        """Outbound messages queued or in flight."""
        return len(self.queue) + len(self.inflight)

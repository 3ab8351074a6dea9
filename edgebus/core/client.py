"""Sans-IO MQTT 3.1.1 / 5.0 client role: the protocol machine of one client across its connections.

The sibling of ``session.Connection`` (the server role), with the same shape: ``receive_data(bytes)``
feeds what the network delivered, ``next_event(now)`` returns what the application must see, one at a
time, and ``take_output(now)`` returns the bytes to write. Packet ids, the QoS 1/2 flows in both
directions, the send window (the server's Receive Maximum), resending after a reconnect and keep-alive
are handled here; the clock is passed in. Nothing here awaits, and nothing imports trio or sockets
(a test walks the imports). The simulated devices and the upstream bridge drive it from trio
(``edgebus.client_trio``).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from edgebus.core.flows import FlowState, allocate_packet_id
from edgebus.protocol.decoder import MAX_PACKET_SIZE, PacketDecoder
from edgebus.protocol.encoder import encode, encode_publish
from edgebus.protocol.enums import MQTT_3_1_1, MQTT_5, ReasonCode
from edgebus.protocol.errors import ProtocolError, protocol_violation
from edgebus.protocol.packets import (
    NO_PROPERTIES,
    Auth,
    ConnAck,
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
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
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


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What the client asks for in CONNECT, and its own limits."""

    client_id: str
    protocol_level: int = MQTT_5
    clean_start: bool = True  # "Clean Session" on 3.1.1
    keep_alive: int = 60  # seconds; 0 disables keep-alive
    session_expiry_interval: int = 0  # seconds, MQTT 5 only; 0xFFFFFFFF never expires
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    receive_maximum: int = 65535  # our inbound window (MQTT 5 announces it)
    max_inflight: int = 65535  # cap on our outbound window, whatever the server allows
    maximum_packet_size: int = MAX_PACKET_SIZE  # largest packet we accept (announced on MQTT 5)
    topic_alias_maximum: int = 0  # inbound topic aliases we accept (MQTT 5)
    max_queued_messages: int = 100_000  # PUBLISH calls not yet sent; `publish` refuses beyond
    auto_acknowledge: bool = True  # send PUBACK / PUBREC at once; else the application calls acknowledge()
    ping_timeout: float | None = None  # seconds to wait for PINGRESP; None: the keep-alive interval
    connect_properties: Properties = NO_PROPERTIES  # extra CONNECT properties (user properties ...)

    def __post_init__(self) -> None:
        if self.protocol_level not in (MQTT_3_1_1, MQTT_5):
            raise ValueError(f"protocol_level must be 4 (3.1.1) or 5, not {self.protocol_level!r}")
        if not 0 <= self.keep_alive <= 0xFFFF:
            raise ValueError("keep_alive must be 0..65535 seconds")
        if not 1 <= self.receive_maximum <= 0xFFFF or self.max_inflight < 1:
            raise ValueError("receive_maximum must be 1..65535 and max_inflight at least 1")


class ClientState(enum.Enum):
    DISCONNECTED = 1  # no network connection
    CONNECTING = 2  # CONNECT queued, no CONNACK yet
    CONNECTED = 3
    CLOSING = 4  # the connection must close once the output taken so far is written


class OutgoingMessage:
    """A PUBLISH the application asked for, from `publish` to its acknowledgement. ``fixed_id`` is a
    packet id the application chose (0: allocate one when sent); ``dup`` sets DUP on the first send."""

    __slots__ = (
        "dup",
        "fixed_id",
        "packet_id",
        "payload",
        "properties",
        "qos",
        "retain",
        "state",
        "token",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties,
        token: object,
        fixed_id: int = 0,
        dup: bool = False,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.token = token
        self.fixed_id = fixed_id
        self.dup = dup
        self.packet_id = 0
        self.state = FlowState.QUEUED


# --- events for the application ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """CONNACK accepted the connection. ``session_present`` tells whether the server kept our session."""

    connack: ConnAck

    @property
    def session_present(self) -> bool:
        return self.connack.session_present


@dataclass(frozen=True, slots=True)
class ConnectionRefused:
    """CONNACK refused the connection (3.1.1 return code or 5.0 reason code >= 0x80)."""

    connack: ConnAck

    @property
    def reason_code(self) -> int:
        return self.connack.reason_code


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """An application message from the server; ``publish.topic`` is resolved from a topic alias.
    With ``auto_acknowledge`` off, call ``acknowledge(publish.packet_id)`` for QoS 1/2."""

    publish: Publish


@dataclass(frozen=True, slots=True)
class PublishAcknowledged:
    """The end of an outbound QoS 1/2 flow: PUBACK, PUBCOMP, or a PUBREC with a failure reason code.
    ``token`` is what was given to `publish`."""

    token: object
    qos: int
    packet_id: int
    reason_code: int

    @property
    def success(self) -> bool:
        return self.reason_code < 0x80


@dataclass(frozen=True, slots=True)
class SubscribeAcknowledged:
    suback: SubAck


@dataclass(frozen=True, slots=True)
class UnsubscribeAcknowledged:
    unsuback: UnsubAck


@dataclass(frozen=True, slots=True)
class DisconnectReceived:
    """The server sent DISCONNECT (MQTT 5): the connection is over."""

    disconnect: Disconnect


@dataclass(frozen=True, slots=True)
class KeepAliveTimeout:
    """No PINGRESP came in time: the connection is to be considered broken (§3.1.2.10, §4.13)."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The server broke the protocol; on MQTT 5 a DISCONNECT with ``error.reason_code`` is queued."""

    error: ProtocolError


Event = (
    Connected
    | ConnectionRefused
    | MessageReceived
    | PublishAcknowledged
    | SubscribeAcknowledged
    | UnsubscribeAcknowledged
    | DisconnectReceived
    | KeepAliveTimeout
    | ProtocolViolation
)


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
        self.protocol_level = options.protocol_level
        self.decoder = PacketDecoder(role="client", protocol_level=options.protocol_level)
        # The session (§4.1, client side): outbound QoS 1/2 messages in flight by packet id in the
        # order first sent (the order they are resent in), and the inbound QoS 2 packet ids PUBREC'd
        # and awaiting PUBREL.
        self.inflight: dict[int, OutgoingMessage] = {}
        self.inbound_qos2: set[int] = set()
        self.queue: deque[OutgoingMessage] = deque()  # published, not yet sent
        # Packet ids chosen by the application for queued messages -> how many queued messages chose
        # each: the allocator leaves them alone, so an id it hands out (SUBSCRIBE ...) cannot collide.
        self._fixed_ids: dict[int, int] = {}
        self._pending_requests: dict[int, type[Subscribe] | type[Unsubscribe]] = {}
        self._unacked_in: dict[int, int] = {}  # inbound QoS 1/2 packet id -> QoS, not yet acknowledged
        self._next_packet_id = 1
        self._control: list[bytes] = []
        self._packets: deque[Packet] = deque()
        self._error: ProtocolError | None = None
        self._events: deque[Event] = deque()
        # What the server told us in CONNACK.
        self.connack: ConnAck | None = None
        self.send_window = min(DEFAULT_RECEIVE_MAXIMUM, options.max_inflight)
        self.keep_alive = options.keep_alive
        self.server_maximum_qos = 2
        self.server_retain_available = True
        self.server_maximum_packet_size = MAX_PACKET_SIZE
        self.assigned_client_id: str | None = None
        self._aliases_in: dict[int, str] = {}
        # Keep-alive bookkeeping: when we last wrote a packet, and when a PINGREQ went unanswered.
        self._last_sent = 0.0
        self._ping_sent_at: float | None = None

    # --- connection lifecycle ----------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self.state is ClientState.CONNECTED

    def connect(self, now: float) -> None:
        """A new network connection is open: queue CONNECT. With Clean Start the session is
        discarded first; its unacknowledged messages are queued again as new ones."""
        if self.state is not ClientState.DISCONNECTED:
            raise RuntimeError(f"connect() while {self.state.name}")
        options = self.options
        if options.clean_start:
            self._discard_session()
        self.decoder = PacketDecoder(
            role="client", protocol_level=options.protocol_level, max_packet_size=options.maximum_packet_size
        )
        self._packets.clear()
        self._error = None
        self._control = []
        self._aliases_in = {}
        self._unacked_in = {}
        self.connack = None
        properties = options.connect_properties
        if options.protocol_level == MQTT_5:
            properties = _replace_properties(
                properties,
                session_expiry_interval=options.session_expiry_interval or None,
                receive_maximum=options.receive_maximum if options.receive_maximum != 65535 else None,
                maximum_packet_size=(
                    options.maximum_packet_size if options.maximum_packet_size < MAX_PACKET_SIZE else None
                ),
                topic_alias_maximum=options.topic_alias_maximum or None,
            )
        connect = Connect(
            client_id=options.client_id,
            protocol_level=options.protocol_level,
            clean_start=options.clean_start,
            keep_alive=options.keep_alive,
            will=options.will,
            username=options.username,
            password=options.password,
            properties=properties,
        )
        self._control.append(encode(connect, options.protocol_level))
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
        self._unacked_in = {}
        self._ping_sent_at = None

    def _discard_session(self) -> None:
        # In-flight messages the server will never acknowledge now go back to the queue, in order,
        # as new messages; a QoS 2 message past PUBREC reached the server, so it is complete.
        requeue = [m for m in self.inflight.values() if m.state is not FlowState.AWAIT_PUBCOMP]
        for message in self.inflight.values():
            if message.state is FlowState.AWAIT_PUBCOMP:
                self._events.append(PublishAcknowledged(message.token, message.qos, message.packet_id, 0))
        self.inflight = {}
        for message in reversed(requeue):
            message.state = FlowState.QUEUED
            message.packet_id = 0
            self._queue_front(message)
        self.inbound_qos2 = set()

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
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
        if not topic or "+" in topic or "#" in topic:
            # [MQTT-3.3.2-2]: the Topic Name in a PUBLISH MUST NOT contain wildcard characters.
            raise ValueError(f"not a valid topic name: {topic!r}")
        if qos == 0 and (packet_id or dup):
            # [MQTT-2.2.1-2]: no packet id with QoS 0; [MQTT-3.3.1-2]: DUP 0 for every QoS 0 message.
            raise ValueError("a QoS 0 message has neither a packet identifier nor DUP")
        if not 0 <= packet_id <= 0xFFFF:
            raise ValueError(f"packet identifier must be 1..65535 (0: allocate), not {packet_id!r}")
        if qos == 0 and self.state is ClientState.DISCONNECTED:
            return False
        if len(self.queue) >= self.options.max_queued_messages:
            return False
        self._queue_back(OutgoingMessage(topic, payload, qos, retain, properties, token, packet_id, dup))
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
        message.state = FlowState.AWAIT_PUBCOMP
        self.inflight[packet_id] = message
        self._control.append(encode(PubRel(packet_id), self.protocol_level))

    def _queue_back(self, message: OutgoingMessage) -> None:
        self.queue.append(message)
        if message.fixed_id:
            self._fixed_ids[message.fixed_id] = self._fixed_ids.get(message.fixed_id, 0) + 1

    def _queue_front(self, message: OutgoingMessage) -> None:
        self.queue.appendleft(message)
        if message.fixed_id:
            self._fixed_ids[message.fixed_id] = self._fixed_ids.get(message.fixed_id, 0) + 1

    def _dequeue(self) -> OutgoingMessage:
        message = self.queue.popleft()
        fixed = message.fixed_id
        if fixed:
            left = self._fixed_ids[fixed] - 1
            if left:
                self._fixed_ids[fixed] = left
            else:
                del self._fixed_ids[fixed]
        return message

    def _head_blocked(self) -> bool:
        """Whether the first queued message cannot go out now: the send window is full, or the packet
        id it chose is still used by another flow or request [MQTT-2.2.1-3]."""
        message = self.queue[0]
        if not message.qos:
            return False
        if len(self.inflight) >= self.send_window:
            return True
        fixed = message.fixed_id
        return bool(fixed) and (fixed in self.inflight or fixed in self._pending_requests)

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
        pid = self._allocate_packet_id()
        self._pending_requests[pid] = kind
        return pid

    def acknowledge(self, packet_id: int, reason_code: int = 0) -> None:
        """Send the PUBACK (QoS 1) or PUBREC (QoS 2) of an inbound message, when ``auto_acknowledge``
        is off: call it once the message is as safe as the application promises."""
        qos = self._unacked_in.pop(packet_id, None)
        if qos is None or self.state is not ClientState.CONNECTED:
            return
        level = self.protocol_level
        if level != MQTT_5:
            reason_code = 0
        if qos == 1:
            self._control.append(encode(PubAck(packet_id, reason_code), level))
        else:
            if reason_code < 0x80:
                self.inbound_qos2.add(packet_id)
            self._control.append(encode(PubRec(packet_id, reason_code), level))

    def _allocate_packet_id(self) -> int:
        """A packet id no outbound flow or request uses [MQTT-2.2.1-3], and no queued message chose."""
        inflight = self.inflight
        requests = self._pending_requests
        fixed = self._fixed_ids
        pid, self._next_packet_id = allocate_packet_id(
            self._next_packet_id, lambda pid: pid in inflight or pid in requests or pid in fixed
        )
        return pid

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
            return self._on_puback(packet)
        if isinstance(packet, PubRec):
            return self._on_pubrec(packet)
        if isinstance(packet, PubRel):
            self._on_pubrel(packet)
        elif isinstance(packet, PubComp):
            return self._on_pubcomp(packet)
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
            self.send_window = min(receive_maximum, options.max_inflight)
            if props.server_keep_alive is not None:
                self.keep_alive = props.server_keep_alive  # [MQTT-3.2.2-21]
            self.server_maximum_qos = 2 if props.maximum_qos is None else props.maximum_qos
            self.server_retain_available = props.retain_available != 0
            if props.maximum_packet_size is not None:
                self.server_maximum_packet_size = props.maximum_packet_size
            if props.assigned_client_identifier is not None:
                self.assigned_client_id = props.assigned_client_identifier
        else:
            self.send_window = options.max_inflight
        if not connack.session_present:
            # The server has no session for us: ours is discarded [MQTT-3.2.2-5] (§4.1 of 3.1.1),
            # and what it had in flight is sent again as new messages.
            self._discard_session()
        else:
            # Resend unacknowledged PUBLISH (DUP set) and PUBREL packets with their original packet
            # ids, in the order first sent [MQTT-4.4.0-1] [MQTT-4.6.0-1].
            level = self.protocol_level
            for pid, message in self.inflight.items():
                if message.state is FlowState.AWAIT_PUBCOMP:
                    self._control.append(encode(PubRel(pid), level))
                else:
                    self._control.append(self._encode_message(message, dup=True))
        return Connected(connack)

    def _on_publish(self, packet: Publish) -> Event | None:
        topic = packet.topic
        alias = packet.properties.topic_alias
        if alias is not None:
            # [MQTT-3.3.2-9] [MQTT-3.3.2-10]: 0 or above our Topic Alias Maximum is an error.
            if not 1 <= alias <= self.options.topic_alias_maximum:
                raise ProtocolError(ReasonCode.TOPIC_ALIAS_INVALID, f"topic alias {alias} out of range")
            if topic:
                self._aliases_in[alias] = topic
            else:
                known = self._aliases_in.get(alias)
                if known is None:
                    raise protocol_violation(f"unknown topic alias {alias}")
                topic = known
                packet = Publish(
                    topic,
                    packet.payload,
                    packet.qos,
                    packet.retain,
                    packet.dup,
                    packet.packet_id,
                    packet.properties,
                )
        qos = packet.qos
        if qos == 0:
            return MessageReceived(packet)
        pid = packet.packet_id
        assert pid is not None
        if qos == 2 and pid in self.inbound_qos2:
            # A resend of a QoS 2 message already PUBREC'd: PUBREC again, deliver nothing again
            # [MQTT-4.3.3-9] (receiver side, Method B is the server's; we use "deliver on PUBLISH").
            self._control.append(encode(PubRec(pid), self.protocol_level))
            return None
        if pid in self._unacked_in:
            return None  # a resend of a message the application has not acknowledged yet
        if len(self._unacked_in) + len(self.inbound_qos2) >= self.options.receive_maximum and (
            self.protocol_level == MQTT_5
        ):
            # The server sent more unacknowledged QoS 1/2 PUBLISH packets than our Receive Maximum
            # [MQTT-3.3.4-9]: DISCONNECT 0x93.
            raise ProtocolError(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "server exceeded our receive maximum")
        self._unacked_in[pid] = qos
        if self.options.auto_acknowledge:
            self.acknowledge(pid)
        return MessageReceived(packet)

    def _on_puback(self, packet: PubAck) -> Event | None:
        message = self.inflight.get(packet.packet_id)
        if message is None or message.state is not FlowState.AWAIT_PUBACK:
            return None  # a late or stray PUBACK changes nothing
        del self.inflight[packet.packet_id]
        return PublishAcknowledged(message.token, 1, packet.packet_id, packet.reason_code)

    def _on_pubrec(self, packet: PubRec) -> Event | None:
        pid = packet.packet_id
        message = self.inflight.get(pid)
        level = self.protocol_level
        if message is None or message.state is FlowState.AWAIT_PUBACK:
            # §4.3.3: a PUBREC for an id we have no QoS 2 flow for: PUBREL 0x92 on 5.0.
            self._control.append(encode(PubRel(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), level))
            return None
        if message.state is FlowState.AWAIT_PUBCOMP:
            self._control.append(encode(PubRel(pid), level))  # our PUBREL was lost with a connection
            return None
        if packet.reason_code >= 0x80:
            # A failed PUBREC ends the flow; the packet id is free again [MQTT-4.3.3-4] (5.0).
            del self.inflight[pid]
            return PublishAcknowledged(message.token, 2, pid, packet.reason_code)
        message.state = FlowState.AWAIT_PUBCOMP
        # The message is no longer needed once PUBREC arrived: only the id stays until PUBCOMP.
        message.payload = b""
        self._control.append(encode(PubRel(pid), level))  # [MQTT-4.3.3-4]
        return None

    def _on_pubrel(self, packet: PubRel) -> None:
        pid = packet.packet_id
        if pid in self.inbound_qos2:
            self.inbound_qos2.discard(pid)
            self._control.append(encode(PubComp(pid), self.protocol_level))  # [MQTT-4.3.3-11]
        else:
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
            self._control.append(encode(PubComp(pid, code), self.protocol_level))

    def _on_pubcomp(self, packet: PubComp) -> Event | None:
        message = self.inflight.get(packet.packet_id)
        if message is None or message.state is not FlowState.AWAIT_PUBCOMP:
            return None
        del self.inflight[packet.packet_id]
        return PublishAcknowledged(message.token, 2, packet.packet_id, packet.reason_code)

    # --- output ------------------------------------------------------------------------------------

    def _encode_message(self, message: OutgoingMessage, dup: bool = False) -> bytes:
        return encode_publish(
            message.topic,
            message.payload,
            qos=message.qos,
            retain=message.retain,
            dup=dup or message.dup,
            packet_id=message.packet_id or None,
            protocol_level=self.protocol_level,
            properties=message.properties,
        )

    def has_output(self) -> bool:
        """Whether `take_output` would return packets now (keep-alive aside)."""
        if self._control:
            return True
        if self.state is not ClientState.CONNECTED or not self.queue:
            return False
        return not self._head_blocked()

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
                if self._head_blocked():
                    break  # in order: nothing overtakes a message that waits
                message = self._dequeue()
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
                    message.packet_id = message.fixed_id or self._allocate_packet_id()
                    message.state = FlowState.AWAIT_PUBACK if qos == 1 else FlowState.AWAIT_PUBREC
                    inflight[message.packet_id] = message
                out.append(self._encode_message(message))
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


def _replace_properties(properties: Properties, **values: int | None) -> Properties:
    """``properties`` with each non-None value of ``values`` set."""
    present = {name: value for name, value in values.items() if value is not None}
    return replace(properties, **present) if present else properties  # type: ignore[arg-type]

"""The server's CONNECT rules (sans-IO): who is accepted with what, wills, and how a refusal or a
protocol violation is answered on each protocol version.

The broker asks, performs the answer, and keeps the state (sessions, timers); the rules live here so
that they can be read in one place and tested without sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgebus.core.message import Message, forwarded_properties
from edgebus.core.server_events import ConnectionLimits
from edgebus.core.session import SESSION_NEVER_EXPIRES
from edgebus.core.topics import is_valid_topic_name
from edgebus.protocol.encoder import encode
from edgebus.protocol.enums import BRIDGE_BIT, MQTT_3_1, MQTT_5, ConnectReturnCode, ReasonCode, session_level
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import ConnAck, Connect, Properties, Will

#: Longest Client Identifier of MQTT 3.1, in characters (§3.1 of the v3.1 spec).
MQTT_3_1_MAX_CLIENT_ID = 23

#: Largest Maximum Packet Size (§3.1.2.11.4); at or above it nothing is announced.
MAX_PACKET_SIZE = 268_435_460


@dataclass(frozen=True, slots=True)
class ServerFeatures:
    """What the server grants beyond the per-connection limits, announced in a v5 CONNACK ([mqtt])."""

    max_keep_alive: int = 65535
    max_session_expiry_interval: int = SESSION_NEVER_EXPIRES
    wildcard_subscriptions: bool = True
    subscription_identifiers: bool = True
    shared_subscriptions: bool = True


@dataclass(frozen=True, slots=True)
class ConnectRefused:
    """Refuse the connection: write ``connack`` (if any) as the last packet, then close [MQTT-3.2.2-7]."""

    connack: bytes | None


@dataclass(frozen=True, slots=True)
class ConnectAccepted:
    """Accept the connection as ``client_id`` with these values; `connack` answers once the broker
    knows whether a session was present."""

    client_id: str
    assigned_client_id: str | None  # set when the server chose the id (v5 tells the client)
    session_expiry_interval: int
    keep_alive: int
    server_keep_alive: int | None  # the client's Keep Alive overridden (v5) [MQTT-3.2.2-21]
    requested_session_expiry: int

    def connack(
        self, session_present: bool, level: int, limits: ConnectionLimits, features: ServerFeatures
    ) -> bytes:
        """The CONNACK (§3.2): on v5 it announces every limit that differs from the default."""
        if level != MQTT_5:
            return encode(ConnAck(session_present, ConnectReturnCode.ACCEPTED), level)
        expiry = self.session_expiry_interval
        props = Properties(
            session_expiry_interval=expiry if expiry != self.requested_session_expiry else None,
            assigned_client_identifier=self.assigned_client_id,
            server_keep_alive=self.server_keep_alive,
            receive_maximum=limits.receive_maximum if limits.receive_maximum != 65535 else None,
            maximum_qos=limits.max_qos if limits.max_qos < 2 else None,
            retain_available=None if limits.retain_available else 0,
            maximum_packet_size=limits.max_packet_size if limits.max_packet_size < MAX_PACKET_SIZE else None,
            topic_alias_maximum=limits.topic_alias_maximum or None,
            wildcard_subscription_available=None if features.wildcard_subscriptions else 0,
            subscription_identifier_available=None if features.subscription_identifiers else 0,
            shared_subscription_available=None if features.shared_subscriptions else 0,
        )
        return encode(ConnAck(session_present, ReasonCode.SUCCESS, props), MQTT_5)


def decide_connect(
    connect: Connect, features: ServerFeatures, new_client_id: Callable[[], str]
) -> ConnectAccepted | ConnectRefused:
    """Apply the CONNECT rules that need no broker state. ``new_client_id`` makes an id for a client
    that sent none."""
    level = session_level(connect.protocol_level)  # the level the CONNACK is written in
    v5 = level == MQTT_5
    props = connect.properties
    if v5 and props.authentication_method is not None:
        # No enhanced authentication method is configured [MQTT-4.12.0-1]: 0x8C.
        return ConnectRefused(encode(ConnAck(False, ReasonCode.BAD_AUTHENTICATION_METHOD), level))
    will = connect.will
    if will is not None and not is_valid_topic_name(will.topic):
        # Wildcards (or nothing) in the Will Topic: not a Topic Name [MQTT-4.7.1-1], [MQTT-4.7.3-1];
        # 3.1.1 has no return code for it, so the connection just closes.
        return ConnectRefused(encode(ConnAck(False, ReasonCode.TOPIC_NAME_INVALID), level) if v5 else None)
    client_id = connect.client_id
    assigned: str | None = None
    if connect.protocol_level & ~BRIDGE_BIT == MQTT_3_1 and not 0 < len(client_id) <= MQTT_3_1_MAX_CLIENT_ID:
        # 3.1 (§3.1 of the v3.1 spec): the Client Identifier is 1 to 23 characters, and 0x02
        # "Identifier rejected" answers any other; 3.1 has no server-assigned identifier.
        return ConnectRefused(encode(ConnAck(False, ConnectReturnCode.IDENTIFIER_REJECTED), level))
    if not client_id:
        if not v5 and not connect.clean_start:
            # [MQTT-3.1.3-8]: a zero-length id needs Clean Session 1 on 3.1.1; else 0x02.
            return ConnectRefused(encode(ConnAck(False, ConnectReturnCode.IDENTIFIER_REJECTED), level))
        client_id = new_client_id()  # [MQTT-3.1.3-6]
        if v5:
            assigned = client_id  # [MQTT-3.2.2-16]
    requested = props.session_expiry_interval or 0
    if v5:
        expiry = min(requested, features.max_session_expiry_interval)
    else:
        expiry = 0 if connect.clean_start else SESSION_NEVER_EXPIRES
    keep_alive = connect.keep_alive
    server_keep_alive: int | None = None
    if v5 and keep_alive > features.max_keep_alive:
        keep_alive = server_keep_alive = features.max_keep_alive  # [MQTT-3.2.2-21]
    return ConnectAccepted(client_id, assigned, expiry, keep_alive, server_keep_alive, requested)


def within_client_maximum(
    connect: Connect,
    decision: ConnectAccepted | ConnectRefused,
    limits: ConnectionLimits,
    features: ServerFeatures,
) -> ConnectAccepted | ConnectRefused:
    """``decision``, unless its CONNACK is larger than the client's Maximum Packet Size: the server MUST
    NOT send it [MQTT-3.1.2-24], so the connection closes without one."""
    maximum = connect.properties.maximum_packet_size
    if maximum is None:
        return decision
    if isinstance(decision, ConnectRefused):
        connack = decision.connack
    else:  # as long whether a session is present or not
        connack = decision.connack(False, connect.protocol_level, limits, features)
    return ConnectRefused(None) if connack is not None and len(connack) > maximum else decision


def refusal(level: int, reason: ReasonCode, return_code: ConnectReturnCode) -> bytes:
    """A CONNACK refusing the connection: ``reason`` on v5, ``return_code`` on 3.1.1."""
    return encode(ConnAck(False, reason if level == MQTT_5 else return_code), level)


def answer_violation(
    error: ProtocolError, accepted: bool, decoded_level: int | None
) -> ConnectRefused | None:
    """How a protocol violation ends the connection. Before the CONNACK: a refusing CONNACK
    (ConnectRefused); after it: None, meaning DISCONNECT with ``error.reason_code`` on v5 and a plain
    close on 3.1.1 [MQTT-4.13.1-1], [MQTT-4.13.2-1]."""
    if accepted:
        return None
    if error.reason_code is ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
        # [MQTT-3.1.2-2]: CONNACK 0x01 on 3.1.1; a v5-or-later level gets 0x84.
        level = decoded_level or 4
        if level >= MQTT_5:
            return ConnectRefused(encode(ConnAck(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION), MQTT_5))
        return ConnectRefused(encode(ConnAck(False, ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION), 4))
    if decoded_level == MQTT_5:
        # A bad packet before the CONNACK: a v5 client is told why in a CONNACK [MQTT-4.13.1-1].
        return ConnectRefused(encode(ConnAck(False, error.reason_code), MQTT_5))
    return None


def will_delay(will: Will, level: int, session_expiry_interval: int = SESSION_NEVER_EXPIRES) -> int:
    """Seconds to hold a Will Message after its connection ended: the Will Delay Interval (v5), but
    never past the session's end, which sends it too [MQTT-3.1.3-9]."""
    delay = (will.properties.will_delay_interval or 0) if level == MQTT_5 else 0
    return min(delay, session_expiry_interval)


def will_message(will: Will, client_id: str, level: int, now: float) -> Message:
    """The application message a Will becomes when it is published (§3.1.2.5)."""
    props = will.properties
    expiry = props.message_expiry_interval if level == MQTT_5 else None
    return Message(
        will.topic,
        will.payload,
        will.qos,
        will.retain,
        forwarded_properties(props) if level == MQTT_5 else Properties(),
        publisher_id=client_id,
        expiry_deadline=None if expiry is None else now + expiry,
    )

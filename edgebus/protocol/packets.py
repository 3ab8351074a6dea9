"""MQTT control packets as frozen, slotted dataclasses named as in the specification.

One set of classes serves both versions: on MQTT 3.1.1 the ``properties`` are always empty and
reason codes carry the 3.1.1 return codes where the packet has one (CONNACK, SUBACK).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgebus.protocol.enums import MQTT_5, PacketType, RetainHandling

UserProperties = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Properties:
    """MQTT 5.0 properties (§2.2.2.2). ``None`` means absent. Which property a packet may carry is
    checked by the codec (edgebus.protocol.properties). User properties keep their order and may
    repeat names; a PUBLISH may carry several subscription identifiers."""

    payload_format_indicator: int | None = None  # 0x01 byte
    message_expiry_interval: int | None = None  # 0x02 four-byte integer, seconds
    content_type: str | None = None  # 0x03
    response_topic: str | None = None  # 0x08
    correlation_data: bytes | None = None  # 0x09
    subscription_identifiers: tuple[int, ...] = ()  # 0x0B variable byte integer(s)
    session_expiry_interval: int | None = None  # 0x11 four-byte integer, seconds
    assigned_client_identifier: str | None = None  # 0x12
    server_keep_alive: int | None = None  # 0x13 two-byte integer, seconds
    authentication_method: str | None = None  # 0x15
    authentication_data: bytes | None = None  # 0x16
    request_problem_information: int | None = None  # 0x17 byte
    will_delay_interval: int | None = None  # 0x18 four-byte integer, seconds
    request_response_information: int | None = None  # 0x19 byte
    response_information: str | None = None  # 0x1A
    server_reference: str | None = None  # 0x1C
    reason_string: str | None = None  # 0x1F
    receive_maximum: int | None = None  # 0x21 two-byte integer
    topic_alias_maximum: int | None = None  # 0x22 two-byte integer
    topic_alias: int | None = None  # 0x23 two-byte integer
    maximum_qos: int | None = None  # 0x24 byte
    retain_available: int | None = None  # 0x25 byte
    user_properties: UserProperties = ()  # 0x26 UTF-8 string pairs
    maximum_packet_size: int | None = None  # 0x27 four-byte integer
    wildcard_subscription_available: int | None = None  # 0x28 byte
    subscription_identifier_available: int | None = None  # 0x29 byte
    shared_subscription_available: int | None = None  # 0x2A byte

    def __repr__(self) -> str:
        # Only the properties present: a full repr of 27 fields drowns logs and test output.
        shown = []
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None and value != ():
                shown.append(f"{name}={value!r}")
        return f"Properties({', '.join(shown)})"


NO_PROPERTIES = Properties()


@dataclass(frozen=True, slots=True)
class Will:
    """The Will Message of a CONNECT (§3.1.2.5, §3.1.3.2-3)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connect:
    packet_type = PacketType.CONNECT
    client_id: str
    protocol_level: int = MQTT_5
    protocol_name: str = "MQTT"
    clean_start: bool = True  # "Clean Session" on 3.1.1
    keep_alive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class ConnAck:
    packet_type = PacketType.CONNACK
    session_present: bool = False
    reason_code: int = 0  # ReasonCode on 5.0, ConnectReturnCode on 3.1.1
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Publish:
    packet_type = PacketType.PUBLISH
    topic: str  # may be "" on 5.0 when a topic alias carries it
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # present iff qos > 0
    properties: Properties = NO_PROPERTIES
    # The topic as it came on the wire (length prefix and UTF-8), set by the decoder: what a broker
    # writes to every subscriber, so it need not encode the topic again. Not part of the packet's value.
    topic_wire: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_type = PacketType.PUBACK
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class PubRec:
    packet_type = PacketType.PUBREC
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class PubRel:
    packet_type = PacketType.PUBREL
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class PubComp:
    packet_type = PacketType.PUBCOMP
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Subscription:
    """One Topic Filter with its Subscription Options (§3.8.3.1)."""

    topic_filter: str
    qos: int = 0  # Maximum QoS
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: RetainHandling = RetainHandling.SEND_ON_SUBSCRIBE


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_type = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_type = PacketType.SUBACK
    packet_id: int
    reason_codes: tuple[int, ...]  # granted QoS or failure code, one per subscription
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_type = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class UnsubAck:
    packet_type = PacketType.UNSUBACK
    packet_id: int
    reason_codes: tuple[int, ...] = ()  # 5.0 only; 3.1.1 UNSUBACK has no payload
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class PingReq:
    packet_type = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class PingResp:
    packet_type = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    packet_type = PacketType.DISCONNECT
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Auth:
    """MQTT 5.0 only (§3.15)."""

    packet_type = PacketType.AUTH
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
    | Auth
)

__all__ = [
    "NO_PROPERTIES",
    "Auth",
    "ConnAck",
    "Connect",
    "Disconnect",
    "Packet",
    "PingReq",
    "PingResp",
    "Properties",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "UserProperties",
    "Will",
]

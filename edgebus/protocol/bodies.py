"""The body (variable header and payload) of every control packet but PUBLISH, decoded and validated.

`PacketDecoder` (edgebus.protocol.decoder) frames the packets, judges their first byte and keeps the
connection's state; it decodes PUBLISH, the hot path, inline. Everything else comes here: each function
gets the packet's first byte and its body ``view[body:end]`` and returns the packet or raises
`ProtocolError`. CONNECT and CONNACK also change the decoder's state (the protocol level, the handshake
seen), so the decoder calls their functions itself; the others are looked up in `BODY_DECODERS`.
"""

from __future__ import annotations

from collections.abc import Callable

from edgebus.protocol.enums import (
    BRIDGE_BIT,
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    ConnectReturnCode,
    PacketType,
    ReasonCode,
    RetainHandling,
)
from edgebus.protocol.errors import ProtocolError, malformed, protocol_violation
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
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from edgebus.protocol.primitives import read_binary, read_string, read_u8, read_u16
from edgebus.protocol.properties import read_properties

__all__ = [
    "BODY_DECODERS",
    "REASON_CODES",
    "SUBACK_RETURN_CODES_3_1_1",
    "BodyDecoder",
    "decode_connack",
    "decode_connect",
    "read_protocol",
]

R = ReasonCode
# The code tables stay compact, a few names a line, as the spec lists them.
# fmt: off
#: MQTT 5.0 reason codes each packet may carry (§3.2.2.2, §3.4.2.1, §3.5.2.1, §3.6.2.1, §3.7.2.1,
#: §3.9.3, §3.11.3, §3.14.2.1, §3.15.2.1). Any other value is a Malformed Packet here.
REASON_CODES: dict[PacketType, frozenset[int]] = {
    PacketType.CONNACK: frozenset(
        {
            R.SUCCESS, R.UNSPECIFIED_ERROR, R.MALFORMED_PACKET, R.PROTOCOL_ERROR,
            R.IMPLEMENTATION_SPECIFIC_ERROR, R.UNSUPPORTED_PROTOCOL_VERSION, R.CLIENT_IDENTIFIER_NOT_VALID,
            R.BAD_USER_NAME_OR_PASSWORD, R.NOT_AUTHORIZED, R.SERVER_UNAVAILABLE, R.SERVER_BUSY, R.BANNED,
            R.BAD_AUTHENTICATION_METHOD, R.TOPIC_NAME_INVALID, R.PACKET_TOO_LARGE, R.QUOTA_EXCEEDED,
            R.PAYLOAD_FORMAT_INVALID, R.RETAIN_NOT_SUPPORTED, R.QOS_NOT_SUPPORTED, R.USE_ANOTHER_SERVER,
            R.SERVER_MOVED, R.CONNECTION_RATE_EXCEEDED,
        }
    ),
    PacketType.PUBACK: frozenset(
        {
            R.SUCCESS, R.NO_MATCHING_SUBSCRIBERS, R.UNSPECIFIED_ERROR, R.IMPLEMENTATION_SPECIFIC_ERROR,
            R.NOT_AUTHORIZED, R.TOPIC_NAME_INVALID, R.PACKET_IDENTIFIER_IN_USE, R.QUOTA_EXCEEDED,
            R.PAYLOAD_FORMAT_INVALID,
        }
    ),
    PacketType.PUBREL: frozenset({R.SUCCESS, R.PACKET_IDENTIFIER_NOT_FOUND}),
    PacketType.SUBACK: frozenset(
        {
            R.SUCCESS, R.GRANTED_QOS_1, R.GRANTED_QOS_2, R.UNSPECIFIED_ERROR, R.IMPLEMENTATION_SPECIFIC_ERROR,
            R.NOT_AUTHORIZED, R.TOPIC_FILTER_INVALID, R.PACKET_IDENTIFIER_IN_USE, R.QUOTA_EXCEEDED,
            R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        }
    ),
    PacketType.UNSUBACK: frozenset(
        {
            R.SUCCESS, R.NO_SUBSCRIPTION_EXISTED, R.UNSPECIFIED_ERROR, R.IMPLEMENTATION_SPECIFIC_ERROR,
            R.NOT_AUTHORIZED, R.TOPIC_FILTER_INVALID, R.PACKET_IDENTIFIER_IN_USE,
        }
    ),
    PacketType.DISCONNECT: frozenset(
        {
            R.SUCCESS, R.DISCONNECT_WITH_WILL_MESSAGE, R.UNSPECIFIED_ERROR, R.MALFORMED_PACKET,
            R.PROTOCOL_ERROR, R.IMPLEMENTATION_SPECIFIC_ERROR, R.NOT_AUTHORIZED, R.SERVER_BUSY,
            R.SERVER_SHUTTING_DOWN, R.KEEP_ALIVE_TIMEOUT, R.SESSION_TAKEN_OVER, R.TOPIC_FILTER_INVALID,
            R.TOPIC_NAME_INVALID, R.RECEIVE_MAXIMUM_EXCEEDED, R.TOPIC_ALIAS_INVALID, R.PACKET_TOO_LARGE,
            R.MESSAGE_RATE_TOO_HIGH, R.QUOTA_EXCEEDED, R.ADMINISTRATIVE_ACTION, R.PAYLOAD_FORMAT_INVALID,
            R.RETAIN_NOT_SUPPORTED, R.QOS_NOT_SUPPORTED, R.USE_ANOTHER_SERVER, R.SERVER_MOVED,
            R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, R.CONNECTION_RATE_EXCEEDED, R.MAXIMUM_CONNECT_TIME,
            R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED, R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        }
    ),
    PacketType.AUTH: frozenset({R.SUCCESS, R.CONTINUE_AUTHENTICATION, R.RE_AUTHENTICATE}),
}
REASON_CODES[PacketType.PUBREC] = REASON_CODES[PacketType.PUBACK]  # §3.5.2.1 lists the PUBACK set
REASON_CODES[PacketType.PUBCOMP] = REASON_CODES[PacketType.PUBREL]  # §3.7.2.1 lists the PUBREL set

#: 3.1.1 SUBACK return codes: granted QoS 0-2 or 0x80 Failure [MQTT-3.9.3-2].
SUBACK_RETURN_CODES_3_1_1 = frozenset({0x00, 0x01, 0x02, 0x80})

_REASON_BY_VALUE: dict[int, ReasonCode] = {int(code): code for code in ReasonCode}
_CONNECT_RETURN_BY_VALUE: dict[int, ConnectReturnCode] = {int(code): code for code in ConnectReturnCode}
RETAIN_HANDLING_RESERVED = 3
_RETAIN_HANDLING = (RetainHandling.SEND_ON_SUBSCRIBE, RetainHandling.SEND_IF_NEW_SUBSCRIPTION,
                    RetainHandling.DO_NOT_SEND)
# fmt: on
_ACK_CLASSES: dict[int, type[PubAck | PubRec | PubRel | PubComp]] = {
    PacketType.PUBACK: PubAck,
    PacketType.PUBREC: PubRec,
    PacketType.PUBREL: PubRel,
    PacketType.PUBCOMP: PubComp,
}
_PACKET_TYPES = {int(packet_type): packet_type for packet_type in PacketType}


# --- CONNECT and CONNACK: called by the decoder, which keeps the handshake state ---------------------------


def read_protocol(view: bytes, body: int, end: int) -> tuple[str, int, int]:
    """A CONNECT's protocol name and level byte (bridge bit included), and where its flags start
    (§3.1.2.1, §3.1.2.2; "MQIsdp" level 3 is MQTT 3.1)."""
    name, p = read_string(view, body, end)
    level, p = read_u8(view, p, end)
    base = level & ~BRIDGE_BIT
    if name == "MQTT":
        if base in (MQTT_3_1_1, MQTT_5):
            return name, level, p
    elif name != "MQIsdp":
        raise malformed(f"protocol name {name!r} is not 'MQTT' [MQTT-3.1.2-1]")
    elif base == MQTT_3_1:
        return name, level, p
    elif base in (MQTT_3_1_1, MQTT_5):
        raise malformed(f"protocol name {name!r} with level {base} [MQTT-3.1.2-1]")
    # [MQTT-3.1.2-2]: the server answers CONNACK 0x01 (3.1.1) / 0x84 (5.0) and closes.
    raise ProtocolError(
        ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
        f"unsupported protocol level {level} ({name!r}) [MQTT-3.1.2-2]",
    )


def decode_connect(view: bytes, p: int, end: int, name: str, level: int) -> Connect:
    """The rest of a CONNECT, from its flags on (``read_protocol`` read the name and level)."""
    flags, p = read_u8(view, p, end)
    if flags & 0x01:
        raise malformed("CONNECT reserved flag is set [MQTT-3.1.2-3]")
    will_flag = flags & 0x04
    will_qos = (flags >> 3) & 3
    will_retain = flags & 0x20
    password_flag = flags & 0x40
    username_flag = flags & 0x80
    if not will_flag:
        if will_qos:
            # 5.0 [MQTT-3.1.2-11], 3.1.1 [MQTT-3.1.2-13]
            raise malformed("Will QoS set without the Will Flag [MQTT-3.1.2-11]")
        if will_retain:
            # 5.0 [MQTT-3.1.2-13], 3.1.1 [MQTT-3.1.2-15]
            raise malformed("Will Retain set without the Will Flag [MQTT-3.1.2-13]")
    elif will_qos == 3:
        # 5.0 [MQTT-3.1.2-12], 3.1.1 [MQTT-3.1.2-14]
        raise malformed("Will QoS 3 [MQTT-3.1.2-12]")
    base = level & ~BRIDGE_BIT
    if base == MQTT_3_1_1 and password_flag and not username_flag:
        raise malformed("3.1.1 CONNECT with a password and no user name [MQTT-3.1.2-22]")
    keep_alive, p = read_u16(view, p, end)
    properties = NO_PROPERTIES
    if base == MQTT_5:
        properties, p = read_properties(view, p, end, PacketType.CONNECT)
    client_id, p = read_string(view, p, end)
    will = None
    if will_flag:
        will_properties = NO_PROPERTIES
        if base == MQTT_5:
            will_properties, p = read_properties(view, p, end, "will")
        will_topic, p = read_string(view, p, end)
        will_payload, p = read_binary(view, p, end)
        will = Will(will_topic, will_payload, will_qos, will_retain != 0, will_properties)
    username = password = None
    if username_flag:
        username, p = read_string(view, p, end)
    if password_flag:
        password, p = read_binary(view, p, end)
    _expect_end(p, end, "CONNECT")
    return Connect(
        client_id=client_id,
        protocol_level=level,
        protocol_name=name,
        clean_start=flags & 0x02 != 0,
        keep_alive=keep_alive,
        will=will,
        username=username,
        password=password,
        properties=properties,
    )


def decode_connack(view: bytes, body: int, end: int, level: int) -> ConnAck:
    """A CONNACK of protocol ``level`` (§3.2; 3.1.1 return codes, 5.0 reason codes and properties)."""
    flags, p = read_u8(view, body, end)
    if flags & 0xFE:
        raise malformed("CONNACK reserved acknowledge flags are set [MQTT-3.2.2-1]")
    code, p = read_u8(view, p, end)
    properties = NO_PROPERTIES
    reason_code: int
    if level == MQTT_5:
        if code not in REASON_CODES[PacketType.CONNACK]:
            raise malformed(f"CONNACK reason code 0x{code:02X} is not defined (§3.2.2.2)")
        reason_code = _REASON_BY_VALUE[code]
        properties, p = read_properties(view, p, end, PacketType.CONNACK)
    else:
        if code not in _CONNECT_RETURN_BY_VALUE:
            raise malformed(f"CONNACK return code {code} is reserved (§3.2.2.3 of 3.1.1)")
        reason_code = _CONNECT_RETURN_BY_VALUE[code]
    _expect_end(p, end, "CONNACK")
    return ConnAck(flags == 1, reason_code, properties)


# --- the others: (first byte, view, body start, packet end, protocol is 5.0) -> packet ---------------------


def _decode_reserved(first: int, view: bytes, body: int, end: int, v5: bool) -> Packet:
    raise malformed(f"unexpected packet type {first >> 4}")  # unreachable: kept for the table


#: The short acknowledgement (Remaining Length 2), the common case of every QoS 1/2 flow, is made without
#: the frozen dataclass's __init__ (object.__setattr__ per field, 40 % of the decoding): its class and the
#: member descriptors' setters of packet_id, reason_code, properties, by type nibble.
_Setter = Callable[[object, object], None]
_SHORT_ACKS: dict[int, tuple[type[PubAck | PubRec | PubRel | PubComp], tuple[_Setter, ...]]] = {
    int(cls.packet_type): (
        cls,
        tuple(getattr(cls, name).__set__ for name in ("packet_id", "reason_code", "properties")),
    )
    for cls in (PubAck, PubRec, PubRel, PubComp)
}


def _decode_ack(first: int, view: bytes, body: int, end: int, v5: bool) -> PubAck | PubRec | PubRel | PubComp:
    if end - body == 2:
        packet_id = (view[body] << 8) | view[body + 1]
        if packet_id:
            # 3.1.1 always; 5.0 short form: Remaining Length 2 means Success, no properties (§3.4.2.1).
            cls, (set_packet_id, set_reason_code, set_properties) = _SHORT_ACKS[first >> 4]
            ack = cls.__new__(cls)
            set_packet_id(ack, packet_id)
            set_reason_code(ack, 0)
            set_properties(ack, NO_PROPERTIES)
            return ack
    packet_type = _PACKET_TYPES[first >> 4]
    packet_id, p = read_u16(view, body, end)
    if packet_id == 0:
        # Acknowledges a PUBLISH / PUBREC, whose identifier is never 0 [MQTT-2.2.1-3].
        raise protocol_violation(f"{packet_type.name} with packet identifier 0 [MQTT-2.2.1-3]")
    cls = _ACK_CLASSES[packet_type]
    if p == end:
        # 3.1.1 always; 5.0 short form: Remaining Length 2 means Success, no properties (§3.4.2.1).
        return cls(packet_id)
    if not v5:
        raise malformed(f"3.1.1 {packet_type.name} with a Remaining Length other than 2")
    code = view[p]
    if code not in REASON_CODES[packet_type]:
        raise malformed(f"{packet_type.name} reason code 0x{code:02X} is not defined (§3.4.2.1)")
    properties = NO_PROPERTIES
    p += 1
    if p < end:
        # A Remaining Length below 4 means no property length: properties are empty (§3.4.2.2.1).
        properties, p = read_properties(view, p, end, packet_type)
        _expect_end(p, end, packet_type.name)
    return cls(packet_id, _REASON_BY_VALUE[code], properties)


def _decode_subscribe(first: int, view: bytes, body: int, end: int, v5: bool) -> Subscribe:
    packet_id, p = read_u16(view, body, end)
    if packet_id == 0:
        raise protocol_violation("SUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]")
    properties = NO_PROPERTIES
    if v5:
        properties, p = read_properties(view, p, end, PacketType.SUBSCRIBE)
    subscriptions: list[Subscription] = []
    while p < end:
        topic_filter, p = read_string(view, p, end)
        options, p = read_u8(view, p, end)
        qos = options & 0x03
        if not v5:
            if options & 0xFC or qos == 3:
                raise malformed(f"3.1.1 subscription options 0x{options:02X} [MQTT-3-8.3-4]")
            subscriptions.append(Subscription(topic_filter, qos))
            continue
        if options & 0xC0:
            raise malformed("reserved subscription option bits 6-7 set [MQTT-3.8.3-5]")
        if qos == 3:
            # 5.0 §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
            raise protocol_violation("subscription with Maximum QoS 3 (§3.8.3.1)")
        retain_handling = (options >> 4) & 0x03
        if retain_handling == RETAIN_HANDLING_RESERVED:
            raise protocol_violation("subscription with Retain Handling 3 (§3.8.3.1)")
        no_local, retain_as_published = options & 0x04 != 0, options & 0x08 != 0
        handling = _RETAIN_HANDLING[retain_handling]
        subscriptions.append(Subscription(topic_filter, qos, no_local, retain_as_published, handling))
    if not subscriptions:
        raise protocol_violation("SUBSCRIBE without a topic filter [MQTT-3.8.3-3]")
    return Subscribe(packet_id, tuple(subscriptions), properties)


def _decode_suback(first: int, view: bytes, body: int, end: int, v5: bool) -> SubAck:
    packet_id, p = read_u16(view, body, end)
    properties = NO_PROPERTIES
    if v5:
        properties, p = read_properties(view, p, end, PacketType.SUBACK)
        allowed = REASON_CODES[PacketType.SUBACK]
        codes: tuple[int, ...] = tuple(_REASON_BY_VALUE.get(code, code) for code in view[p:end])
    else:
        allowed = SUBACK_RETURN_CODES_3_1_1
        codes = tuple(view[p:end])
    for code in codes:
        if code not in allowed:
            # [MQTT-3.9.3-2] of 3.1.1; §3.9.3 of 5.0
            raise malformed(f"SUBACK reason code 0x{code:02X} is not defined [MQTT-3.9.3-2]")
    if not codes:
        raise protocol_violation("SUBACK without a reason code (§3.9.3)")
    return SubAck(packet_id, codes, properties)


def _decode_unsubscribe(first: int, view: bytes, body: int, end: int, v5: bool) -> Unsubscribe:
    packet_id, p = read_u16(view, body, end)
    if packet_id == 0:
        raise protocol_violation("UNSUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]")
    properties = NO_PROPERTIES
    if v5:
        properties, p = read_properties(view, p, end, PacketType.UNSUBSCRIBE)
    topic_filters: list[str] = []
    while p < end:
        topic_filter, p = read_string(view, p, end)
        topic_filters.append(topic_filter)
    if not topic_filters:
        raise protocol_violation("UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]")
    return Unsubscribe(packet_id, tuple(topic_filters), properties)


def _decode_unsuback(first: int, view: bytes, body: int, end: int, v5: bool) -> UnsubAck:
    packet_id, p = read_u16(view, body, end)
    if not v5:
        _expect_end(p, end, "3.1.1 UNSUBACK")  # no payload in 3.1.1 (§3.11.3 of 3.1.1)
        return UnsubAck(packet_id)
    properties, p = read_properties(view, p, end, PacketType.UNSUBACK)
    allowed = REASON_CODES[PacketType.UNSUBACK]
    codes: list[int] = []
    for code in view[p:end]:
        if code not in allowed:
            raise malformed(f"UNSUBACK reason code 0x{code:02X} is not defined (§3.11.3)")
        codes.append(_REASON_BY_VALUE[code])
    if not codes:
        raise protocol_violation("UNSUBACK without a reason code (§3.11.3)")
    return UnsubAck(packet_id, tuple(codes), properties)


def _decode_ping(first: int, view: bytes, body: int, end: int, v5: bool) -> PingReq | PingResp:
    _expect_end(body, end, "PINGREQ/PINGRESP")  # no variable header, no payload (§3.12, §3.13)
    return PingReq() if first >> 4 == PacketType.PINGREQ else PingResp()


def _decode_disconnect(first: int, view: bytes, body: int, end: int, v5: bool) -> Disconnect:
    if not v5:
        _expect_end(body, end, "3.1.1 DISCONNECT")  # no variable header (§3.14 of 3.1.1)
        return Disconnect()
    if body == end:
        return Disconnect()  # Remaining Length 0: Normal disconnection, no properties (§3.14.2.1)
    code = view[body]
    if code not in REASON_CODES[PacketType.DISCONNECT]:
        raise malformed(f"DISCONNECT reason code 0x{code:02X} is not defined (§3.14.2.1)")
    properties: Properties = NO_PROPERTIES
    if body + 1 < end:
        # Remaining Length below 2: no property length (§3.14.2.2.1).
        properties, p = read_properties(view, body + 1, end, PacketType.DISCONNECT)
        _expect_end(p, end, "DISCONNECT")
    return Disconnect(_REASON_BY_VALUE[code], properties)


def _decode_auth(first: int, view: bytes, body: int, end: int, v5: bool) -> Auth:
    if body == end:
        return Auth()  # Remaining Length 0: Success and no properties (§3.15.2.1)
    code = view[body]
    if code not in REASON_CODES[PacketType.AUTH]:
        raise malformed(f"AUTH reason code 0x{code:02X} is not defined [MQTT-3.15.2-1]")
    # Unlike DISCONNECT, AUTH has only the one short form: a reason code comes with a property length.
    properties, p = read_properties(view, body + 1, end, PacketType.AUTH)
    _expect_end(p, end, "AUTH")
    return Auth(_REASON_BY_VALUE[code], properties)


def _expect_end(pos: int, end: int, what: str) -> None:
    """The packet's contents end exactly where its Remaining Length says."""
    if pos != end:
        raise malformed(f"{what}: Remaining Length is longer than its contents")


#: A body decoder: (first byte, view, body start, packet end, protocol level is 5.0) -> packet.
BodyDecoder = Callable[[int, bytes, int, int, bool], Packet]

#: Body decoders by packet type (the high nibble of the first byte). A table of plain functions shared
#: by every connection: a per-instance tuple of bound methods cost ~1 KiB per connection.
BODY_DECODERS: tuple[BodyDecoder, ...] = (
    _decode_reserved,  # 0 never gets here: the first-byte table rejects it
    _decode_reserved,  # CONNECT: the decoder calls read_protocol and decode_connect itself
    _decode_reserved,  # CONNACK: the decoder calls decode_connack itself
    _decode_reserved,  # PUBLISH is decoded inline in PacketDecoder._decode_packets
    _decode_ack,
    _decode_ack,
    _decode_ack,
    _decode_ack,
    _decode_subscribe,
    _decode_suback,
    _decode_unsubscribe,
    _decode_unsuback,
    _decode_ping,
    _decode_ping,
    _decode_disconnect,
    _decode_auth,
)

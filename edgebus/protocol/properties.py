"""MQTT 5.0 properties (§2.2.2): id -> field, wire type and the packets that allow it; encode and decode."""

from __future__ import annotations

from enum import IntEnum
from struct import error as StructError
from typing import Any, Literal, NamedTuple

from edgebus.protocol.enums import PacketType, ReasonCode
from edgebus.protocol.errors import ProtocolError, malformed, protocol_violation
from edgebus.protocol.packets import NO_PROPERTIES, Properties
from edgebus.protocol.primitives import (
    Buffer,
    encode_binary,
    encode_string,
    encode_varint,
    pack_u16,
    pack_u32,
    read_binary,
    read_string,
    read_u8,
    read_u16,
    read_u32,
    read_varint,
)

#: Where a property block sits: in a packet's variable header, or in the Will Properties of a CONNECT.
Where = PacketType | Literal["will"]


class WireType(IntEnum):
    """Data representation of a property value (§1.5)."""

    BYTE = 1
    TWO_BYTE_INTEGER = 2
    FOUR_BYTE_INTEGER = 3
    VARIABLE_BYTE_INTEGER = 4
    UTF8_STRING = 5
    BINARY_DATA = 6
    UTF8_STRING_PAIR = 7


class PropertySpec(NamedTuple):
    """One row of Table 2-4 (§2.2.2.2): the Properties field, its wire type and where it may appear."""

    name: str
    wire_type: WireType
    allowed: frozenset[Where]


P = PacketType
_B, _U16, _U32 = WireType.BYTE, WireType.TWO_BYTE_INTEGER, WireType.FOUR_BYTE_INTEGER
_VBI, _STR = WireType.VARIABLE_BYTE_INTEGER, WireType.UTF8_STRING
_BIN, _PAIR = WireType.BINARY_DATA, WireType.UTF8_STRING_PAIR


def _row(identifier: int, name: str, wire_type: WireType, *allowed: Where) -> tuple[int, PropertySpec]:
    return identifier, PropertySpec(name, wire_type, frozenset(allowed))


#: Table 2-4 of MQTT 5.0 §2.2.2.2, keyed by property identifier.
PROPERTY_TABLE: dict[int, PropertySpec] = dict(
    (
        _row(0x01, "payload_format_indicator", _B, P.PUBLISH, "will"),
        _row(0x02, "message_expiry_interval", _U32, P.PUBLISH, "will"),
        _row(0x03, "content_type", _STR, P.PUBLISH, "will"),
        _row(0x08, "response_topic", _STR, P.PUBLISH, "will"),
        _row(0x09, "correlation_data", _BIN, P.PUBLISH, "will"),
        _row(0x0B, "subscription_identifiers", _VBI, P.PUBLISH, P.SUBSCRIBE),
        _row(0x11, "session_expiry_interval", _U32, P.CONNECT, P.CONNACK, P.DISCONNECT),
        _row(0x12, "assigned_client_identifier", _STR, P.CONNACK),
        _row(0x13, "server_keep_alive", _U16, P.CONNACK),
        _row(0x15, "authentication_method", _STR, P.CONNECT, P.CONNACK, P.AUTH),
        _row(0x16, "authentication_data", _BIN, P.CONNECT, P.CONNACK, P.AUTH),
        _row(0x17, "request_problem_information", _B, P.CONNECT),
        _row(0x18, "will_delay_interval", _U32, "will"),
        _row(0x19, "request_response_information", _B, P.CONNECT),
        _row(0x1A, "response_information", _STR, P.CONNACK),
        _row(0x1C, "server_reference", _STR, P.CONNACK, P.DISCONNECT),
        _row(
            0x1F, "reason_string", _STR, P.CONNACK, P.PUBACK, P.PUBREC, P.PUBREL, P.PUBCOMP, P.SUBACK,
            P.UNSUBACK, P.DISCONNECT, P.AUTH,
        ),
        _row(0x21, "receive_maximum", _U16, P.CONNECT, P.CONNACK),
        _row(0x22, "topic_alias_maximum", _U16, P.CONNECT, P.CONNACK),
        _row(0x23, "topic_alias", _U16, P.PUBLISH),
        _row(0x24, "maximum_qos", _B, P.CONNACK),
        _row(0x25, "retain_available", _B, P.CONNACK),
        _row(
            0x26, "user_properties", _PAIR, P.CONNECT, P.CONNACK, P.PUBLISH, "will", P.PUBACK, P.PUBREC,
            P.PUBREL, P.PUBCOMP, P.SUBSCRIBE, P.SUBACK, P.UNSUBSCRIBE, P.UNSUBACK, P.DISCONNECT, P.AUTH,
        ),
        _row(0x27, "maximum_packet_size", _U32, P.CONNECT, P.CONNACK),
        _row(0x28, "wildcard_subscription_available", _B, P.CONNACK),
        _row(0x29, "subscription_identifier_available", _B, P.CONNACK),
        _row(0x2A, "shared_subscription_available", _B, P.CONNACK),
    )
)

SUBSCRIPTION_IDENTIFIER = 0x0B
TOPIC_ALIAS = 0x23
USER_PROPERTY = 0x26

#: Byte properties whose only values are 0 and 1; anything else is a Protocol Error (§3.1.2.11.7,
#: §3.1.2.11.6, §3.2.2.3.4-.12; Payload Format Indicator §3.3.2.3.2 defines only 0 and 1).
BOOLEAN_PROPERTIES = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
#: Properties for which the value 0 is a Protocol Error: Receive Maximum (§3.1.2.11.3, §3.2.2.3.3),
#: Maximum Packet Size (§3.1.2.11.4, §3.2.2.3.6), Subscription Identifier (§3.8.2.1.2) and Topic Alias
#: [MQTT-3.3.2-8], the last answered with 0x94 Topic Alias invalid.
NONZERO_PROPERTIES = frozenset({0x0B, 0x21, 0x23, 0x27})

# (identifier, row) in identifier order: the order encode_properties writes them in.
_ORDERED_SPECS = tuple((k, PROPERTY_TABLE[k]) for k in sorted(PROPERTY_TABLE))
_EMPTY_BLOCK = b"\x00"


def encode_properties(props: Properties, where: Where) -> bytes:
    """The property block for ``where``, with its Variable Byte Integer length (b"\\x00" when empty).

    Properties that ``where`` does not allow are left out, so the block is always one the peer accepts:
    e.g. a Will's properties become its PUBLISH's without the Will Delay Interval (§3.1.3.2), as all
    properties are left out on 3.1.1. ValueError for a value the decoder would refuse: one that does not
    fit its wire type, a boolean other than 0/1, a forbidden 0.
    """
    if props is NO_PROPERTIES:
        return _EMPTY_BLOCK
    chunks: list[bytes] = []
    try:
        for identifier, spec in _ORDERED_SPECS:
            value = getattr(props, spec.name)
            if value is None or value == () or where not in spec.allowed:
                continue
            if identifier in BOOLEAN_PROPERTIES and value not in (0, 1):
                raise ValueError(f"property {spec.name} must be 0 or 1, not {value!r}")
            if identifier in NONZERO_PROPERTIES and (0 in value if isinstance(value, tuple) else value == 0):
                raise ValueError(f"property {spec.name} must not be 0")
            _encode_value(chunks, bytes((identifier,)), spec.wire_type, value)
    except (StructError, OverflowError) as exc:
        raise ValueError(f"property value out of range: {exc}") from None
    if not chunks:
        return _EMPTY_BLOCK
    body = b"".join(chunks)
    return encode_varint(len(body)) + body


def _encode_value(chunks: list[bytes], ident: bytes, wire_type: WireType, value: Any) -> None:
    if wire_type is WireType.UTF8_STRING_PAIR:
        for name, text in value:
            chunks.append(ident + encode_string(name) + encode_string(text))
    elif wire_type is WireType.VARIABLE_BYTE_INTEGER:
        chunks.extend(ident + encode_varint(number) for number in value)
    elif wire_type is WireType.BYTE:
        chunks.append(ident + bytes((value,)))
    elif wire_type is WireType.TWO_BYTE_INTEGER:
        chunks.append(ident + pack_u16(value))
    elif wire_type is WireType.FOUR_BYTE_INTEGER:
        chunks.append(ident + pack_u32(value))
    elif wire_type is WireType.UTF8_STRING:
        chunks.append(ident + encode_string(value))
    else:
        chunks.append(ident + encode_binary(value))


def decode_properties(buf: Buffer, pos: int, end: int, where: Where) -> Properties:
    """Decode the properties in ``buf[pos:end]`` (the block after its length prefix) for ``where``.

    An unknown identifier or one that ``where`` does not allow is a Malformed Packet (§2.2.2.2); a
    repeated property other than User Property (and Subscription Identifier in PUBLISH, §3.3.2.3.8),
    a boolean byte other than 0/1 or a forbidden 0 is a Protocol Error.
    """
    if pos >= end:
        return NO_PROPERTIES
    values: dict[str, Any] = {}
    user_properties: list[tuple[str, str]] = []
    subscription_identifiers: list[int] = []
    table = PROPERTY_TABLE
    while pos < end:
        # The identifier is a Variable Byte Integer (§2.2.2.2); every defined one is < 0x80, so a first
        # byte >= 0x80 is an unknown identifier whatever follows it.
        identifier = buf[pos]
        pos += 1
        spec = table.get(identifier)
        if spec is None:
            raise malformed(f"unknown property identifier 0x{identifier:02X}")
        if where not in spec.allowed:
            raise malformed(f"property {spec.name} (0x{identifier:02X}) not allowed in {_where_name(where)}")
        wire_type = spec.wire_type
        value: Any
        if wire_type is WireType.UTF8_STRING_PAIR:
            name, pos = read_string(buf, pos, end)
            text, pos = read_string(buf, pos, end)
            user_properties.append((name, text))
            continue
        if wire_type is WireType.VARIABLE_BYTE_INTEGER:
            value, pos = read_varint(buf, pos, end)
            if value == 0:
                raise protocol_violation("Subscription Identifier of 0 (§3.8.2.1.2)")
            if subscription_identifiers and where != PacketType.PUBLISH:
                raise protocol_violation("Subscription Identifier included more than once (§3.8.2.1.2)")
            subscription_identifiers.append(value)
            continue
        if wire_type is WireType.BYTE:
            value, pos = read_u8(buf, pos, end)
        elif wire_type is WireType.TWO_BYTE_INTEGER:
            value, pos = read_u16(buf, pos, end)
        elif wire_type is WireType.FOUR_BYTE_INTEGER:
            value, pos = read_u32(buf, pos, end)
        elif wire_type is WireType.UTF8_STRING:
            value, pos = read_string(buf, pos, end)
        else:
            value, pos = read_binary(buf, pos, end)
        if spec.name in values:
            raise protocol_violation(f"property {spec.name} included more than once")
        if identifier in BOOLEAN_PROPERTIES and value > 1:
            raise protocol_violation(f"property {spec.name} must be 0 or 1, got {value}")
        if value == 0 and identifier in NONZERO_PROPERTIES:
            if identifier == TOPIC_ALIAS:
                # [MQTT-3.3.2-8] names no code; 0x94 "Topic Alias invalid" is the specific answer (as
                # for an alias above the maximum, which the session checks) and what brokers send.
                raise ProtocolError(ReasonCode.TOPIC_ALIAS_INVALID, "Topic Alias of 0 [MQTT-3.3.2-8]")
            raise protocol_violation(f"property {spec.name} must not be 0")
        values[spec.name] = value
    # Every read above is bounded by ``end``, so the loop stops exactly there.
    return Properties(
        **values,
        user_properties=tuple(user_properties),
        subscription_identifiers=tuple(subscription_identifiers),
    )


def read_properties(buf: Buffer, pos: int, end: int, where: Where) -> tuple[Properties, int]:
    """Read a property block (length prefix, then properties) inside a packet ending at ``end``."""
    if pos < end and buf[pos] == 0:
        # Fast path: an empty block is the common case and costs one byte test.
        return NO_PROPERTIES, pos + 1
    length, pos = read_varint(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise malformed("property block runs past the end of the packet")
    return decode_properties(buf, pos, stop, where), stop


def _where_name(where: Where) -> str:
    return "Will Properties" if where == "will" else PacketType(where).name


__all__ = [
    "BOOLEAN_PROPERTIES",
    "NONZERO_PROPERTIES",
    "PROPERTY_TABLE",
    "SUBSCRIPTION_IDENTIFIER",
    "TOPIC_ALIAS",
    "USER_PROPERTY",
    "PropertySpec",
    "Where",
    "WireType",
    "decode_properties",
    "encode_properties",
    "read_properties",
]

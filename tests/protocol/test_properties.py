"""MQTT 5.0 property rules (§2.2.2): which packet allows which property, duplicates, value ranges."""

from __future__ import annotations

from dataclasses import fields
from typing import NoReturn

import pytest

from edgebus.protocol import PacketType, Properties, ProtocolError, ReasonCode
from edgebus.protocol import properties as properties_module
from edgebus.protocol.packets import NO_PROPERTIES
from edgebus.protocol.primitives import encode_varint
from edgebus.protocol.properties import (
    BOOLEAN_PROPERTIES,
    NONZERO_PROPERTIES,
    PROPERTY_TABLE,
    Where,
    WireType,
    decode_properties,
    encode_properties,
    read_properties,
)

ALL_WHERES: list[Where] = [*PacketType, "will"]

# A valid non-zero value of each wire type, as bytes on the wire and as the decoded field value.
SAMPLE_WIRE = {
    WireType.BYTE: ("01", 1),
    WireType.TWO_BYTE_INTEGER: ("0102", 0x0102),
    WireType.FOUR_BYTE_INTEGER: ("01020304", 0x01020304),
    WireType.VARIABLE_BYTE_INTEGER: ("8001", (128,)),
    WireType.UTF8_STRING: ("0002 C3BC", "ü"),
    WireType.BINARY_DATA: ("0002 00FF", b"\x00\xff"),
    WireType.UTF8_STRING_PAIR: ("0001 6B 0001 76", (("k", "v"),)),
}


def entry(identifier: int, value_hex: str | None = None) -> bytes:
    wire_type = PROPERTY_TABLE[identifier].wire_type
    return bytes((identifier,)) + bytes.fromhex(value_hex or SAMPLE_WIRE[wire_type][0])


def name_of(identifier: int) -> str:
    return f"0x{identifier:02X}-{PROPERTY_TABLE[identifier].name}"


IDENTIFIERS = sorted(PROPERTY_TABLE)


def decode(block: bytes, where: Where) -> Properties:
    return decode_properties(block, 0, len(block), where)


def reason_of(block: bytes, where: Where) -> ReasonCode:
    with pytest.raises(ProtocolError) as info:
        decode(block, where)
    return info.value.reason_code


def test_table_covers_every_properties_field_once() -> None:
    # Table 2-4 of §2.2.2.2 has one identifier per property; Properties has one field per property.
    names = sorted(spec.name for spec in PROPERTY_TABLE.values())
    assert names == sorted(field.name for field in fields(Properties))


def test_table_rows_from_the_spec() -> None:
    # Spot checks of Table 2-4.
    assert PROPERTY_TABLE[0x26].allowed == frozenset(ALL_WHERES) - {PacketType.PINGREQ, PacketType.PINGRESP}
    assert PROPERTY_TABLE[0x0B].allowed == {PacketType.PUBLISH, PacketType.SUBSCRIBE}
    assert PROPERTY_TABLE[0x18].allowed == {"will"}
    assert PROPERTY_TABLE[0x23].allowed == {PacketType.PUBLISH}
    assert PROPERTY_TABLE[0x11].allowed == {PacketType.CONNECT, PacketType.CONNACK, PacketType.DISCONNECT}
    assert PROPERTY_TABLE[0x1F].wire_type is WireType.UTF8_STRING
    assert PROPERTY_TABLE[0x27].wire_type is WireType.FOUR_BYTE_INTEGER


@pytest.mark.parametrize("identifier", IDENTIFIERS, ids=name_of)
def test_each_property_decodes_and_encodes_where_allowed(identifier: int) -> None:
    spec = PROPERTY_TABLE[identifier]
    value = SAMPLE_WIRE[spec.wire_type][1]
    for where in spec.allowed:
        props = decode(entry(identifier), where)
        assert getattr(props, spec.name) == value
        block = encode_properties(props, where)
        assert block == encode_varint(len(entry(identifier))) + entry(identifier)


@pytest.mark.parametrize("identifier", IDENTIFIERS, ids=name_of)
def test_property_not_allowed_in_a_packet_is_malformed(identifier: int) -> None:
    spec = PROPERTY_TABLE[identifier]
    # §2.2.2.2: a property in a packet that does not list it makes the packet malformed; so the
    # encoder leaves it out rather than write a packet the peer must refuse.
    forbidden = [where for where in ALL_WHERES if where not in spec.allowed]
    assert forbidden
    props = decode(entry(identifier), next(iter(spec.allowed)))
    for where in forbidden:
        assert reason_of(entry(identifier), where) == ReasonCode.MALFORMED_PACKET
        assert encode_properties(props, where) == b"\x00"


@pytest.mark.parametrize("identifier", [i for i in range(256) if i not in PROPERTY_TABLE])
def test_unknown_property_identifier_is_malformed(identifier: int) -> None:
    # §2.2.2.2: identifiers not in Table 2-4 (0x80 and up included) are malformed.
    block = bytes((identifier, 0, 0, 0, 0))
    assert reason_of(block, PacketType.PUBLISH) == ReasonCode.MALFORMED_PACKET


@pytest.mark.parametrize("identifier", [i for i in IDENTIFIERS if i not in (0x26, 0x0B)], ids=name_of)
def test_duplicate_property_is_a_protocol_error(identifier: int) -> None:
    # e.g. §3.3.2.3.3: "It is a Protocol Error to include the Message Expiry Interval more than once."
    where = next(iter(PROPERTY_TABLE[identifier].allowed))
    assert reason_of(entry(identifier) * 2, where) == ReasonCode.PROTOCOL_ERROR


def test_subscription_identifier_may_repeat_only_in_publish() -> None:
    # §3.3.2.3.8: a PUBLISH may carry several; §3.8.2.1.2: more than one in SUBSCRIBE is a Protocol Error.
    block = bytes.fromhex("0B01 0B02 0B03")
    assert decode(block, PacketType.PUBLISH).subscription_identifiers == (1, 2, 3)
    assert reason_of(block, PacketType.SUBSCRIBE) == ReasonCode.PROTOCOL_ERROR


def test_user_properties_keep_order_and_repeated_names() -> None:
    # §3.1.2.11.8: "The User Property is allowed to appear multiple times ... the same name is allowed
    # to appear more than once", and the order is preserved [MQTT-3.3.2-18].
    block = bytes.fromhex("26 0001 62 0001 31  26 0001 61 0001 32  26 0001 62 0001 33")
    props = decode(block, PacketType.PUBLISH)
    assert props.user_properties == (("b", "1"), ("a", "2"), ("b", "3"))
    assert encode_properties(props, PacketType.PUBLISH) == bytes((len(block),)) + block


@pytest.mark.parametrize("identifier", sorted(BOOLEAN_PROPERTIES))
def test_boolean_byte_property_other_than_0_or_1_is_a_protocol_error(identifier: int) -> None:
    # e.g. §3.1.2.11.7: "It is a Protocol Error to include Request Problem Information more than once,
    # or to have a value other than 0 or 1"; likewise §3.2.2.3.4 Maximum QoS, §3.2.2.3.5 Retain
    # Available, §3.2.2.3.11-13, §3.1.2.11.6; Payload Format Indicator defines only 0 and 1.
    spec = PROPERTY_TABLE[identifier]
    where = next(iter(spec.allowed))
    assert decode(bytes((identifier, 0)), where) is not None
    assert decode(bytes((identifier, 1)), where) is not None
    for value in (2, 0x80, 0xFF):
        assert reason_of(bytes((identifier, value)), where) == ReasonCode.PROTOCOL_ERROR


def test_boolean_table_is_every_byte_property() -> None:
    assert {i for i, s in PROPERTY_TABLE.items() if s.wire_type is WireType.BYTE} == BOOLEAN_PROPERTIES


@pytest.mark.parametrize(
    ("identifier", "zero_hex", "reason"),
    [
        (0x21, "0000", ReasonCode.PROTOCOL_ERROR),  # Receive Maximum (§3.1.2.11.3, §3.2.2.3.3)
        (0x27, "00000000", ReasonCode.PROTOCOL_ERROR),  # Maximum Packet Size (§3.1.2.11.4, §3.2.2.3.6)
        (0x0B, "00", ReasonCode.PROTOCOL_ERROR),  # Subscription Identifier (§3.8.2.1.2, §3.3.2.3.8)
        # Topic Alias [MQTT-3.3.2-8]: answered with the specific 0x94 Topic Alias invalid.
        (0x23, "0000", ReasonCode.TOPIC_ALIAS_INVALID),
    ],
)
def test_zero_is_refused(identifier: int, zero_hex: str, reason: ReasonCode) -> None:
    assert identifier in NONZERO_PROPERTIES
    spec = PROPERTY_TABLE[identifier]
    for where in spec.allowed:
        assert reason_of(entry(identifier, zero_hex), where) == reason


@pytest.mark.parametrize(
    ("props", "where"),
    [
        (Properties(subscription_identifiers=(3, 0)), PacketType.PUBLISH),
        (Properties(receive_maximum=0), PacketType.CONNECT),
        (Properties(maximum_packet_size=0), PacketType.CONNACK),
        (Properties(topic_alias=0), PacketType.PUBLISH),
        (Properties(maximum_qos=2), PacketType.CONNACK),
        (Properties(payload_format_indicator=7), "will"),
    ],
)
def test_encoding_what_the_decoder_refuses_is_a_value_error(props: Properties, where: Where) -> None:
    with pytest.raises(ValueError, match="must"):
        encode_properties(props, where)


@pytest.mark.parametrize(
    "block_hex",
    [
        "02 000000",  # Four Byte Integer cut short
        "21 00",  # Two Byte Integer cut short
        "01",  # Byte missing
        "03 0005 6162",  # string longer than the block
        "09 0003 00",  # binary longer than the block
        "26 0001 61",  # pair without its value
        "0B 80",  # Variable Byte Integer cut short
        "0B 80808080",  # Variable Byte Integer of five bytes
    ],
)
def test_property_running_past_its_block_is_malformed(block_hex: str) -> None:
    assert reason_of(bytes.fromhex(block_hex), PacketType.PUBLISH) == ReasonCode.MALFORMED_PACKET


def test_property_length_past_the_packet_is_malformed() -> None:
    data = bytes.fromhex("05 01 01")
    with pytest.raises(ProtocolError) as info:
        read_properties(data, 0, len(data), PacketType.PUBLISH)
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


def test_property_values_must_not_read_past_the_block() -> None:
    # The block says 2 bytes; the string inside claims 3, which exist in the buffer but belong to the
    # payload: still malformed.
    data = bytes.fromhex("02 03 0003 616263")
    with pytest.raises(ProtocolError):
        read_properties(data, 0, len(data), PacketType.PUBLISH)


def test_empty_block_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty block must cost next to nothing: neither the property parser nor the walk over the
    # property table runs for it (both are replaced by traps here).
    def trap(*args: object) -> NoReturn:
        raise AssertionError("slow path taken")

    monkeypatch.setattr(properties_module, "decode_properties", trap)
    monkeypatch.setattr(properties_module, "_ORDERED_SPECS", TrapIterable())
    assert read_properties(b"\x00rest", 0, 5, PacketType.PUBLISH) == (NO_PROPERTIES, 1)
    assert read_properties(b"\x00", 0, 1, PacketType.PUBLISH)[0] is NO_PROPERTIES
    assert encode_properties(NO_PROPERTIES, PacketType.PUBLISH) == b"\x00"


def test_empty_blocks() -> None:
    assert decode(b"", PacketType.PUBLISH) is NO_PROPERTIES
    assert encode_properties(Properties(), PacketType.CONNECT) == b"\x00"


class TrapIterable:
    def __iter__(self) -> NoReturn:
        raise AssertionError("slow path taken")


def test_encoding_a_value_out_of_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_properties(Properties(receive_maximum=70_000), PacketType.CONNECT)
    with pytest.raises(ValueError, match="out of range"):
        encode_properties(Properties(message_expiry_interval=2**32), PacketType.PUBLISH)
    with pytest.raises(ValueError, match="Variable Byte Integer"):
        encode_properties(Properties(subscription_identifiers=(268_435_456,)), PacketType.PUBLISH)

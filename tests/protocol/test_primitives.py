"""Variable Byte Integer, UTF-8 string and binary data rules (§1.5)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edgebus.protocol import ProtocolError, ReasonCode
from edgebus.protocol.primitives import (
    MAX_REMAINING_LENGTH,
    decode_varint,
    encode_binary,
    encode_string,
    encode_varint,
    read_binary,
    read_string,
    read_u8,
    read_u16,
    read_u32,
    read_varint,
)

# §1.5.5 Table 1-1 of 5.0 (§2.2.3 Table 2.4 of 3.1.1): the boundaries of each encoded length.
VARINT_TABLE = [
    (0, "00"),
    (127, "7F"),
    (128, "8001"),
    (16_383, "FF7F"),
    (16_384, "808001"),
    (2_097_151, "FFFF7F"),
    (2_097_152, "80808001"),
    (268_435_455, "FFFFFF7F"),
]


@pytest.mark.parametrize(("value", "wire"), VARINT_TABLE)
def test_varint_table(value: int, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert encode_varint(value) == data
    assert decode_varint(data, 0) == (value, len(data))
    assert decode_varint(b"\xaa" + data + b"\xbb", 1) == (value, len(data) + 1)


def test_max_remaining_length() -> None:
    assert MAX_REMAINING_LENGTH == 268_435_455


@pytest.mark.parametrize("value", [-1, 268_435_456, 2**40])
def test_varint_out_of_range_cannot_be_encoded(value: int) -> None:
    with pytest.raises(ValueError, match="Variable Byte Integer"):
        encode_varint(value)


@pytest.mark.parametrize("wire", ["", "80", "FF", "FFFF", "FFFFFF", "808080"])
def test_incomplete_varint_needs_more_bytes(wire: str) -> None:
    assert decode_varint(bytes.fromhex(wire), 0) is None


@pytest.mark.parametrize("wire", ["80808080", "FFFFFFFF", "FFFFFFFF7F", "8080808001"])
def test_varint_longer_than_four_bytes_is_malformed(wire: str) -> None:
    # §1.5.5: at most four bytes; the fourth byte with its continuation bit set is already an error,
    # the decoder does not wait for a fifth.
    with pytest.raises(ProtocolError) as info:
        decode_varint(bytes.fromhex(wire), 0)
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


@pytest.mark.parametrize("wire", ["8000", "FF00", "808000", "FF808000"])
def test_non_minimal_varint_is_malformed(wire: str) -> None:
    # [MQTT-1.5.5-1]: the encoded value MUST use the minimum number of bytes.
    with pytest.raises(ProtocolError) as info:
        decode_varint(bytes.fromhex(wire), 0)
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


def test_read_varint_must_end_inside_the_packet() -> None:
    assert read_varint(b"\x80\x01", 0, 2) == (128, 2)
    with pytest.raises(ProtocolError):
        read_varint(b"\x80\x01", 0, 1)


def test_string_example_from_the_spec() -> None:
    # §1.5.4 Figure 1-1 of 5.0: "A𪛔" (U+0041, U+2A6D4) is 00 05 41 F0 AA 9B 94.
    wire = bytes.fromhex("0005 41 F0AA9B94")
    assert encode_string("A\U0002a6d4") == wire
    assert read_string(wire, 0, len(wire)) == ("A\U0002a6d4", 7)


def test_empty_string() -> None:
    assert encode_string("") == b"\x00\x00"
    assert read_string(b"\x00\x00", 0, 2) == ("", 2)


def test_string_of_65535_bytes_is_the_longest() -> None:
    # §1.5.4: the length prefix is a Two Byte Integer, so at most 65,535 bytes.
    longest = "é" * 32_767 + "a"  # 65,535 bytes
    wire = encode_string(longest)
    assert wire[:2] == b"\xff\xff"
    assert read_string(wire, 0, len(wire)) == (longest, 65_537)
    with pytest.raises(ValueError, match="longer than 65535"):
        encode_string(longest + "a")


def test_encoding_null_character_is_refused() -> None:
    # [MQTT-1.5.4-2]: a UTF-8 Encoded String MUST NOT include U+0000.
    with pytest.raises(ValueError, match="U\\+0000"):
        encode_string("a\x00b")


def test_encoding_a_surrogate_is_refused() -> None:
    # [MQTT-1.5.4-1]: code points U+D800..U+DFFF MUST NOT be encoded.
    with pytest.raises(ValueError, match="surrogate"):
        encode_string("\ud800")


@pytest.mark.parametrize("wire", ["0003 610062", "0001 00"])
def test_reading_null_character_is_malformed(wire: str) -> None:
    # [MQTT-1.5.4-2]: a receiver treats U+0000 in a string as a Malformed Packet.
    data = bytes.fromhex(wire)
    with pytest.raises(ProtocolError) as info:
        read_string(data, 0, len(data))
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


@pytest.mark.parametrize("wire", ["0001 FF", "0003 EDA080", "0002 C0AF", "0002 E282"])
def test_reading_ill_formed_utf8_is_malformed(wire: str) -> None:
    # [MQTT-1.5.4-1]: ill-formed UTF-8, surrogates included, is a Malformed Packet.
    data = bytes.fromhex(wire)
    with pytest.raises(ProtocolError) as info:
        read_string(data, 0, len(data))
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


def test_binary_data() -> None:
    # §1.5.6: Two Byte Integer length then that many bytes.
    assert encode_binary(b"\x00\xff") == b"\x00\x02\x00\xff"
    assert read_binary(b"\x00\x02\x00\xff", 0, 4) == (b"\x00\xff", 4)
    with pytest.raises(ValueError, match="longer than 65535"):
        encode_binary(bytes(65_536))


@pytest.mark.parametrize(
    ("read", "data"),
    [
        (read_u8, b""),
        (read_u16, b"\x01"),
        (read_u32, b"\x01\x02\x03"),
        (read_string, b"\x00"),
        (read_string, b"\x00\x03ab"),
        (read_binary, b"\x00"),
        (read_binary, b"\x00\x03ab"),
    ],
)
def test_reads_that_run_past_the_packet_are_malformed(
    read: Callable[[bytes, int, int], object], data: bytes
) -> None:
    with pytest.raises(ProtocolError) as info:
        read(data, 0, len(data))
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


def test_reads_respect_the_packet_end_not_the_buffer_end() -> None:
    # The next packet's bytes must never be read as part of this one.
    data = b"\x00\x03abc"
    with pytest.raises(ProtocolError):
        read_string(data, 0, 4)
    assert read_u16(b"\x01\x02\x03", 1, 3) == (0x0203, 3)
    assert read_u32(b"\x00\x01\x02\x03\x04", 1, 5) == (0x01020304, 5)

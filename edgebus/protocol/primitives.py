"""MQTT wire primitives: Variable Byte Integer, two/four byte integers, UTF-8 strings, binary data (§1.5)."""

from __future__ import annotations

from struct import Struct

from edgebus.protocol.errors import malformed

#: Largest value a four-byte Variable Byte Integer can hold (§1.5.5 of 5.0, §2.2.3 of 3.1.1).
MAX_REMAINING_LENGTH = 268_435_455
#: Longest UTF-8 string or binary data: a two byte length prefix (§1.5.4, §1.5.6).
MAX_STRING_BYTES = 65_535
#: A Variable Byte Integer uses at most four bytes [MQTT-1.5.5-1].
MAX_VARINT_BYTES = 4

#: What the codec reads from: the decoder walks bytes (or its bytearray buffer) by index.
Buffer = bytes | bytearray

_U16 = Struct(">H")
_U32 = Struct(">I")
pack_u16 = _U16.pack
pack_u32 = _U32.pack

# The one-byte encodings are precomputed: most remaining lengths and property lengths are < 128.
_SMALL_VARINTS = tuple(bytes((n,)) for n in range(128))


def encode_varint(n: int) -> bytes:
    """Encode ``n`` (0..268,435,455) as a Variable Byte Integer, in the fewest bytes [MQTT-1.5.5-1]."""
    if 0 <= n < 128:
        return _SMALL_VARINTS[n]
    if n < 0 or n > MAX_REMAINING_LENGTH:
        raise ValueError(f"{n} does not fit a Variable Byte Integer (0..{MAX_REMAINING_LENGTH})")
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_varint(buf: Buffer, pos: int) -> tuple[int, int] | None:
    """Read a Variable Byte Integer at ``pos``: (value, position after it), or None if ``buf`` ends first.

    More than four bytes is a Malformed Packet (§1.5.5). So is a non-minimal encoding (a last byte of 0
    after the first): [MQTT-1.5.5-1] says the minimum number of bytes MUST be used.
    """
    return _varint_before(buf, pos, len(buf))


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Read a Variable Byte Integer that must lie inside a packet ending at ``end``."""
    result = _varint_before(buf, pos, end)
    if result is None:
        raise malformed("Variable Byte Integer runs past the end of the packet")
    return result


def _varint_before(buf: Buffer, pos: int, end: int) -> tuple[int, int] | None:
    value = 0
    shift = 0
    for i in range(pos, pos + MAX_VARINT_BYTES):
        if i >= end:
            return None
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and i > pos:
                raise malformed("Variable Byte Integer not in its minimal encoding [MQTT-1.5.5-1]")
            return value, i + 1
        shift += 7
    raise malformed("Variable Byte Integer longer than four bytes (§1.5.5)")


def encode_string(s: str) -> bytes:
    """A UTF-8 Encoded String: two byte length then the bytes (§1.5.4).

    ValueError for U+0000 [MQTT-1.5.4-2], surrogates (not encodable, [MQTT-1.5.4-1]) or > 65,535 bytes.
    """
    data = s.encode("utf-8")
    if len(data) > MAX_STRING_BYTES:
        raise ValueError(f"UTF-8 string of {len(data)} bytes is longer than {MAX_STRING_BYTES}")
    if b"\x00" in data:
        raise ValueError("UTF-8 string contains U+0000 [MQTT-1.5.4-2]")
    return pack_u16(len(data)) + data


def encode_binary(b: bytes) -> bytes:
    """Binary Data: two byte length then the bytes (§1.5.6); ValueError if longer than 65,535 bytes."""
    if len(b) > MAX_STRING_BYTES:
        raise ValueError(f"binary data of {len(b)} bytes is longer than {MAX_STRING_BYTES}")
    return pack_u16(len(b)) + bytes(b)


def read_u8(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """One byte inside a packet ending at ``end``; running short is a Malformed Packet."""
    if pos >= end:
        raise malformed("packet ends inside a one byte field")
    return buf[pos], pos + 1


def read_u16(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """A Two Byte Integer (big-endian, §1.5.2) inside a packet ending at ``end``."""
    if pos + 2 > end:
        raise malformed("packet ends inside a Two Byte Integer")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def read_u32(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """A Four Byte Integer (big-endian, §1.5.3) inside a packet ending at ``end``."""
    if pos + 4 > end:
        raise malformed("packet ends inside a Four Byte Integer")
    return _U32.unpack_from(buf, pos)[0], pos + 4


def decode_utf8(raw: Buffer) -> str:
    """Decode the bytes of a UTF-8 Encoded String per §1.5.4.

    Ill-formed UTF-8, including encoded surrogates U+D800..U+DFFF, is malformed [MQTT-1.5.4-1]; so is
    U+0000 [MQTT-1.5.4-2]. A BOM (0xEF 0xBB 0xBF) is kept as U+FEFF, never stripped [MQTT-1.5.4-3].
    """
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("ill-formed UTF-8 in a UTF-8 Encoded String [MQTT-1.5.4-1]") from None
    if "\x00" in s:
        raise malformed("UTF-8 Encoded String contains U+0000 [MQTT-1.5.4-2]")
    return s


def read_string(buf: Buffer, pos: int, end: int) -> tuple[str, int]:
    """A UTF-8 Encoded String (§1.5.4) inside a packet ending at ``end``."""
    if pos + 2 > end:
        raise malformed("packet ends inside a string length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise malformed("UTF-8 Encoded String runs past the end of the packet")
    return decode_utf8(buf[pos + 2 : stop]), stop


def read_binary(buf: Buffer, pos: int, end: int) -> tuple[bytes, int]:
    """Binary Data (§1.5.6) inside a packet ending at ``end``."""
    if pos + 2 > end:
        raise malformed("packet ends inside a binary data length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise malformed("Binary Data runs past the end of the packet")
    return bytes(buf[pos + 2 : stop]), stop


__all__ = [
    "MAX_REMAINING_LENGTH",
    "MAX_STRING_BYTES",
    "MAX_VARINT_BYTES",
    "Buffer",
    "decode_utf8",
    "decode_varint",
    "encode_binary",
    "encode_string",
    "encode_varint",
    "pack_u16",
    "pack_u32",
    "read_binary",
    "read_string",
    "read_u8",
    "read_u16",
    "read_u32",
    "read_varint",
]

"""PacketDecoder behaviour: size limits before buffering, EOF, errors, roles and protocol level."""

from __future__ import annotations

import pytest

from edgebus.protocol import (
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    PacketDecoder,
    PingReq,
    ProtocolError,
    PubAck,
    Publish,
    ReasonCode,
    encode,
)
from edgebus.protocol import decoder as decoder_module
from edgebus.protocol.packets import NO_PROPERTIES
from edgebus.protocol.primitives import encode_varint

CONNECT_5 = encode(Connect("dev", MQTT_5), MQTT_5)
CONNECT_4 = encode(Connect("dev", MQTT_3_1_1), MQTT_3_1_1)


def publish_header(remaining_length: int) -> bytes:
    return b"\x30" + encode_varint(remaining_length)


# ------------------------------------------------------------------ size limits


def test_packet_too_large_is_refused_from_the_fixed_header_alone() -> None:
    # The fixed header of a 200 MB PUBLISH: refused before a byte of its body is buffered.
    decoder = PacketDecoder(max_packet_size=1024 * 1024, protocol_level=MQTT_5)
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(publish_header(200_000_000))
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE
    assert not decoder.has_partial_packet


def test_packet_too_large_is_refused_as_soon_as_the_length_is_complete() -> None:
    decoder = PacketDecoder(max_packet_size=1024 * 1024, protocol_level=MQTT_5)
    header = publish_header(200_000_000)
    for byte in header[:-1]:
        assert decoder.receive_data(bytes((byte,))) == []
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(header[-1:])
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_packet_too_large_after_earlier_packets_in_the_same_feed() -> None:
    decoder = PacketDecoder(max_packet_size=1024, protocol_level=MQTT_5)
    ping = encode(PingReq(), MQTT_5)
    assert decoder.receive_data(ping + publish_header(10_000)) == [PingReq()]
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(b"")
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_max_packet_size_counts_the_whole_packet(level: int) -> None:
    # Maximum Packet Size is "the total number of bytes in an MQTT Control Packet" (§3.1.2.11.4).
    data = encode(Publish("t", b"x" * 100), level)
    assert PacketDecoder(max_packet_size=len(data), protocol_level=level).receive_data(data) == [
        Publish("t", b"x" * 100)
    ]
    with pytest.raises(ProtocolError) as info:
        PacketDecoder(max_packet_size=len(data) - 1, protocol_level=level).receive_data(data)
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_max_packet_size_may_change_after_construction() -> None:
    # A client learns the server's Maximum Packet Size from CONNACK... and a server may lower its own.
    decoder = PacketDecoder(protocol_level=MQTT_5)
    data = encode(Publish("t", b"x" * 100), MQTT_5)
    assert len(decoder.receive_data(data)) == 1
    decoder.max_packet_size = 50
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(data)
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE


def test_default_limit_accepts_the_largest_remaining_length() -> None:
    # 268,435,455 is the largest Remaining Length (§1.5.5): by default its header is not refused.
    decoder = PacketDecoder(protocol_level=MQTT_5)
    assert decoder.receive_data(b"\x30\xff\xff\xff\x7f") == []
    assert decoder.has_partial_packet


def test_remaining_length_of_five_bytes_is_malformed_at_the_fourth() -> None:
    # §1.5.5: at most four bytes of Remaining Length; the fourth with a continuation bit is the error.
    decoder = PacketDecoder(protocol_level=MQTT_5)
    assert decoder.receive_data(b"\x30\x80\x80\x80") == []
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(b"\x80")
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


@pytest.mark.parametrize("remaining_length", [127, 128, 129, 16_383, 16_384, 2_097_152])
def test_remaining_length_boundaries(remaining_length: int) -> None:
    # §1.5.5 Table 1-1: one, two, three and four byte Remaining Lengths, whole and byte by byte.
    publish = Publish("t", b"x" * (remaining_length - 4))
    data = encode(publish, MQTT_5)
    assert data[1:].startswith(encode_varint(remaining_length))
    assert PacketDecoder(protocol_level=MQTT_5).receive_data(data) == [publish]
    decoder = PacketDecoder(protocol_level=MQTT_5)
    for byte in data[:6]:
        assert decoder.receive_data(bytes((byte,))) == []
    assert decoder.receive_data(data[6:]) == [publish]


@pytest.mark.parametrize("header", [b"\x30\x80\x00", b"\x30\xff\x80\x00", b"\x30\x80\x80\x80\x00"])
def test_non_minimal_remaining_length_is_malformed(header: bytes) -> None:
    # [MQTT-1.5.5-1]: the Remaining Length uses the minimum number of bytes.
    with pytest.raises(ProtocolError) as info:
        PacketDecoder(protocol_level=MQTT_5).receive_data(header + bytes(200))
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET


def test_a_large_packet_in_many_small_pieces() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = encode(Publish("big", payload, 1, packet_id=1), MQTT_5)
    decoder = PacketDecoder(protocol_level=MQTT_5)
    out = []
    for i in range(0, len(data), 1000):
        out.extend(decoder.receive_data(data[i : i + 1000]))
    assert out == [Publish("big", payload, 1, packet_id=1)]
    assert not decoder.has_partial_packet


def test_longest_topic_decodes() -> None:
    topic = "t" * 65_535
    data = encode(Publish(topic, b"p"), MQTT_5)
    assert PacketDecoder(protocol_level=MQTT_5).receive_data(data) == [Publish(topic, b"p")]


# ------------------------------------------------------------------ EOF and errors


def test_eof_returns_nothing_and_reports_a_cut_packet() -> None:
    decoder = PacketDecoder(protocol_level=MQTT_5)
    assert decoder.receive_data(b"\xc0") == []
    assert decoder.receive_data(b"") == []
    assert decoder.has_partial_packet  # the connection ended inside a packet
    assert decoder.receive_data(b"") == []
    with pytest.raises(RuntimeError, match="after EOF"):
        decoder.receive_data(b"\x00")


def test_clean_eof() -> None:
    decoder = PacketDecoder(protocol_level=MQTT_5)
    assert decoder.receive_data(b"\xc0\x00") == [PingReq()]
    assert decoder.receive_data(b"") == []
    assert not decoder.has_partial_packet


def test_decoder_is_dead_after_an_error() -> None:
    decoder = PacketDecoder(protocol_level=MQTT_5)
    with pytest.raises(ProtocolError) as first:
        decoder.receive_data(b"\x00")
    assert decoder.pending_error is first.value
    for later in (b"\xc0\x00", b"", b"\x00"):
        with pytest.raises(ProtocolError) as again:
            decoder.receive_data(later)
        assert again.value is first.value


def test_packets_before_garbage_are_returned_and_the_error_raised_next() -> None:
    # Valid packets that precede garbage in one feed are still returned so the broker can process
    # them; the error is kept (pending_error) and raised by the next call, whatever it feeds.
    decoder = PacketDecoder()
    ping = encode(PingReq(), MQTT_5)
    assert decoder.receive_data(CONNECT_5 + ping + b"\x00\x00" + ping) == [Connect("dev", MQTT_5), PingReq()]
    error = decoder.pending_error
    assert error is not None
    assert error.reason_code == ReasonCode.MALFORMED_PACKET
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(ping)
    assert info.value is error


def test_only_protocol_errors_escape() -> None:
    # Things that would raise IndexError, UnicodeDecodeError or struct.error in a careless decoder.
    for data in (b"\x30\x02\x00", b"\x30\x03\x00\x01\xff", b"\x32\x04\x00\x01\x74\x00", b"\x40\x01\x00"):
        with pytest.raises(ProtocolError):
            PacketDecoder(protocol_level=MQTT_5).receive_data(data + b"\xc0\x00")


# ------------------------------------------------------------------ roles and protocol level


def test_server_role_learns_the_level_from_connect() -> None:
    decoder = PacketDecoder()
    assert decoder.protocol_level is None
    decoder.receive_data(CONNECT_4)
    assert decoder.protocol_level == MQTT_3_1_1
    # The level now decides how the rest is read: a 3.1.1 PUBLISH has no property length.
    assert decoder.receive_data(b"\x30\x04\x00\x01\x74\x00") == [Publish("t", b"\x00")]


def test_the_level_changes_within_one_feed() -> None:
    # CONNECT and the packets after it arrive together: the packets after it follow its level.
    decoder = PacketDecoder()
    stream = CONNECT_5 + b"\x30\x04\x00\x01\x74\x00" + b"\xf0\x00"
    assert decoder.receive_data(stream)[1:] == [Publish("t"), Auth()]
    decoder = PacketDecoder()
    assert decoder.receive_data(CONNECT_4 + b"\xf0\x00") == [Connect("dev", MQTT_3_1_1)]
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(b"")
    assert info.value.reason_code == ReasonCode.MALFORMED_PACKET  # no AUTH in 3.1.1


@pytest.mark.parametrize(
    ("connack", "level"), [(b"\x20\x02\x00\x00", MQTT_3_1_1), (b"\x20\x03\x00\x00\x00", MQTT_5)]
)
def test_client_role_learns_the_level_from_connack(connack: bytes, level: int) -> None:
    # A 3.1.1 CONNACK is two bytes long (§3.2 of 3.1.1); a 5.0 one always has a property length.
    decoder = PacketDecoder(role="client")
    (packet,) = decoder.receive_data(connack)
    assert isinstance(packet, ConnAck)
    assert decoder.protocol_level == level
    puback = encode(PubAck(3), level)
    assert decoder.receive_data(puback) == [PubAck(3)]


def test_invalid_construction() -> None:
    with pytest.raises(ValueError, match="role"):
        PacketDecoder(role="broker")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="protocol_level"):
        PacketDecoder(protocol_level=3)
    decoder = PacketDecoder()
    with pytest.raises(ValueError, match="protocol_level"):
        decoder.protocol_level = 6


def test_accepts_bytearray_and_memoryview() -> None:
    data = encode(Publish("t", b"x"), MQTT_5)
    assert PacketDecoder(protocol_level=MQTT_5).receive_data(bytearray(data)) == [Publish("t", b"x")]  # type: ignore[arg-type]
    assert PacketDecoder(protocol_level=MQTT_5).receive_data(memoryview(data)) == [Publish("t", b"x")]  # type: ignore[arg-type]


def test_fast_publish_construction_equals_the_dataclass() -> None:
    # The decoder fills Publish slots directly (see decoder.py); it must stay equivalent to Publish().
    assert decoder_module._FAST_PUBLISH, "packets.Publish changed shape: update _PUBLISH_FIELDS"
    data = encode(Publish("a/b", b"hi", 2, retain=True, dup=True, packet_id=9), MQTT_5)
    (decoded,) = PacketDecoder(protocol_level=MQTT_5).receive_data(data)
    expected = Publish("a/b", b"hi", 2, True, True, 9, NO_PROPERTIES)
    assert decoded == expected
    assert hash(decoded) == hash(expected)
    assert repr(decoded) == repr(expected)
    assert type(decoded.retain) is bool
    assert type(decoded.dup) is bool

"""Sans-IO MQTT 3.1.1 / 5.0 decoder: bytes in, validated packets out, for the server or the client role.

Buffering: the bytearray holds only the bytes of one incomplete packet. A call that finds the buffer
empty decodes straight from the caller's bytes (no copy); otherwise it appends, returns at once while
the first packet is still incomplete (so a large packet arriving in pieces costs O(piece) per call),
and once it is complete takes one bytes snapshot to decode from, so payloads are single-copy slices.
The leftover is put back once per call. The first byte of a packet is judged by a 256-entry table
per (role, protocol level), the size limit from the fixed header alone, and PUBLISH is decoded
inline in the loop. The bodies of the other packets are parsed in edgebus.protocol.bodies.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Literal

from edgebus.protocol.bodies import BODY_DECODERS, decode_connack, decode_connect, read_protocol
from edgebus.protocol.enums import MQTT_3_1_1, MQTT_5, PacketType, ReasonCode, session_level
from edgebus.protocol.errors import ProtocolError, malformed, protocol_violation
from edgebus.protocol.packets import NO_PROPERTIES, ConnAck, Connect, Packet, Publish
from edgebus.protocol.primitives import MAX_REMAINING_LENGTH, Buffer, decode_varint
from edgebus.protocol.properties import read_properties

Role = Literal["server", "client"]

#: Largest packet the wire format can carry: one type byte, four length bytes, 268,435,455 more.
MAX_PACKET_SIZE = 1 + 4 + MAX_REMAINING_LENGTH

# The packet type sets stay compact, as in the spec's table.
# fmt: off
#: Packets a client may send, i.e. what the server role decodes (§2.1.2 Table 2-1, "Direction of flow").
FROM_CLIENT = frozenset(
    {
        PacketType.CONNECT, PacketType.PUBLISH, PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL,
        PacketType.PUBCOMP, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE, PacketType.PINGREQ,
        PacketType.DISCONNECT, PacketType.AUTH,
    }
)
#: Packets a server may send, i.e. what the client role decodes.
FROM_SERVER = frozenset(
    {
        PacketType.CONNACK, PacketType.PUBLISH, PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL,
        PacketType.PUBCOMP, PacketType.SUBACK, PacketType.UNSUBACK, PacketType.PINGRESP,
        PacketType.DISCONNECT, PacketType.AUTH,
    }
)
# fmt: on

#: The flag nibble §2.1.3 Table 2-2 requires; PUBLISH (DUP, QoS, RETAIN) is checked on its own.
REQUIRED_FLAGS = {PacketType.PUBREL: 0b0010, PacketType.SUBSCRIBE: 0b0010, PacketType.UNSUBSCRIBE: 0b0010}

# Frozen dataclasses set each field through object.__setattr__, which costs the hot path more than all
# the parsing. The decoder fills a PUBLISH's slots through their member descriptors instead (the same
# object, about twice as fast); only if packets.Publish ever gains or reorders fields does it fall back.
_PUBLISH_FIELDS = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties", "topic_wire")
_FAST_PUBLISH = tuple(field.name for field in fields(Publish)) == _PUBLISH_FIELDS
_new_object = object.__new__
(
    _set_topic,
    _set_payload,
    _set_qos,
    _set_retain,
    _set_dup,
    _set_packet_id,
    _set_properties,
    _set_topic_wire,
) = (getattr(Publish, name).__set__ for name in _PUBLISH_FIELDS)
_PUBLISH = int(PacketType.PUBLISH)

#: A first-byte verdict: None (fine) or the reason code and message of the error it means.
FirstByteError = tuple[ReasonCode, str] | None
_first_byte_tables: dict[tuple[Role, int | None], tuple[FirstByteError, ...]] = {}


def _judge_first_byte(first: int, role: Role, level: int | None) -> FirstByteError:
    """What the first byte of a packet (type and flags, §2.1) means for this role and protocol level."""
    packet_type, flags = first >> 4, first & 0x0F
    if packet_type == 0:
        return ReasonCode.MALFORMED_PACKET, "packet type 0 is reserved (§2.1.2)"
    if packet_type == PacketType.AUTH and level == MQTT_3_1_1:
        return ReasonCode.MALFORMED_PACKET, "packet type 15 is reserved in MQTT 3.1.1 (§2.2.1 of 3.1.1)"
    name = PacketType(packet_type).name
    if packet_type == PacketType.PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            return ReasonCode.MALFORMED_PACKET, "PUBLISH with both QoS bits set [MQTT-3.3.1-4]"
        if flags & 0b1000 and qos == 0:
            return ReasonCode.MALFORMED_PACKET, "PUBLISH with DUP=1 and QoS 0 [MQTT-3.3.1-2]"
    elif flags != REQUIRED_FLAGS.get(PacketType(packet_type), 0):
        # [MQTT-2.1.3-1] of 5.0, [MQTT-2.2.2-1]/[MQTT-2.2.2-2] of 3.1.1: reserved flag bits must be
        # exactly as in Table 2-2; anything else is a Malformed Packet.
        return ReasonCode.MALFORMED_PACKET, f"{name} with invalid fixed header flags 0x{flags:X} (§2.1.3)"
    if packet_type not in (FROM_CLIENT if role == "server" else FROM_SERVER):
        sender = "client" if role == "server" else "server"
        return ReasonCode.PROTOCOL_ERROR, f"a {sender} does not send {name} (§2.1.2)"
    if level is None:
        if role == "server" and packet_type != PacketType.CONNECT:
            return ReasonCode.PROTOCOL_ERROR, f"first packet is {name}, not CONNECT [MQTT-3.1.0-1]"
        if role == "client" and packet_type != PacketType.CONNACK:
            return ReasonCode.PROTOCOL_ERROR, f"first packet is {name}, not CONNACK [MQTT-3.2.0-1]"
    return None


def _first_byte_table(role: Role, level: int | None) -> tuple[FirstByteError, ...]:
    key = (role, level)
    table = _first_byte_tables.get(key)
    if table is None:
        table = _first_byte_tables[key] = tuple(_judge_first_byte(b, role, level) for b in range(256))
    return table


class PacketDecoder:
    """Turns the bytes of one connection into packets (h11 style: ``receive_data`` in, packets out).

    Errors: any input yields packets or a ``ProtocolError``. After an error the decoder is dead and every
    later call raises the same error. When a call decodes some packets and then meets an error, it
    returns those packets and keeps the error for the next call (also visible at once as
    ``pending_error``), so the packets that preceded the garbage are still processed.
    """

    __slots__ = (
        "_buffer",
        "_eof",
        "_error",
        "_first_byte_errors",
        "_handshake_seen",
        "_protocol_level",
        "max_packet_size",
        "role",
    )

    def __init__(
        self,
        *,
        role: Role = "server",
        max_packet_size: int = MAX_PACKET_SIZE,
        protocol_level: int | None = None,
    ) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        self.role: Role = role
        #: Largest packet accepted (fixed header included); checked as soon as the length is known.
        self.max_packet_size = max_packet_size
        self._protocol_level: int | None = None
        self._first_byte_errors = _first_byte_table(role, None)
        self.protocol_level = protocol_level
        self._buffer = bytearray()
        self._error: ProtocolError | None = None
        self._eof = False
        # CONNECT (server role) or CONNACK (client role) already decoded: a second one is an error.
        self._handshake_seen = False

    @property
    def protocol_level(self) -> int | None:
        """4 (MQTT 3.1.1) or 5 (MQTT 5.0); None until the CONNECT (server) or CONNACK (client) is seen."""
        return self._protocol_level

    @protocol_level.setter
    def protocol_level(self, level: int | None) -> None:
        if level not in (None, MQTT_3_1_1, MQTT_5):
            raise ValueError(f"protocol_level must be None, 4 or 5, not {level!r}")
        self._protocol_level = level
        self._first_byte_errors = _first_byte_table(self.role, level)

    @property
    def has_partial_packet(self) -> bool:
        """True when bytes of an incomplete packet are buffered (an EOF now cuts a packet short)."""
        return bool(self._buffer)

    @property
    def pending_error(self) -> ProtocolError | None:
        """The error this decoder met, if any; the next ``receive_data`` call raises it."""
        return self._error

    def receive_data(self, data: bytes) -> list[Packet]:
        """Feed bytes from the peer; return every packet they complete. ``b""`` means EOF."""
        if self._error is not None:
            raise self._error
        if not data:
            self._eof = True
            return []
        if self._eof:
            raise RuntimeError("receive_data() called with data after EOF")
        packets: list[Packet] = []
        buffer = self._buffer
        try:
            if buffer:
                buffer += data
                # Until the first buffered packet is complete there is nothing to decode: answer at
                # once, so a large packet arriving in many pieces costs O(piece) per call.
                header = self._parse_fixed_header(buffer, 0)
                if header is None or header[1] > len(buffer):
                    return packets
                view = bytes(buffer)
                buffer.clear()
            else:
                view = data if type(data) is bytes else bytes(data)
            pos = self._decode_packets(view, packets)
        except ProtocolError as exc:
            self._error = exc
            buffer.clear()
            if packets:
                return packets
            raise
        if pos < len(view):
            buffer += memoryview(view)[pos:]
        return packets

    def _parse_fixed_header(self, buf: Buffer, pos: int) -> tuple[int, int] | None:
        """(body start, packet end) of the packet at ``pos``, None if its fixed header is incomplete."""
        verdict = self._first_byte_errors[buf[pos]]
        if verdict is not None:
            raise ProtocolError(*verdict)
        header = decode_varint(buf, pos + 1)
        if header is None:
            return None
        length, body = header
        end = body + length
        if end - pos > self.max_packet_size:
            raise _too_large(end - pos, self.max_packet_size)
        return body, end

    def _decode_packets(self, view: bytes, packets: list[Packet]) -> int:
        """Decode every complete packet in ``view`` into ``packets``; return where the rest starts."""
        n = len(view)
        pos = 0
        first_byte_errors = self._first_byte_errors
        max_size = self.max_packet_size
        v5 = self._protocol_level == MQTT_5
        server = self.role == "server"
        decoders = BODY_DECODERS
        append = packets.append
        fast_publish = _FAST_PUBLISH
        new_object = _new_object
        set_topic, set_payload, set_qos, set_retain = _set_topic, _set_payload, _set_qos, _set_retain
        set_dup, set_packet_id, set_properties = _set_dup, _set_packet_id, _set_properties
        set_topic_wire = _set_topic_wire
        while pos < n:
            first = view[pos]
            verdict = first_byte_errors[first]
            if verdict is not None:
                raise ProtocolError(*verdict)
            if pos + 1 >= n:
                break
            length = view[pos + 1]
            if length < 0x80:
                body = pos + 2
            elif pos + 2 < n and 0 < view[pos + 2] < 0x80:
                # Two-byte Remaining Length (128..16,383), inlined for payloads of a few hundred bytes;
                # a second byte of 0 would be a non-minimal encoding, left to decode_varint to refuse.
                length = (length & 0x7F) | (view[pos + 2] << 7)
                body = pos + 3
            else:
                header = decode_varint(view, pos + 1)
                if header is None:
                    break
                length, body = header
            end = body + length
            # The size limit is enforced from the fixed header alone, before the body is buffered.
            if end - pos > max_size:
                raise _too_large(end - pos, max_size)
            if end > n:
                break
            if first >> 4 != _PUBLISH:
                if first < 0x30:
                    # Type 1 CONNECT or 2 CONNACK (the first-byte table refused type 0).
                    if first < 0x20:
                        append(self._decode_connect(view, body, end))
                    else:
                        append(self._decode_connack(view, body, end))
                    # CONNECT / CONNACK set the protocol level: reload what depends on it.
                    first_byte_errors = self._first_byte_errors
                    v5 = self._protocol_level == MQTT_5
                else:
                    append(decoders[first >> 4](first, view, body, end, v5))
                pos = end
                continue

            # PUBLISH, the hot path: decoded inline, no per-field dispatch (§3.3).
            # The first-byte table has already refused QoS 3 and DUP with QoS 0.
            qos = (first >> 1) & 3
            p = body + 2
            if p > end:
                raise malformed("PUBLISH ends inside the topic length")
            topic_end = p + ((view[body] << 8) | view[body + 1])
            if topic_end > end:
                raise malformed("PUBLISH topic runs past the end of the packet")
            try:
                topic = view[p:topic_end].decode("utf-8")
            except UnicodeDecodeError:
                raise malformed("ill-formed UTF-8 in the PUBLISH topic [MQTT-1.5.4-1]") from None
            p = topic_end
            packet_id: int | None = None
            if qos:
                if p + 2 > end:
                    raise malformed("PUBLISH ends inside the packet identifier")
                packet_id = (view[p] << 8) | view[p + 1]
                if packet_id == 0:
                    raise protocol_violation("PUBLISH with QoS > 0 and packet identifier 0 [MQTT-2.2.1-3]")
                p += 2
            properties = NO_PROPERTIES
            if v5:
                if p >= end:
                    raise malformed("PUBLISH ends before its property length")
                if view[p] == 0:
                    p += 1
                else:
                    properties, p = read_properties(view, p, end, PacketType.PUBLISH)
                    if server and properties.subscription_identifiers:
                        raise protocol_violation(
                            "PUBLISH from a client with a Subscription Identifier [MQTT-3.3.4-6]"
                        )
            if "\x00" in topic:
                raise malformed("PUBLISH topic contains U+0000 [MQTT-1.5.4-2]")
            if "+" in topic or "#" in topic:
                raise ProtocolError(
                    ReasonCode.TOPIC_NAME_INVALID, "PUBLISH topic contains a wildcard [MQTT-3.3.2-2]"
                )
            if not topic and (not v5 or properties.topic_alias is None):
                # 3.1.1: Topic Names are at least one character long [MQTT-4.7.3-1]; 5.0 §3.3.2.1: an
                # empty Topic Name without a Topic Alias is a Protocol Error.
                raise protocol_violation("PUBLISH with an empty topic and no Topic Alias")
            if fast_publish:
                publish = new_object(Publish)
                set_topic(publish, topic)
                set_payload(publish, view[p:end])
                set_qos(publish, qos)
                set_retain(publish, first & 1 == 1)
                set_dup(publish, first & 8 == 8)
                set_packet_id(publish, packet_id)
                set_properties(publish, properties)
                set_topic_wire(publish, view[body:topic_end])
                append(publish)
            else:  # pragma: no cover - only if packets.Publish changes shape
                retain, dup = first & 1 == 1, first & 8 == 8
                wire = view[body:topic_end]
                append(Publish(topic, view[p:end], qos, retain, dup, packet_id, properties, wire))
            pos = end
        return pos

    # --- CONNECT and CONNACK: they change the decoder's state; bodies.py parses them ---------------------

    def _decode_connect(self, view: bytes, body: int, end: int) -> Connect:
        if self._handshake_seen:
            raise protocol_violation("second CONNECT on one connection [MQTT-3.1.0-2]")
        name, level, p = read_protocol(view, body, end)
        # Known from here on (only the server role gets a CONNECT), even if the rest of this CONNECT is
        # bad: a 5.0 client may then be told why in a CONNACK (§4.13.1).
        self.protocol_level = session_level(level)  # 3.1 and the bridge bit: 3.1.1 or 5.0 packets follow
        connect = decode_connect(view, p, end, name, level)
        self._handshake_seen = True
        return connect

    def _decode_connack(self, view: bytes, body: int, end: int) -> ConnAck:
        if self._handshake_seen:
            raise protocol_violation("second CONNACK on one connection [MQTT-3.2.0-2]")
        level = self._protocol_level
        if level is None:
            # Client role without a known level: a 3.1.1 CONNACK is exactly two bytes long, a 5.0 one
            # always carries a property length as well (§3.2.2.3.1).
            level = MQTT_3_1_1 if end - body == 2 else MQTT_5
        connack = decode_connack(view, body, end, level)
        self._handshake_seen = True
        self.protocol_level = level
        return connack


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        ReasonCode.PACKET_TOO_LARGE, f"packet of {size} bytes exceeds the maximum packet size of {limit}"
    )


__all__ = [
    "FROM_CLIENT",
    "FROM_SERVER",
    "MAX_PACKET_SIZE",
    "REQUIRED_FLAGS",
    "PacketDecoder",
    "Role",
]

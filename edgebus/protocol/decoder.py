"""Sans-IO MQTT 3.1.1 / 5.0 decoder: bytes in, validated packets out, for the server or the client role.

Buffering: the bytearray holds only the bytes of one incomplete packet. A call that finds the buffer
empty decodes straight from the caller's bytes (no copy); otherwise it appends, returns at once while
the first packet is still incomplete (so a large packet arriving in pieces costs O(piece) per call),
and once it is complete takes one bytes snapshot to decode from, so payloads are single-copy slices.
The leftover is put back once per call. The first byte of a packet is judged by a 256-entry table
per (role, protocol level), the size limit from the fixed header alone, and PUBLISH is decoded
inline in the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Literal

from edgebus.protocol.enums import (
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
from edgebus.protocol.primitives import (
    MAX_REMAINING_LENGTH,
    Buffer,
    decode_varint,
    read_binary,
    read_string,
    read_u8,
    read_u16,
)
from edgebus.protocol.properties import read_properties

Role = Literal["server", "client"]

#: Largest packet the wire format can carry: one type byte, four length bytes, 268,435,455 more.
MAX_PACKET_SIZE = 1 + 4 + MAX_REMAINING_LENGTH

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

#: The flag nibble §2.1.3 Table 2-2 requires; PUBLISH (DUP, QoS, RETAIN) is checked on its own.
REQUIRED_FLAGS = {PacketType.PUBREL: 0b0010, PacketType.SUBSCRIBE: 0b0010, PacketType.UNSUBSCRIBE: 0b0010}

R = ReasonCode
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
_ACK_CLASSES: dict[int, type[PubAck | PubRec | PubRel | PubComp]] = {
    PacketType.PUBACK: PubAck,
    PacketType.PUBREC: PubRec,
    PacketType.PUBREL: PubRel,
    PacketType.PUBCOMP: PubComp,
}

# Frozen dataclasses set each field through object.__setattr__, which costs the hot path more than all
# the parsing. The decoder fills a PUBLISH's slots through their member descriptors instead (the same
# object, about twice as fast); only if packets.Publish ever gains or reorders fields does it fall back.
_PUBLISH_FIELDS = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")
_FAST_PUBLISH = tuple(field.name for field in fields(Publish)) == _PUBLISH_FIELDS
_new_object = object.__new__
_set_topic, _set_payload, _set_qos, _set_retain, _set_dup, _set_packet_id, _set_properties = (
    getattr(Publish, name).__set__ for name in _PUBLISH_FIELDS
)
_PUBLISH = int(PacketType.PUBLISH)
_PACKET_TYPES = {int(packet_type): packet_type for packet_type in PacketType}

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
        decoders = _DECODERS
        append = packets.append
        fast_publish = _FAST_PUBLISH
        new_object = _new_object
        set_topic, set_payload, set_qos, set_retain = _set_topic, _set_payload, _set_qos, _set_retain
        set_dup, set_packet_id, set_properties = _set_dup, _set_packet_id, _set_properties
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
                append(decoders[first >> 4](self, first, view, body, end))
                if first < 0x30:
                    # CONNECT / CONNACK set the protocol level: reload what depends on it.
                    first_byte_errors = self._first_byte_errors
                    v5 = self._protocol_level == MQTT_5
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
                append(publish)
            else:  # pragma: no cover - only if packets.Publish changes shape
                retain, dup = first & 1 == 1, first & 8 == 8
                append(Publish(topic, view[p:end], qos, retain, dup, packet_id, properties))
            pos = end
        return pos

    # --- one decoder per packet type; each receives the first byte and the body view[body:end] ---

    def _decode_reserved(self, first: int, view: bytes, body: int, end: int) -> Packet:
        raise malformed(f"unexpected packet type {first >> 4}")  # unreachable: kept for the table

    def _decode_connect(self, first: int, view: bytes, body: int, end: int) -> Connect:
        if self._handshake_seen:
            raise protocol_violation("second CONNECT on one connection [MQTT-3.1.0-2]")
        name, p = read_string(view, body, end)
        level, p = read_u8(view, p, end)
        if level not in (MQTT_3_1_1, MQTT_5):
            if name in ("MQTT", "MQIsdp"):
                # [MQTT-3.1.2-2]: the server answers CONNACK 0x01 (3.1.1) / 0x84 (5.0) and closes.
                raise ProtocolError(
                    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
                    f"unsupported protocol level {level} ({name!r}) [MQTT-3.1.2-2]",
                )
            raise malformed(f"protocol name {name!r} is not 'MQTT' [MQTT-3.1.2-1]")
        if name != "MQTT":
            raise malformed(f"protocol name {name!r} is not 'MQTT' [MQTT-3.1.2-1]")
        # Known from here on (only the server role gets a CONNECT), even if the rest of this CONNECT is
        # bad: a 5.0 client may then be told why in a CONNACK (§4.13.1).
        self.protocol_level = level
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
        if level == MQTT_3_1_1 and password_flag and not username_flag:
            raise malformed("3.1.1 CONNECT with a password and no user name [MQTT-3.1.2-22]")
        keep_alive, p = read_u16(view, p, end)
        properties = NO_PROPERTIES
        if level == MQTT_5:
            properties, p = read_properties(view, p, end, PacketType.CONNECT)
        client_id, p = read_string(view, p, end)
        will = None
        if will_flag:
            will_properties = NO_PROPERTIES
            if level == MQTT_5:
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
        self._handshake_seen = True
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

    def _decode_connack(self, first: int, view: bytes, body: int, end: int) -> ConnAck:
        if self._handshake_seen:
            raise protocol_violation("second CONNACK on one connection [MQTT-3.2.0-2]")
        level = self._protocol_level
        if level is None:
            # Client role without a known level: a 3.1.1 CONNACK is exactly two bytes long, a 5.0 one
            # always carries a property length as well (§3.2.2.3.1).
            level = MQTT_3_1_1 if end - body == 2 else MQTT_5
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
        self._handshake_seen = True
        self.protocol_level = level
        return ConnAck(flags == 1, reason_code, properties)

    def _decode_ack(self, first: int, view: bytes, body: int, end: int) -> PubAck | PubRec | PubRel | PubComp:
        packet_type = _PACKET_TYPES[first >> 4]
        packet_id, p = read_u16(view, body, end)
        if packet_id == 0:
            # Acknowledges a PUBLISH / PUBREC, whose identifier is never 0 [MQTT-2.2.1-3].
            raise protocol_violation(f"{packet_type.name} with packet identifier 0 [MQTT-2.2.1-3]")
        cls = _ACK_CLASSES[packet_type]
        if p == end:
            # 3.1.1 always; 5.0 short form: Remaining Length 2 means Success, no properties (§3.4.2.1).
            return cls(packet_id)
        if self._protocol_level != MQTT_5:
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

    def _decode_subscribe(self, first: int, view: bytes, body: int, end: int) -> Subscribe:
        packet_id, p = read_u16(view, body, end)
        if packet_id == 0:
            raise protocol_violation("SUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]")
        v5 = self._protocol_level == MQTT_5
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

    def _decode_suback(self, first: int, view: bytes, body: int, end: int) -> SubAck:
        packet_id, p = read_u16(view, body, end)
        properties = NO_PROPERTIES
        if self._protocol_level == MQTT_5:
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

    def _decode_unsubscribe(self, first: int, view: bytes, body: int, end: int) -> Unsubscribe:
        packet_id, p = read_u16(view, body, end)
        if packet_id == 0:
            raise protocol_violation("UNSUBSCRIBE with packet identifier 0 [MQTT-2.2.1-3]")
        properties = NO_PROPERTIES
        if self._protocol_level == MQTT_5:
            properties, p = read_properties(view, p, end, PacketType.UNSUBSCRIBE)
        topic_filters: list[str] = []
        while p < end:
            topic_filter, p = read_string(view, p, end)
            topic_filters.append(topic_filter)
        if not topic_filters:
            raise protocol_violation("UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]")
        return Unsubscribe(packet_id, tuple(topic_filters), properties)

    def _decode_unsuback(self, first: int, view: bytes, body: int, end: int) -> UnsubAck:
        packet_id, p = read_u16(view, body, end)
        if self._protocol_level != MQTT_5:
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

    def _decode_ping(self, first: int, view: bytes, body: int, end: int) -> PingReq | PingResp:
        _expect_end(body, end, "PINGREQ/PINGRESP")  # no variable header, no payload (§3.12, §3.13)
        return PingReq() if first >> 4 == PacketType.PINGREQ else PingResp()

    def _decode_disconnect(self, first: int, view: bytes, body: int, end: int) -> Disconnect:
        if self._protocol_level != MQTT_5:
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

    def _decode_auth(self, first: int, view: bytes, body: int, end: int) -> Auth:
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
    if pos != end:
        raise malformed(f"{what}: Remaining Length is longer than its contents")


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        ReasonCode.PACKET_TOO_LARGE, f"packet of {size} bytes exceeds the maximum packet size of {limit}"
    )


__all__ = [
    "FROM_CLIENT",
    "FROM_SERVER",
    "MAX_PACKET_SIZE",
    "REASON_CODES",
    "REQUIRED_FLAGS",
    "SUBACK_RETURN_CODES_3_1_1",
    "PacketDecoder",
    "Role",
]


# Body decoders by packet type (the high nibble of the first byte). A class-level table of plain
# functions rather than a per-instance tuple of bound methods: that tuple cost ~1 KiB per connection.
_DECODERS: tuple[Callable[[PacketDecoder, int, bytes, int, int], Packet], ...] = (
    PacketDecoder._decode_reserved,  # 0 never gets here: the first-byte table rejects it
    PacketDecoder._decode_connect,
    PacketDecoder._decode_connack,
    PacketDecoder._decode_reserved,  # PUBLISH is decoded inline in _decode_packets
    PacketDecoder._decode_ack,
    PacketDecoder._decode_ack,
    PacketDecoder._decode_ack,
    PacketDecoder._decode_ack,
    PacketDecoder._decode_subscribe,
    PacketDecoder._decode_suback,
    PacketDecoder._decode_unsubscribe,
    PacketDecoder._decode_unsuback,
    PacketDecoder._decode_ping,
    PacketDecoder._decode_ping,
    PacketDecoder._decode_disconnect,
    PacketDecoder._decode_auth,
)

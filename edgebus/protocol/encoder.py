"""MQTT 3.1.1 / 5.0 encoder: packets in, bytes out; plus the PUBLISH fast path for the broker's writer."""

from __future__ import annotations

from collections.abc import Callable
from struct import error as StructError
from typing import Any

from edgebus.protocol.enums import MQTT_3_1_1, MQTT_5, PacketType, session_level
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
    UnsubAck,
    Unsubscribe,
)
from edgebus.protocol.primitives import (
    MAX_REMAINING_LENGTH,
    MAX_STRING_BYTES,
    encode_binary,
    encode_string,
    encode_varint,
    pack_u16,
)
from edgebus.protocol.properties import encode_properties

_EMPTY_PROPERTIES = b"\x00"
_PINGREQ = b"\xc0\x00"
_PINGRESP = b"\xd0\x00"
_DISCONNECT_NORMAL = b"\xe0\x00"
_AUTH_SUCCESS = b"\xf0\x00"


def fixed_header(first_byte: int, remaining_length: int) -> bytes:
    """The fixed header (§2.1): the type-and-flags byte, then the Remaining Length varint."""
    if 0 <= remaining_length < 128:
        return bytes((first_byte, remaining_length))
    return bytes((first_byte,)) + encode_varint(remaining_length)


def _packet(first_byte: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return fixed_header(first_byte, len(body)) + body


def _check_version(protocol_level: int) -> None:
    if protocol_level != MQTT_5 and protocol_level != MQTT_3_1_1:
        raise ValueError(f"protocol_level must be 4 or 5, not {protocol_level!r}")


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    protocol_level: int,
    properties: Properties = NO_PROPERTIES,
) -> bytes:
    """A PUBLISH packet (§3.3) from its parts, without building a ``Publish`` first.

    ValueError for what the peer would reject: QoS outside 0..2, a packet identifier present with QoS 0
    or missing/0 with QoS > 0 [MQTT-2.2.1-2], [MQTT-2.2.1-3], DUP with QoS 0 [MQTT-3.3.1-2], a topic
    with U+0000 or over 65,535 bytes, an empty topic without a Topic Alias. On 3.1.1 ``properties``
    are not written.
    """
    topic_bytes = topic.encode("utf-8")
    topic_length = len(topic_bytes)
    if topic_length > MAX_STRING_BYTES or "\x00" in topic:
        raise ValueError("PUBLISH topic longer than 65,535 bytes or containing U+0000 (§1.5.4)")
    if not topic_length and (protocol_level != MQTT_5 or properties.topic_alias is None):
        raise ValueError("PUBLISH with an empty topic needs MQTT 5.0 and a Topic Alias (§3.3.2.1)")
    if qos:
        if qos != 1 and qos != 2:
            raise ValueError(f"PUBLISH QoS must be 0, 1 or 2, not {qos!r}")
        if not packet_id or packet_id > 0xFFFF:
            raise ValueError(f"PUBLISH with QoS {qos} needs a packet identifier 1..65535 [MQTT-2.2.1-3]")
        variable = pack_u16(topic_length) + topic_bytes + pack_u16(packet_id)
    else:
        if packet_id is not None:
            raise ValueError("PUBLISH with QoS 0 must not carry a packet identifier [MQTT-2.2.1-2]")
        if dup:
            raise ValueError("PUBLISH with QoS 0 must have DUP 0 [MQTT-3.3.1-2]")
        variable = pack_u16(topic_length) + topic_bytes
    if protocol_level == MQTT_5:
        if properties is NO_PROPERTIES:
            variable += _EMPTY_PROPERTIES
        else:
            variable += encode_properties(properties, PacketType.PUBLISH)
    elif protocol_level != MQTT_3_1_1:
        raise ValueError(f"protocol_level must be 4 or 5, not {protocol_level!r}")
    first = 0x30 | (qos << 1)
    if dup:
        first |= 0x08
    if retain:
        first |= 0x01
    remaining_length = len(variable) + len(payload)
    if remaining_length > MAX_REMAINING_LENGTH:
        raise ValueError(f"PUBLISH of {remaining_length} bytes exceeds the maximum Remaining Length")
    return b"".join((fixed_header(first, remaining_length), variable, payload))


def _encode_publish(packet: Publish, protocol_level: int) -> bytes:
    return encode_publish(
        packet.topic,
        packet.payload,
        qos=packet.qos,
        retain=packet.retain,
        dup=packet.dup,
        packet_id=packet.packet_id,
        protocol_level=protocol_level,
        properties=packet.properties,
    )


def _encode_connect(packet: Connect, protocol_level: int) -> bytes:
    # The level byte is written as the packet has it: 3 (3.1, "MQIsdp"), 4, 5, bridge bit included.
    if session_level(packet.protocol_level) != session_level(protocol_level):
        raise ValueError(
            f"Connect.protocol_level {packet.protocol_level} differs from protocol_level {protocol_level}"
        )
    v5 = session_level(protocol_level) == MQTT_5
    flags = 0x02 if packet.clean_start else 0
    will = packet.will
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise ValueError(f"Will QoS must be 0, 1 or 2, not {will.qos!r} [MQTT-3.1.2-12]")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if packet.password is not None:
        if not v5 and packet.username is None:
            raise ValueError("3.1.1 CONNECT with a password needs a user name [MQTT-3.1.2-22]")
        flags |= 0x40
    if packet.username is not None:
        flags |= 0x80
    parts = [
        encode_string(packet.protocol_name),
        bytes((packet.protocol_level, flags)),
        pack_u16(packet.keep_alive),
    ]
    if v5:
        parts.append(encode_properties(packet.properties, PacketType.CONNECT))
    parts.append(encode_string(packet.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties, "will"))
        parts.append(encode_string(will.topic))
        parts.append(encode_binary(will.payload))
    if packet.username is not None:
        parts.append(encode_string(packet.username))
    if packet.password is not None:
        parts.append(encode_binary(packet.password))
    return _packet(0x10, *parts)


def _encode_connack(packet: ConnAck, protocol_level: int) -> bytes:
    flags = 1 if packet.session_present else 0
    if protocol_level == MQTT_5:
        return _packet(
            0x20, bytes((flags, packet.reason_code)), encode_properties(packet.properties, PacketType.CONNACK)
        )
    if not 0 <= packet.reason_code <= 5:
        raise ValueError(f"3.1.1 CONNACK return code must be 0..5, not {packet.reason_code}")
    return bytes((0x20, 0x02, flags, packet.reason_code))


def _encode_ack(packet: PubAck | PubRec | PubRel | PubComp, protocol_level: int) -> bytes:
    first = 0x62 if packet.packet_type is PacketType.PUBREL else packet.packet_type << 4  # §2.1.3 flags
    packet_id = pack_u16(packet.packet_id)
    if protocol_level != MQTT_5:
        # 3.1.1 has neither reason code nor properties here: they are not written.
        _check_version(protocol_level)
        return bytes((first, 2)) + packet_id
    properties = encode_properties(packet.properties, packet.packet_type)
    if properties == _EMPTY_PROPERTIES:
        if packet.reason_code == 0:
            return bytes((first, 2)) + packet_id  # short form, Remaining Length 2 (§3.4.2.1)
        return bytes((first, 3)) + packet_id + bytes((packet.reason_code,))  # no property length (§3.4.2.2.1)
    return _packet(first, packet_id, bytes((packet.reason_code,)), properties)


def _encode_subscribe(packet: Subscribe, protocol_level: int) -> bytes:
    v5 = protocol_level == MQTT_5
    _check_version(protocol_level)
    parts = [pack_u16(packet.packet_id)]
    if v5:
        parts.append(encode_properties(packet.properties, PacketType.SUBSCRIBE))
    for subscription in packet.subscriptions:
        options = subscription.qos
        if options not in (0, 1, 2):
            raise ValueError(f"subscription Maximum QoS must be 0, 1 or 2, not {options!r}")
        if v5:
            # §3.8.3.1; on 3.1.1 only the QoS bits exist, the 5.0 options are not written.
            options |= (
                (0x04 if subscription.no_local else 0)
                | (0x08 if subscription.retain_as_published else 0)
                | (subscription.retain_handling << 4)
            )
        parts.append(encode_string(subscription.topic_filter))
        parts.append(bytes((options,)))
    return _packet(0x82, *parts)


def _encode_suback(packet: SubAck, protocol_level: int) -> bytes:
    if protocol_level == MQTT_5:
        return _packet(
            0x90,
            pack_u16(packet.packet_id),
            encode_properties(packet.properties, PacketType.SUBACK),
            bytes(packet.reason_codes),
        )
    _check_version(protocol_level)
    # 3.1.1 has a single failure code, 0x80 [MQTT-3.9.3-2]: 5.0 failure codes (0x8F ...) map to it.
    codes = bytes(code if code < 0x80 else 0x80 for code in packet.reason_codes)
    return _packet(0x90, pack_u16(packet.packet_id), codes)


def _encode_unsubscribe(packet: Unsubscribe, protocol_level: int) -> bytes:
    parts = [pack_u16(packet.packet_id)]
    if protocol_level == MQTT_5:
        parts.append(encode_properties(packet.properties, PacketType.UNSUBSCRIBE))
    else:
        _check_version(protocol_level)
    parts.extend(encode_string(topic_filter) for topic_filter in packet.topic_filters)
    return _packet(0xA2, *parts)


def _encode_unsuback(packet: UnsubAck, protocol_level: int) -> bytes:
    if protocol_level == MQTT_5:
        return _packet(
            0xB0,
            pack_u16(packet.packet_id),
            encode_properties(packet.properties, PacketType.UNSUBACK),
            bytes(packet.reason_codes),
        )
    _check_version(protocol_level)
    return b"\xb0\x02" + pack_u16(packet.packet_id)  # 3.1.1 UNSUBACK has no payload (§3.11.3 of 3.1.1)


def _encode_pingreq(packet: PingReq, protocol_level: int) -> bytes:
    return _PINGREQ


def _encode_pingresp(packet: PingResp, protocol_level: int) -> bytes:
    return _PINGRESP


def _encode_disconnect(packet: Disconnect, protocol_level: int) -> bytes:
    if protocol_level != MQTT_5:
        _check_version(protocol_level)
        return _DISCONNECT_NORMAL  # 3.1.1: no variable header, the reason code is not written
    properties = encode_properties(packet.properties, PacketType.DISCONNECT)
    if properties == _EMPTY_PROPERTIES:
        if packet.reason_code == 0:
            return _DISCONNECT_NORMAL  # Remaining Length 0 (§3.14.2.1)
        return bytes((0xE0, 1, packet.reason_code))  # no property length (§3.14.2.2.1)
    return _packet(0xE0, bytes((packet.reason_code,)), properties)


def _encode_auth(packet: Auth, protocol_level: int) -> bytes:
    if protocol_level != MQTT_5:
        raise ValueError("AUTH exists only in MQTT 5.0 (§3.15)")
    properties = encode_properties(packet.properties, PacketType.AUTH)
    if packet.reason_code == 0 and properties == _EMPTY_PROPERTIES:
        return _AUTH_SUCCESS  # Remaining Length 0 (§3.15.2.1)
    return _packet(0xF0, bytes((packet.reason_code,)), properties)


_ENCODERS: dict[type[Any], Callable[[Any, int], bytes]] = {
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Publish: _encode_publish,
    PubAck: _encode_ack,
    PubRec: _encode_ack,
    PubRel: _encode_ack,
    PubComp: _encode_ack,
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _encode_unsuback,
    PingReq: _encode_pingreq,
    PingResp: _encode_pingresp,
    Disconnect: _encode_disconnect,
    Auth: _encode_auth,
}


def encode(packet: Packet, protocol_level: int) -> bytes:
    """The wire bytes of ``packet`` for protocol level 4 (3.1.1) or 5 (5.0); 3 (3.1) is written as 3.1.1,
    but for a CONNECT, whose protocol name and level byte are the packet's.

    On 3.1.1 properties, ack reason codes and the 5.0 subscription options are not written, and 5.0
    SUBACK failure codes become 0x80; on 5.0 properties the packet does not allow are not written.
    ValueError for what cannot be encoded (a value out of range, AUTH on 3.1.1 ...).
    """
    if protocol_level < MQTT_3_1_1 or protocol_level > MQTT_5:
        protocol_level = session_level(protocol_level)  # 3 (3.1) encodes as 3.1.1; a CONNECT keeps its byte
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise TypeError(f"not an MQTT packet: {packet!r}")
    try:
        return encoder(packet, protocol_level)
    except StructError as exc:  # a two byte field (packet id, keep alive ...) out of 0..65535
        raise ValueError(f"cannot encode {type(packet).__name__}: {exc}") from None


__all__ = ["encode", "encode_publish", "fixed_header"]

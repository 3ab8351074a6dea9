"""One test per validation rule of the decoder, each citing the normative statement it checks."""

from __future__ import annotations

import pytest

from edgebus.protocol import (
    MQTT_3_1_1,
    MQTT_5,
    Connect,
    Disconnect,
    Packet,
    PacketDecoder,
    Properties,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    Subscribe,
    Subscription,
)
from edgebus.protocol.decoder import Role
from edgebus.protocol.primitives import encode_varint

MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL_ERROR = ReasonCode.PROTOCOL_ERROR


def packet(first: int, body_hex: str = "") -> bytes:
    """A packet with its Remaining Length computed: first byte, varint length, body."""
    body = bytes.fromhex(body_hex)
    return bytes((first,)) + encode_varint(len(body)) + body


def connect_body(level: int, flags: int, rest_hex: str = "0000", name_hex: str = "0004 4D515454") -> str:
    """CONNECT variable header and payload: name, level, flags, keep alive 60, then ``rest_hex``."""
    props = " 00" if level == MQTT_5 else ""
    return f"{name_hex} {level:02X} {flags:02X} 003C{props} {rest_hex}"


def error_of(data: bytes, *, role: Role = "server", level: int | None = None) -> ProtocolError:
    decoder = PacketDecoder(role=role, protocol_level=level)
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(data)
    return info.value


def decodes(data: bytes, *, role: Role = "server", level: int | None = None) -> list[Packet]:
    return PacketDecoder(role=role, protocol_level=level).receive_data(data)


BOTH_LEVELS = pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])

# ------------------------------------------------------------------ fixed header (§2.1)


RESERVED_FLAG_CASES = [
    (0x11, "server"),  # CONNECT flags must be 0
    (0x28, "client"),  # CONNACK
    (0x41, "server"),  # PUBACK
    (0x52, "server"),  # PUBREC
    (0x60, "server"),  # PUBREL must be 0b0010
    (0x63, "server"),
    (0x72, "server"),  # PUBCOMP
    (0x80, "server"),  # SUBSCRIBE must be 0b0010
    (0x8A, "server"),
    (0x94, "client"),  # SUBACK
    (0xA0, "server"),  # UNSUBSCRIBE must be 0b0010
    (0xB1, "client"),  # UNSUBACK
    (0xC8, "server"),  # PINGREQ
    (0xD2, "client"),  # PINGRESP
    (0xE1, "server"),  # DISCONNECT
    (0xF4, "server"),  # AUTH (5.0 only)
]


@pytest.mark.parametrize(
    ("first", "role", "level"),
    [
        (first, role, level)
        for first, role in RESERVED_FLAG_CASES
        for level in (MQTT_3_1_1, MQTT_5)
        if first >> 4 != 15 or level == MQTT_5
    ],
)
def test_reserved_fixed_header_flags_are_malformed(first: int, role: Role, level: int) -> None:
    # [MQTT-2.1.3-1] (5.0) / [MQTT-2.2.2-1], [MQTT-2.2.2-2] (3.1.1): flags exactly as in Table 2-2.
    decoder_level = None if first >> 4 == 1 else level
    # The first byte alone is enough: the decoder does not wait for the rest of the packet.
    assert error_of(bytes((first,)), role=role, level=decoder_level).reason_code == MALFORMED


@BOTH_LEVELS
def test_pubrel_subscribe_unsubscribe_flags_0010_are_accepted(level: int) -> None:
    # §2.1.3 Table 2-2: PUBREL, SUBSCRIBE and UNSUBSCRIBE carry 0b0010.
    assert decodes(packet(0x62, "0001"), level=level)
    assert decodes(packet(0x82, "0001" + ("00" if level == MQTT_5 else "") + "0001 61 00"), level=level)
    assert decodes(packet(0xA2, "0001" + ("00" if level == MQTT_5 else "") + "0001 61"), level=level)


@BOTH_LEVELS
def test_publish_with_both_qos_bits_is_malformed(level: int) -> None:
    # [MQTT-3.3.1-4]: a PUBLISH with both QoS bits set is a Malformed Packet.
    for first in (0x36, 0x37, 0x3E, 0x3F):
        assert error_of(bytes((first,)), level=level).reason_code == MALFORMED


@BOTH_LEVELS
def test_publish_dup_with_qos0_is_malformed(level: int) -> None:
    # [MQTT-3.3.1-2]: the DUP flag MUST be 0 for all QoS 0 messages.
    for first in (0x38, 0x39):
        assert error_of(bytes((first,)), level=level).reason_code == MALFORMED


@pytest.mark.parametrize("role", ["server", "client"])
@BOTH_LEVELS
def test_packet_type_0_is_malformed(role: Role, level: int) -> None:
    # §2.1.2 Table 2-1: packet type 0 is Reserved ("Forbidden").
    assert error_of(b"\x00\x00", role=role, level=level).reason_code == MALFORMED


@pytest.mark.parametrize("role", ["server", "client"])
def test_packet_type_15_is_malformed_on_3_1_1(role: Role) -> None:
    # §2.2.1 of 3.1.1: type 15 is Reserved; AUTH exists only in 5.0.
    assert error_of(b"\xf0\x00", role=role, level=MQTT_3_1_1).reason_code == MALFORMED
    assert decodes(b"\xf0\x00", role=role, level=MQTT_5)


@pytest.mark.parametrize("first", [0x20, 0x90, 0xB0, 0xD0])
def test_server_role_refuses_packets_only_a_server_sends(first: int) -> None:
    # §2.1.2 Table 2-1 "Direction of flow": CONNACK, SUBACK, UNSUBACK, PINGRESP go server to client.
    assert error_of(bytes((first,)), role="server", level=MQTT_5).reason_code == PROTOCOL_ERROR


@pytest.mark.parametrize("first", [0x10, 0x82, 0xA2, 0xC0])
def test_client_role_refuses_packets_only_a_client_sends(first: int) -> None:
    # §2.1.2 Table 2-1: CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ go client to server.
    assert error_of(bytes((first,)), role="client", level=MQTT_5).reason_code == PROTOCOL_ERROR


@pytest.mark.parametrize("first", [0x30, 0x40, 0x62, 0x82, 0xA2, 0xC0, 0xE0, 0xF0])
def test_first_packet_must_be_connect(first: int) -> None:
    # [MQTT-3.1.0-1]: the first packet from the client MUST be a CONNECT.
    assert error_of(bytes((first,)), role="server").reason_code == PROTOCOL_ERROR


def test_second_connect_is_a_protocol_error() -> None:
    # [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error.
    connect = packet(0x10, connect_body(MQTT_5, 0x02))
    decoder = PacketDecoder()
    assert len(decoder.receive_data(connect)) == 1
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(connect)
    assert info.value.reason_code == PROTOCOL_ERROR


@BOTH_LEVELS
def test_second_connack_is_a_protocol_error(level: int) -> None:
    # [MQTT-3.2.0-2]: the server MUST NOT send more than one CONNACK.
    connack = b"\x20\x02\x00\x00" if level == MQTT_3_1_1 else b"\x20\x03\x00\x00\x00"
    decoder = PacketDecoder(role="client", protocol_level=level)
    assert len(decoder.receive_data(connack)) == 1
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(connack)
    assert info.value.reason_code == PROTOCOL_ERROR


def test_client_role_without_a_level_wants_connack_first() -> None:
    # [MQTT-3.2.0-1]: the first packet the server sends is CONNACK.
    assert error_of(b"\x30\x03\x00\x01\x74", role="client").reason_code == PROTOCOL_ERROR


# ------------------------------------------------------------------ Remaining Length vs contents


@BOTH_LEVELS
def test_body_shorter_than_its_contents_is_malformed(level: int) -> None:
    # §2.1.4 / §1.5.4: the topic length says 10 bytes but the packet ends after 3.
    assert error_of(packet(0x30, "000A 612F62"), level=level).reason_code == MALFORMED
    # A QoS 1 PUBLISH that ends inside its packet identifier.
    assert error_of(packet(0x32, "0001 61 00"), level=level).reason_code == MALFORMED
    # A PUBACK with one byte of packet identifier.
    assert error_of(packet(0x40, "00"), level=level).reason_code == MALFORMED


@BOTH_LEVELS
def test_body_longer_than_its_contents_is_malformed(level: int) -> None:
    props = " 00" if level == MQTT_5 else ""
    assert error_of(packet(0x10, connect_body(level, 0x02) + " FF")).reason_code == MALFORMED
    assert error_of(packet(0xB0, "0001 00 00 FF"), role="client", level=MQTT_3_1_1).reason_code == MALFORMED
    assert error_of(packet(0x82, "0001" + props + " 0001 61 00 FF"), level=level).reason_code == MALFORMED
    assert error_of(packet(0xA2, "0001" + props + " 0001 61 FF"), level=level).reason_code == MALFORMED


def test_3_1_1_ack_with_more_than_a_packet_id_is_malformed() -> None:
    # §3.4.1 of 3.1.1: the Remaining Length of PUBACK (PUBREC, PUBREL, PUBCOMP) is 2.
    for first in (0x40, 0x50, 0x62, 0x70):
        assert error_of(packet(first, "0001 00"), level=MQTT_3_1_1).reason_code == MALFORMED


@pytest.mark.parametrize("first", [0xC0, 0xE0])
def test_3_1_1_pingreq_and_disconnect_have_no_body(first: int) -> None:
    # §3.12.1 / §3.14.1 of 3.1.1: PINGREQ and DISCONNECT have a Remaining Length of 0.
    assert error_of(packet(first, "00"), level=MQTT_3_1_1).reason_code == MALFORMED


@pytest.mark.parametrize("first", [0xC0, 0xD0])
def test_5_pingreq_and_pingresp_have_no_body(first: int) -> None:
    # §3.12.1 / §3.13.1: no variable header and no payload.
    role: Role = "server" if first == 0xC0 else "client"
    assert error_of(packet(first, "00"), role=role, level=MQTT_5).reason_code == MALFORMED


# ------------------------------------------------------------------ CONNECT (§3.1)


@BOTH_LEVELS
def test_connect_reserved_flag_is_malformed(level: int) -> None:
    # [MQTT-3.1.2-3]: the reserved flag in the Connect Flags MUST be 0.
    assert error_of(packet(0x10, connect_body(level, 0x03))).reason_code == MALFORMED


@BOTH_LEVELS
def test_will_qos_3_is_malformed(level: int) -> None:
    # [MQTT-3.1.2-12] (5.0) / [MQTT-3.1.2-14] (3.1.1): Will QoS MUST NOT be 3.
    will_props = "00 " if level == MQTT_5 else ""
    rest = f"0000 {will_props}0001 74 0000"
    assert error_of(packet(0x10, connect_body(level, 0x1E, rest))).reason_code == MALFORMED


@BOTH_LEVELS
def test_will_qos_without_will_flag_is_malformed(level: int) -> None:
    # [MQTT-3.1.2-11] (5.0) / [MQTT-3.1.2-13] (3.1.1): Will Flag 0 means Will QoS 0.
    assert error_of(packet(0x10, connect_body(level, 0x0A))).reason_code == MALFORMED


@BOTH_LEVELS
def test_will_retain_without_will_flag_is_malformed(level: int) -> None:
    # [MQTT-3.1.2-13] (5.0) / [MQTT-3.1.2-15] (3.1.1): Will Flag 0 means Will Retain 0.
    assert error_of(packet(0x10, connect_body(level, 0x22))).reason_code == MALFORMED


def test_3_1_1_password_without_user_name_is_malformed() -> None:
    # [MQTT-3.1.2-22] of 3.1.1: User Name Flag 0 means Password Flag 0. (5.0 allows it, §3.1.2.9.)
    assert error_of(packet(0x10, connect_body(MQTT_3_1_1, 0x42, "0000 0001 70"))).reason_code == MALFORMED
    (accepted,) = decodes(packet(0x10, connect_body(MQTT_5, 0x42, "0000 0001 70")))
    assert isinstance(accepted, Connect)
    assert accepted.password == b"p"
    assert accepted.username is None


@pytest.mark.parametrize(
    ("name_hex", "level"),
    [
        ("0006 4D5149736470", 6),  # "MQIsdp" / 6 (3.1 is "MQIsdp" / 3, accepted)
        ("0004 4D515454", 3),
        ("0004 4D515454", 6),  # a future level
        ("0004 4D515454", 0),
    ],
)
def test_unsupported_protocol_level(name_hex: str, level: int) -> None:
    # [MQTT-3.1.2-2]: an unsupported level is answered with CONNACK 0x01 (3.1.1) / 0x84 (5.0).
    data = packet(0x10, f"{name_hex} {level:02X} 02 003C 0000")
    error = error_of(data)
    assert error.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION


@pytest.mark.parametrize(
    ("name_hex", "level"),
    [
        ("0004 4D515458", 4),  # "MQTX"
        ("0004 6D717474", 5),  # "mqtt": the name is case sensitive (§3.1.2.1)
        ("0006 4D5149736470", 4),  # "MQIsdp" with level 4
        ("0000", 5),
    ],
)
def test_wrong_protocol_name_is_malformed(name_hex: str, level: int) -> None:
    # [MQTT-3.1.2-1]: a wrong protocol name: the server MAY close without CONNACK.
    data = packet(0x10, connect_body(level, 0x02, name_hex=name_hex))
    assert error_of(data).reason_code == MALFORMED


def test_level_is_known_even_when_the_rest_of_connect_is_bad() -> None:
    # §4.13.1: before CONNACK a 5.0 server may answer a bad CONNECT with a CONNACK reason code, so the
    # decoder records the level as soon as it has read it.
    decoder = PacketDecoder()
    with pytest.raises(ProtocolError):
        decoder.receive_data(packet(0x10, connect_body(MQTT_5, 0x03)))
    assert decoder.protocol_level == MQTT_5


# ------------------------------------------------------------------ PUBLISH (§3.3)


@pytest.mark.parametrize("topic_hex", ["2B", "612F2B2F62", "23", "612F23"])
@BOTH_LEVELS
def test_publish_topic_with_wildcard_is_topic_name_invalid(topic_hex: str, level: int) -> None:
    # [MQTT-3.3.2-2]: the Topic Name in a PUBLISH MUST NOT contain wildcard characters.
    props = " 00" if level == MQTT_5 else ""
    data = packet(0x30, f"{len(topic_hex) // 2:04X} {topic_hex}{props}")
    assert error_of(data, level=level).reason_code == ReasonCode.TOPIC_NAME_INVALID


def test_3_1_1_publish_with_empty_topic_is_a_protocol_error() -> None:
    # [MQTT-4.7.3-1]: Topic Names are at least one character long.
    assert error_of(packet(0x30, "0000 6869"), level=MQTT_3_1_1).reason_code == PROTOCOL_ERROR


def test_5_publish_with_empty_topic_needs_a_topic_alias() -> None:
    # §3.3.2.1 of 5.0: a zero length Topic Name without a Topic Alias is a Protocol Error.
    assert error_of(packet(0x30, "0000 00 6869"), level=MQTT_5).reason_code == PROTOCOL_ERROR
    assert error_of(packet(0x30, "0000 02 0101"), level=MQTT_5).reason_code == PROTOCOL_ERROR
    assert decodes(packet(0x30, "0000 03 230001 6869"), level=MQTT_5) == [
        Publish("", b"hi", properties=Properties(topic_alias=1))
    ]


@pytest.mark.parametrize("first", [0x32, 0x34])
@BOTH_LEVELS
def test_publish_qos_above_0_with_packet_id_0_is_a_protocol_error(first: int, level: int) -> None:
    # [MQTT-2.2.1-3]: a PUBLISH with QoS > 0 carries a non-zero Packet Identifier.
    props = " 00" if level == MQTT_5 else ""
    assert error_of(packet(first, "0001 74 0000" + props), level=level).reason_code == PROTOCOL_ERROR


def test_publish_from_a_client_must_not_carry_a_subscription_identifier() -> None:
    # [MQTT-3.3.4-6]: a PUBLISH from a client MUST NOT contain a Subscription Identifier.
    data = packet(0x30, "0001 74 02 0B01")
    assert error_of(data, role="server", level=MQTT_5).reason_code == PROTOCOL_ERROR
    assert decodes(data, role="client", level=MQTT_5) == [
        Publish("t", b"", properties=Properties(subscription_identifiers=(1,)))
    ]


@BOTH_LEVELS
def test_publish_qos0_has_no_packet_id(level: int) -> None:
    # [MQTT-2.2.1-2]: a QoS 0 PUBLISH has no Packet Identifier: the two bytes belong to the payload.
    props = " 00" if level == MQTT_5 else ""
    assert decodes(packet(0x30, "0001 74" + props + " 0000"), level=level) == [Publish("t", b"\x00\x00")]


# ------------------------------------------------------------------ SUBSCRIBE / UNSUBSCRIBE (§3.8, §3.10)


@BOTH_LEVELS
def test_subscribe_with_packet_id_0_is_a_protocol_error(level: int) -> None:
    # [MQTT-2.2.1-3]: SUBSCRIBE carries a non-zero Packet Identifier.
    props = " 00" if level == MQTT_5 else ""
    assert error_of(packet(0x82, "0000" + props + " 0001 61 00"), level=level).reason_code == PROTOCOL_ERROR


@BOTH_LEVELS
def test_unsubscribe_with_packet_id_0_is_a_protocol_error(level: int) -> None:
    # [MQTT-2.2.1-3]: UNSUBSCRIBE carries a non-zero Packet Identifier.
    props = " 00" if level == MQTT_5 else ""
    assert error_of(packet(0xA2, "0000" + props + " 0001 61"), level=level).reason_code == PROTOCOL_ERROR


@BOTH_LEVELS
def test_subscribe_without_topic_filter_is_a_protocol_error(level: int) -> None:
    # [MQTT-3.8.3-3]: the payload MUST contain at least one Topic Filter / Subscription Options pair.
    props = " 00" if level == MQTT_5 else ""
    assert error_of(packet(0x82, "0001" + props), level=level).reason_code == PROTOCOL_ERROR


@BOTH_LEVELS
def test_unsubscribe_without_topic_filter_is_a_protocol_error(level: int) -> None:
    # [MQTT-3.10.3-2]: the payload MUST contain at least one Topic Filter.
    props = " 00" if level == MQTT_5 else ""
    assert error_of(packet(0xA2, "0001" + props), level=level).reason_code == PROTOCOL_ERROR


@pytest.mark.parametrize("options", [0x40, 0x80, 0xC1])
def test_subscription_options_reserved_bits_are_malformed(options: int) -> None:
    # [MQTT-3.8.3-5]: reserved bits 6-7 of the Subscription Options MUST be 0.
    data = packet(0x82, f"0001 00 0001 61 {options:02X}")
    assert error_of(data, level=MQTT_5).reason_code == MALFORMED


def test_5_subscription_maximum_qos_3_is_a_protocol_error() -> None:
    # §3.8.3.1 of 5.0: "It is a Protocol Error if the Maximum QoS field has the value 3."
    assert error_of(packet(0x82, "0001 00 0001 61 03"), level=MQTT_5).reason_code == PROTOCOL_ERROR


def test_5_subscription_retain_handling_3_is_a_protocol_error() -> None:
    # §3.8.3.1 of 5.0: "It is a Protocol Error to send a Retain Handling value of 3."
    assert error_of(packet(0x82, "0001 00 0001 61 30"), level=MQTT_5).reason_code == PROTOCOL_ERROR


@pytest.mark.parametrize("options", [0x03, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80])
def test_3_1_1_subscription_options_beyond_qos_are_malformed(options: int) -> None:
    # [MQTT-3-8.3-4] of 3.1.1: reserved bits non-zero or QoS not 0, 1, 2 is malformed.
    data = packet(0x82, f"0001 0001 61 {options:02X}")
    assert error_of(data, level=MQTT_3_1_1).reason_code == MALFORMED


def test_topic_filter_wildcard_placement_is_left_to_the_broker() -> None:
    # The broker answers a bad filter with SUBACK 0x8F per filter (§3.9.3), so the codec lets it pass.
    data = packet(0x82, "0001 00 0003 612B62 00 0001 23 01")
    assert decodes(data, level=MQTT_5) == [
        Subscribe(1, (Subscription("a+b", 0), Subscription("#", 1)))
    ]


# ------------------------------------------------------------------ 5.0 acks, DISCONNECT, AUTH


@pytest.mark.parametrize(("first", "cls"), [(0x40, PubAck), (0x50, PubRec), (0x62, PubRel), (0x70, PubComp)])
def test_5_ack_short_forms(first: int, cls: type[PubAck | PubRec | PubRel | PubComp]) -> None:
    # §3.4.2.1: Remaining Length 2 means Success and no properties; §3.4.2.2.1: below 4, no property
    # length; Remaining Length 0 or 1 cannot hold the packet identifier.
    code = 0x10 if first in (0x40, 0x50) else 0x92
    assert decodes(packet(first, "0005"), level=MQTT_5) == [cls(5)]
    assert decodes(packet(first, f"0005 {code:02X}"), level=MQTT_5) == [cls(5, code)]
    assert decodes(packet(first, f"0005 {code:02X} 04 1F0001 78"), level=MQTT_5) == [
        cls(5, code, Properties(reason_string="x"))
    ]
    assert error_of(packet(first, ""), level=MQTT_5).reason_code == MALFORMED
    assert error_of(packet(first, "00"), level=MQTT_5).reason_code == MALFORMED


@pytest.mark.parametrize(
    ("first", "role", "prefix", "bad_code"),
    [
        (0x40, "server", "0001", 0x92),  # PUBACK (§3.4.2.1)
        (0x50, "server", "0001", 0x01),  # PUBREC (§3.5.2.1)
        (0x62, "server", "0001", 0x10),  # PUBREL (§3.6.2.1)
        (0x70, "server", "0001", 0x80),  # PUBCOMP (§3.7.2.1)
        (0xE0, "server", "", 0x01),  # DISCONNECT (§3.14.2.1)
        (0xF0, "server", "", 0x01),  # AUTH [MQTT-3.15.2-1]
        (0x20, "client", "00", 0x01),  # CONNACK (§3.2.2.2)
        (0x90, "client", "0001 00", 0x03),  # SUBACK (§3.9.3)
        (0xB0, "client", "0001 00", 0x01),  # UNSUBACK (§3.11.3)
    ],
)
def test_5_reason_code_outside_the_packets_set_is_malformed(
    first: int, role: Role, prefix: str, bad_code: int
) -> None:
    # Each packet's sender MUST use one of the reason codes listed for it (e.g. [MQTT-3.4.2-1]).
    data = packet(first, f"{prefix} {bad_code:02X} 00")
    assert error_of(data, role=role, level=MQTT_5).reason_code == MALFORMED


def test_5_disconnect_forms() -> None:
    # §3.14.2.1: Remaining Length 0 = Normal disconnection; §3.14.2.2.1: below 2, no property length.
    assert decodes(b"\xe0\x00", level=MQTT_5) == [Disconnect(ReasonCode.SUCCESS)]
    assert decodes(b"\xe0\x01\x04", level=MQTT_5) == [Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)]
    assert decodes(b"\xe0\x02\x04\x00", level=MQTT_5) == [Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)]


def test_5_auth_with_only_a_reason_code_is_malformed() -> None:
    # §3.15.2.1: only Success without properties may omit the property length (Remaining Length 0).
    assert error_of(b"\xf0\x01\x18", level=MQTT_5).reason_code == MALFORMED


def test_connack_reserved_flags_are_malformed() -> None:
    # [MQTT-3.2.2-1] (5.0), §3.2.2.1 of 3.1.1: bits 7-1 of the Connect Acknowledge Flags are reserved.
    assert error_of(b"\x20\x03\x02\x00\x00", role="client", level=MQTT_5).reason_code == MALFORMED
    assert error_of(b"\x20\x02\x80\x00", role="client", level=MQTT_3_1_1).reason_code == MALFORMED


def test_3_1_1_connack_reserved_return_code_is_malformed() -> None:
    # §3.2.2.3 of 3.1.1: return codes 6-255 are reserved.
    assert error_of(b"\x20\x02\x00\x06", role="client", level=MQTT_3_1_1).reason_code == MALFORMED


def test_3_1_1_suback_reserved_return_code_is_malformed() -> None:
    # [MQTT-3.9.3-2] of 3.1.1: SUBACK return codes other than 0x00, 0x01, 0x02, 0x80 are reserved.
    assert error_of(packet(0x90, "0001 03"), role="client", level=MQTT_3_1_1).reason_code == MALFORMED
    assert error_of(packet(0x90, "0001 8F"), role="client", level=MQTT_3_1_1).reason_code == MALFORMED


def test_acks_with_packet_id_0_are_a_protocol_error() -> None:
    # [MQTT-2.2.1-3]: the PUBLISH (and PUBREC) being acknowledged never has identifier 0.
    for first in (0x40, 0x50, 0x62, 0x70):
        assert error_of(packet(first, "0000"), level=MQTT_5).reason_code == PROTOCOL_ERROR


# ------------------------------------------------------------------ UTF-8 strings (§1.5.4)


@pytest.mark.parametrize(
    "bad_hex",
    [
        "FF",  # never valid in UTF-8
        "C0AF",  # overlong "/"
        "EDA080",  # an encoded surrogate U+D800
        "E282",  # truncated sequence
    ],
)
def test_ill_formed_utf8_is_malformed(bad_hex: str) -> None:
    # [MQTT-1.5.4-1]: ill-formed UTF-8 (including surrogates) is a Malformed Packet.
    n = len(bad_hex) // 2
    assert error_of(packet(0x30, f"{n:04X} {bad_hex} 00"), level=MQTT_5).reason_code == MALFORMED
    assert error_of(packet(0x10, connect_body(MQTT_5, 0x02, f"{n:04X} {bad_hex}"))).reason_code == MALFORMED
    user_property = f"26 {n:04X} {bad_hex} 0000"
    data = packet(0x40, f"0001 00 {len(user_property.replace(' ', '')) // 2:02X} {user_property}")
    assert error_of(data, level=MQTT_5).reason_code == MALFORMED


def test_null_character_is_malformed() -> None:
    # [MQTT-1.5.4-2]: a UTF-8 Encoded String MUST NOT include U+0000.
    assert error_of(packet(0x30, "0003 610062 00"), level=MQTT_5).reason_code == MALFORMED
    assert error_of(packet(0x10, connect_body(MQTT_5, 0x02, "0001 00"))).reason_code == MALFORMED
    assert error_of(packet(0xA2, "0001 00 0002 6100"), level=MQTT_5).reason_code == MALFORMED


def test_bom_is_kept_not_stripped() -> None:
    # [MQTT-1.5.4-3]: 0xEF 0xBB 0xBF is U+FEFF wherever it appears and MUST NOT be skipped.
    assert decodes(packet(0x30, "0004 EFBBBF61 00"), level=MQTT_5) == [Publish("\ufeffa")]

"""Encoder specifics: short forms, what 3.1.1 cannot carry, the PUBLISH fast path, refusals."""

from __future__ import annotations

import pytest

from edgebus.protocol import (
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    PacketDecoder,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    RetainHandling,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)
from edgebus.protocol.encoder import encode_publish, fixed_header


@pytest.mark.parametrize(
    ("first", "length", "wire"),
    [(0x30, 0, "3000"), (0xC0, 127, "C07F"), (0x32, 128, "328001"), (0x30, 268_435_455, "30FFFFFF7F")],
)
def test_fixed_header(first: int, length: int, wire: str) -> None:
    # §2.1: byte 1 is type and flags, then the Remaining Length as a Variable Byte Integer.
    assert fixed_header(first, length) == bytes.fromhex(wire)


def test_fixed_header_refuses_a_length_beyond_four_bytes() -> None:
    with pytest.raises(ValueError, match="Variable Byte Integer"):
        fixed_header(0x30, 268_435_456)


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
@pytest.mark.parametrize(
    "publish",
    [
        Publish("a", b""),
        Publish("a/b", b"x" * 300, 1, retain=True, packet_id=1),
        Publish("ü", b"p", 2, dup=True, packet_id=65_535),
    ],
)
def test_encode_publish_is_what_encode_writes(publish: Publish, level: int) -> None:
    fast = encode_publish(
        publish.topic, publish.payload, qos=publish.qos, retain=publish.retain, dup=publish.dup,
        packet_id=publish.packet_id, protocol_level=level,
    )
    assert fast == encode(publish, level)
    assert PacketDecoder(protocol_level=level).receive_data(fast) == [publish]


def test_encode_publish_with_properties() -> None:
    props = Properties(message_expiry_interval=5, topic_alias=2)
    data = encode_publish("t", b"", qos=0, retain=False, dup=False, packet_id=None, protocol_level=MQTT_5,
                          properties=props)
    assert data == bytes.fromhex("30 0C 0001 74 08 02 00000005 23 0002")


@pytest.mark.parametrize(
    ("qos", "dup", "packet_id", "match"),
    [
        (3, False, 1, "QoS"),
        (1, False, None, "packet identifier"),  # [MQTT-2.2.1-3]
        (1, False, 0, "packet identifier"),
        (2, False, 65_536, "packet identifier"),
        (0, False, 5, "must not carry"),  # [MQTT-2.2.1-2]
        (0, True, None, "DUP"),  # [MQTT-3.3.1-2]
    ],
)
def test_encode_publish_refuses_what_a_peer_would_refuse(
    qos: int, dup: bool, packet_id: int | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        encode_publish("t", b"", qos=qos, retain=False, dup=dup, packet_id=packet_id, protocol_level=MQTT_5)


def test_encode_publish_refuses_bad_topics_and_levels() -> None:
    with pytest.raises(ValueError, match="U\\+0000"):
        encode(Publish("a\x00b"), MQTT_5)
    with pytest.raises(ValueError, match="65,535"):
        encode(Publish("a" * 65_536), MQTT_5)
    with pytest.raises(ValueError, match="protocol_level"):
        encode(Publish("a"), 6)
    with pytest.raises(ValueError, match="empty topic"):
        encode(Publish(""), MQTT_5)
    with pytest.raises(ValueError, match="empty topic"):
        encode(Publish("", properties=Properties(topic_alias=1)), MQTT_3_1_1)
    aliased = Publish("", properties=Properties(topic_alias=1))
    assert encode(aliased, MQTT_5) == bytes.fromhex("30 06 0000 03 230001")


def test_3_1_1_does_not_write_properties() -> None:
    # On 3.1.1 properties do not exist: they are left out, not refused.
    publish = Publish("t", b"p", properties=Properties(content_type="x"))
    assert encode(publish, MQTT_3_1_1) == bytes.fromhex("30 04 0001 74 70")


def test_3_1_1_acks_do_not_write_reason_codes() -> None:
    for ack, first in ((PubAck(1, 0x10), 0x40), (PubRec(1, 0x80), 0x50), (PubRel(1, 0x92), 0x62),
                       (PubComp(1, 0x92), 0x70)):
        assert encode(ack, MQTT_3_1_1) == bytes((first, 2, 0, 1))
    assert encode(Disconnect(ReasonCode.SERVER_SHUTTING_DOWN), MQTT_3_1_1) == b"\xe0\x00"


def test_3_1_1_suback_maps_5_0_failure_codes_to_0x80() -> None:
    # [MQTT-3.9.3-2] of 3.1.1: the only failure code is 0x80.
    packet = SubAck(7, (ReasonCode.GRANTED_QOS_1, ReasonCode.TOPIC_FILTER_INVALID, ReasonCode.NOT_AUTHORIZED))
    assert encode(packet, MQTT_3_1_1) == bytes.fromhex("90 05 0007 01 80 80")


def test_3_1_1_unsuback_has_no_payload() -> None:
    # §3.11.3 of 3.1.1: the UNSUBACK has no payload.
    assert encode(UnsubAck(3, (ReasonCode.SUCCESS,)), MQTT_3_1_1) == bytes.fromhex("B0 02 0003")


def test_subscription_qos_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="Maximum QoS"):
        encode(Subscribe(1, (Subscription("t", 3),)), MQTT_5)


def test_3_1_1_subscribe_writes_only_the_qos_bits() -> None:
    packet = Subscribe(1, (Subscription("t", 1, True, True, RetainHandling.DO_NOT_SEND),))
    assert encode(packet, MQTT_3_1_1) == bytes.fromhex("82 06 0001 0001 74 01")


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        (PubAck(1), "40 02 0001"),  # §3.4.2.1: Success and no properties: Remaining Length 2
        (PubAck(1, ReasonCode.NO_MATCHING_SUBSCRIBERS), "40 03 0001 10"),  # §3.4.2.2.1
        (PubAck(1, properties=Properties()), "40 02 0001"),
        (PubRec(1, properties=Properties(reason_string="r")), "50 08 0001 00 04 1F 0001 72"),
        (PubRel(1), "62 02 0001"),
        (PubComp(1, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), "70 03 0001 92"),
        (Disconnect(), "E0 00"),  # §3.14.2.1
        (Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE), "E0 01 04"),  # §3.14.2.2.1
        (Auth(), "F0 00"),  # §3.15.2.1
        (Auth(ReasonCode.CONTINUE_AUTHENTICATION), "F0 02 18 00"),
    ],
)
def test_5_short_forms(packet: PubAck | PubRec | PubRel | PubComp | Disconnect | Auth, wire: str) -> None:
    assert encode(packet, MQTT_5) == bytes.fromhex(wire)


def test_auth_does_not_exist_in_3_1_1() -> None:
    with pytest.raises(ValueError, match="AUTH"):
        encode(Auth(), MQTT_3_1_1)


def test_connect_level_must_match() -> None:
    with pytest.raises(ValueError, match="protocol_level"):
        encode(Connect("c", MQTT_5), MQTT_3_1_1)


def test_3_1_1_connect_password_needs_user_name() -> None:
    # [MQTT-3.1.2-22] of 3.1.1.
    with pytest.raises(ValueError, match="user name"):
        encode(Connect("c", MQTT_3_1_1, password=b"p"), MQTT_3_1_1)


def test_connect_will_qos_out_of_range() -> None:
    with pytest.raises(ValueError, match="Will QoS"):
        encode(Connect("c", MQTT_5, will=Will("t", b"", 3)), MQTT_5)


def test_3_1_1_connack_return_code_range() -> None:
    refused = ConnAck(False, ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION)
    assert encode(refused, MQTT_3_1_1) == b"\x20\x02\x00\x01"
    with pytest.raises(ValueError, match=r"0\.\.5"):
        encode(ConnAck(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION), MQTT_3_1_1)


def test_properties_the_packet_does_not_allow_are_left_out() -> None:
    # §2.2.2.2: writing them would make the packet malformed for the peer.
    props = Properties(topic_alias=3, reason_string="r")
    assert encode(PubAck(1, properties=props), MQTT_5) == bytes.fromhex("40 08 0001 00 04 1F 0001 72")
    assert encode(PubAck(1, properties=Properties(topic_alias=3)), MQTT_5) == bytes.fromhex("40 02 0001")
    # A Will's properties become its PUBLISH's without the Will Delay Interval (§3.1.3.2).
    will_props = Properties(will_delay_interval=30, content_type="c")
    publish = encode(Publish("t", b"", properties=will_props), MQTT_5)
    assert publish == bytes.fromhex("30 08 0001 74 04 03 0001 63")


def test_out_of_range_fields_are_value_errors() -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        encode(PubAck(70_000), MQTT_5)
    with pytest.raises(ValueError, match="cannot encode"):
        encode(Connect("c", MQTT_5, keep_alive=-1), MQTT_5)
    with pytest.raises(ValueError, match="cannot encode"):
        encode(Unsubscribe(65_536, ("a",)), MQTT_5)


def test_not_a_packet() -> None:
    with pytest.raises(TypeError, match="not an MQTT packet"):
        encode("PINGREQ", MQTT_5)  # type: ignore[arg-type]

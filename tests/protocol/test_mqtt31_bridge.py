"""MQTT 3.1 ("MQIsdp", level 3) and the Mosquitto bridge bit (level | 0x80) in the codec: golden bytes,
every split point, and the round trip through the encoder (client role)."""

from __future__ import annotations

import pytest

from edgebus.protocol import PacketDecoder, encode
from edgebus.protocol.enums import MQTT_3_1, MQTT_3_1_1, MQTT_5, ReasonCode
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import Connect, Publish, SubAck, Will


#: A 3.1 CONNECT as paho-mqtt's MQTTv31 writes it: "MQIsdp", level 3, clean session, keep alive 60,
#: client id "dev-1" (§3.1 of the v3.1 spec).
def connect_packet(body_hex: str) -> bytes:
    body = bytes.fromhex(body_hex)
    return bytes((0x10, len(body))) + body


CONNECT_3_1 = connect_packet("0006 4D5149736470 03 02 003C 0005 6465762D31")
#: The same with a will (QoS 1, retained) and the bridge bit, as a Mosquitto bridge with
#: ``bridge_protocol_version mqttv31`` and ``try_private true`` writes it.
CONNECT_3_1_BRIDGE_WILL = connect_packet("0006 4D5149736470 83 2E 003C 0005 6465762D31 0001 77 0004 676F6E65")
#: A 3.1.1 bridge CONNECT (Mosquitto's default protocol version): "MQTT", level 0x84.
CONNECT_3_1_1_BRIDGE = connect_packet("0004 4D515454 84 02 003C 0003 627231")


def decode_all(data: bytes) -> tuple[PacketDecoder, list[object]]:
    decoder = PacketDecoder(role="server")
    return decoder, list(decoder.receive_data(data))


def test_3_1_connect_is_decoded_and_the_rest_reads_as_3_1_1() -> None:
    # §3.1 of the v3.1 spec: protocol name "MQIsdp", version 3; the packets after it are 3.1.1's.
    decoder, packets = decode_all(CONNECT_3_1 + bytes.fromhex("30 05 0001 74 6869"))
    assert packets == [Connect("dev-1", MQTT_3_1, "MQIsdp", keep_alive=60), Publish("t", b"hi")]
    assert decoder.protocol_level == MQTT_3_1_1


@pytest.mark.parametrize("data", [CONNECT_3_1, CONNECT_3_1_BRIDGE_WILL, CONNECT_3_1_1_BRIDGE])
def test_every_split_point(data: bytes) -> None:
    # Every truncated prefix means "need more data" (ARCHITECTURE §conventions 2).
    whole = decode_all(data)[1]
    for cut in range(1, len(data)):
        decoder = PacketDecoder(role="server")
        assert decoder.receive_data(data[:cut]) == []
        assert decoder.receive_data(data[cut:]) == whole


def test_bridge_bit_is_kept_in_the_connect_and_cleared_for_the_session() -> None:
    decoder, (connect,) = decode_all(CONNECT_3_1_BRIDGE_WILL)
    assert connect == Connect("dev-1", 0x83, "MQIsdp", keep_alive=60, will=Will("w", b"gone", 1, True))
    assert decoder.protocol_level == MQTT_3_1_1
    decoder, (connect,) = decode_all(CONNECT_3_1_1_BRIDGE)
    assert isinstance(connect, Connect)
    assert connect.protocol_level == 0x84
    assert decoder.protocol_level == MQTT_3_1_1


@pytest.mark.parametrize("data", [CONNECT_3_1, CONNECT_3_1_BRIDGE_WILL, CONNECT_3_1_1_BRIDGE])
def test_encoder_writes_the_same_bytes(data: bytes) -> None:
    # The client role (tests, firmware-sim) writes a 3.1 or bridge CONNECT with its own level byte.
    (connect,) = decode_all(data)[1]
    assert isinstance(connect, Connect)
    assert encode(connect, connect.protocol_level) == data


def test_3_1_level_encodes_other_packets_as_3_1_1() -> None:
    suback = SubAck(1, (0x80,))
    assert encode(suback, MQTT_3_1) == encode(suback, MQTT_3_1_1) == bytes.fromhex("90 03 0001 80")


@pytest.mark.parametrize(
    "header",
    [
        "0006 4D5149736470 04",  # "MQIsdp" names level 3 only: with 4 it is a wrong name
        "0004 4D515454 83",  # "MQTT" with 3 (bridge bit or not) is not a level of "MQTT"
    ],
)
def test_mismatched_name_and_level_are_refused(header: str) -> None:
    body = bytes.fromhex(f"{header} 02 003C 0001 63")
    decoder = PacketDecoder(role="server")
    with pytest.raises(ProtocolError) as info:
        decoder.receive_data(bytes((0x10, len(body))) + body)
    assert info.value.reason_code in (ReasonCode.MALFORMED_PACKET, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)


def test_5_0_bridge_bit_reads_properties() -> None:
    body = bytes.fromhex("0004 4D515454 85 02 003C 00 0001 63")
    (connect,) = decode_all(bytes((0x10, len(body))) + body)[1]
    assert isinstance(connect, Connect)
    assert connect.protocol_level == 0x85
    assert encode(connect, MQTT_5)[2:] == body

"""Golden bytes for every packet type on MQTT 3.1.1 and 5.0, written by hand from the spec text.

Each golden is decoded (whole, in two pieces at every split, byte by byte) and encoded back.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgebus.protocol import (
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    Packet,
    PacketDecoder,
    PingReq,
    PingResp,
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

SERVER = ("server",)  # sent by a client, decoded by the server role
CLIENT = ("client",)  # sent by a server
BOTH = ("server", "client")


@dataclass(frozen=True)
class Golden:
    name: str
    level: int
    wire: str  # hex, spaces ignored
    packet: Packet
    roles: tuple[str, ...]
    canonical: bool = True  # False: a valid encoding that the encoder does not produce

    @property
    def data(self) -> bytes:
        return bytes.fromhex(self.wire)


GOLDENS = [
    # ---------------------------------------------------------------- MQTT 3.1.1
    # §3.1.2.10 of 3.1.1: name "MQTT", level 4, flags 0xCE (user name, password, Will QoS 1, Will Flag,
    # Clean Session), Keep Alive 10; the payload fields in the order of [MQTT-3.1.3-1].
    Golden(
        "connect-3.1.1-spec-example", MQTT_3_1_1,
        "10 1E 0004 4D515454 04 CE 000A  0002 6331  0003 772F74  0003 627965  0001 75  0001 70",
        Connect("c1", MQTT_3_1_1, clean_start=True, keep_alive=10, will=Will("w/t", b"bye", 1),
                username="u", password=b"p"),
        SERVER,
    ),
    Golden(
        "connect-3.1.1-minimal", MQTT_3_1_1,
        "10 0C 0004 4D515454 04 02 003C 0000",
        Connect("", MQTT_3_1_1, clean_start=True, keep_alive=60),
        SERVER,
    ),
    Golden(
        "connect-3.1.1-will-retain-qos2", MQTT_3_1_1,
        "10 14 0004 4D515454 04 34 0000 0001 78 0001 74 0002 0102",
        Connect("x", MQTT_3_1_1, clean_start=False, keep_alive=0, will=Will("t", b"\x01\x02", 2, True)),
        SERVER,
    ),
    Golden("connack-3.1.1", MQTT_3_1_1, "20 02 01 00", ConnAck(True, ConnectReturnCode.ACCEPTED), CLIENT),
    Golden(
        "connack-3.1.1-refused", MQTT_3_1_1, "20 02 00 05", ConnAck(False, ConnectReturnCode.NOT_AUTHORIZED),
        CLIENT,
    ),
    Golden("publish-3.1.1-qos0", MQTT_3_1_1, "30 07 0003 612F62 6869", Publish("a/b", b"hi"), BOTH),
    Golden(
        "publish-3.1.1-qos1-dup-retain", MQTT_3_1_1, "3B 09 0003 612F62 000A 6869",
        Publish("a/b", b"hi", 1, retain=True, dup=True, packet_id=10), BOTH,
    ),
    Golden(
        "publish-3.1.1-qos2-empty-payload", MQTT_3_1_1, "34 05 0001 78 1234",
        Publish("x", b"", 2, packet_id=0x1234), BOTH,
    ),
    Golden(
        "publish-3.1.1-unicode-topic", MQTT_3_1_1, "30 0B 0008 C3BC2FE282AC2F61 21",
        Publish("ü/€/a", b"!"), BOTH,
    ),
    Golden("puback-3.1.1", MQTT_3_1_1, "40 02 000A", PubAck(10), BOTH),
    Golden("pubrec-3.1.1", MQTT_3_1_1, "50 02 000A", PubRec(10), BOTH),
    Golden("pubrel-3.1.1", MQTT_3_1_1, "62 02 000A", PubRel(10), BOTH),
    Golden("pubcomp-3.1.1", MQTT_3_1_1, "70 02 000A", PubComp(10), BOTH),
    # §3.8.3 of 3.1.1 example: "a/b" QoS 1, "c/d" QoS 2.
    Golden(
        "subscribe-3.1.1", MQTT_3_1_1, "82 0E 0001 0003 612F62 01 0003 632F64 02",
        Subscribe(1, (Subscription("a/b", 1), Subscription("c/d", 2))), SERVER,
    ),
    # §3.9.3 of 3.1.1 example: granted QoS 0, granted QoS 2, Failure.
    Golden("suback-3.1.1", MQTT_3_1_1, "90 05 0001 00 02 80", SubAck(1, (0, 2, 0x80)), CLIENT),
    Golden(
        "unsubscribe-3.1.1", MQTT_3_1_1, "A2 0C 0002 0003 612F62 0003 632F64",
        Unsubscribe(2, ("a/b", "c/d")), SERVER,
    ),
    Golden("unsuback-3.1.1", MQTT_3_1_1, "B0 02 0002", UnsubAck(2), CLIENT),
    Golden("pingreq-3.1.1", MQTT_3_1_1, "C0 00", PingReq(), SERVER),
    Golden("pingresp-3.1.1", MQTT_3_1_1, "D0 00", PingResp(), CLIENT),
    Golden("disconnect-3.1.1", MQTT_3_1_1, "E0 00", Disconnect(), SERVER),
    # ---------------------------------------------------------------- MQTT 5.0
    # §3.1.2.10 of 5.0: variable header 00 04 'MQTT' 05 CE 00 0A, properties length 5, Session Expiry
    # Interval (0x11) = 10; then client id, Will Properties (Payload Format Indicator 1), Will Topic,
    # Will Payload, User Name, Password.
    Golden(
        "connect-5-spec-example", MQTT_5,
        "10 27 0004 4D515454 05 CE 000A 05 11 0000000A"
        " 0002 6331 02 0101 0003 772F74 0003 627965 0001 75 0001 70",
        Connect("c1", MQTT_5, clean_start=True, keep_alive=10,
                will=Will("w/t", b"bye", 1, properties=Properties(payload_format_indicator=1)),
                username="u", password=b"p", properties=Properties(session_expiry_interval=10)),
        SERVER,
    ),
    Golden(
        # 5.0 allows a password without a user name (§3.1.2.9).
        "connect-5-password-only", MQTT_5,
        "10 11 0004 4D515454 05 42 003C 00 0000 0002 7077",
        Connect("", MQTT_5, clean_start=True, keep_alive=60, password=b"pw"),
        SERVER,
    ),
    Golden(
        # Every CONNECT property, in identifier order, with a repeated User Property name.
        "connect-5-all-properties", MQTT_5,
        "10 3D 0004 4D515454 05 02 003C 2E"
        " 11 0000003C  15 0004 5343524D  16 0002 ABCD  17 00  19 01  21 0014  22 0005"
        " 26 0001 6B 0001 31  26 0001 6B 0001 32  27 00001000"
        " 0002 6964",
        Connect("id", MQTT_5, clean_start=True, keep_alive=60, properties=Properties(
            session_expiry_interval=60, authentication_method="SCRM", authentication_data=b"\xab\xcd",
            request_problem_information=0, request_response_information=1, receive_maximum=20,
            topic_alias_maximum=5, user_properties=(("k", "1"), ("k", "2")), maximum_packet_size=4096,
        )),
        SERVER,
    ),
    Golden(
        "connect-5-will-properties", MQTT_5,
        "10 2F 0004 4D515454 05 2C 0000 00 0001 78"
        " 1B 01 01 02 00000E10 03 0004 74657874 08 0001 72 09 0001 FF 18 0000001E"
        " 0001 74 0000",
        Connect("x", MQTT_5, clean_start=False, keep_alive=0, will=Will("t", b"", 1, True, Properties(
            payload_format_indicator=1, message_expiry_interval=3600, content_type="text",
            response_topic="r", correlation_data=b"\xff", will_delay_interval=30,
        ))),
        SERVER,
    ),
    Golden("connack-5", MQTT_5, "20 03 00 00 00", ConnAck(False, ReasonCode.SUCCESS), CLIENT),
    Golden(
        "connack-5-refused", MQTT_5, "20 03 00 84 00",
        ConnAck(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION), CLIENT,
    ),
    Golden(
        "connack-5-properties", MQTT_5,
        "20 13 01 00 10  12 0003 616263  13 001E  22 000A  24 01  25 00",
        ConnAck(True, ReasonCode.SUCCESS, Properties(
            assigned_client_identifier="abc", server_keep_alive=30, topic_alias_maximum=10, maximum_qos=1,
            retain_available=0,
        )),
        CLIENT,
    ),
    Golden(
        "connack-5-more-properties", MQTT_5,
        "20 29 00 9C 26  11 00000000  15 0001 41  16 0000  1A 0001 69  1C 0001 73  1F 0001 6E"
        "  21 FFFF  27 0000FFFF  28 00  29 01  2A 00",
        ConnAck(False, ReasonCode.USE_ANOTHER_SERVER, Properties(
            session_expiry_interval=0, authentication_method="A", authentication_data=b"",
            response_information="i", server_reference="s", reason_string="n", receive_maximum=65535,
            maximum_packet_size=65535, wildcard_subscription_available=0,
            subscription_identifier_available=1, shared_subscription_available=0,
        )),
        CLIENT,
    ),
    Golden("publish-5-qos0", MQTT_5, "30 08 0003 612F62 00 6869", Publish("a/b", b"hi"), BOTH),
    Golden(
        # Every PUBLISH property a client may send (§3.3.2.3).
        "publish-5-qos1-properties", MQTT_5,
        "32 2B 0003 612F62 000A 21"
        " 01 01  02 0000003C  03 0004 74657874  08 0001 72  09 0002 0102  23 0005  26 0001 61 0001 62"
        " 6869",
        Publish("a/b", b"hi", 1, packet_id=10, properties=Properties(
            payload_format_indicator=1, message_expiry_interval=60, content_type="text", response_topic="r",
            correlation_data=b"\x01\x02", topic_alias=5, user_properties=(("a", "b"),),
        )),
        BOTH,
    ),
    Golden(
        # A server may attach several Subscription Identifiers (§3.3.2.3.8); 128 takes two bytes.
        "publish-5-subscription-identifiers", MQTT_5, "30 09 0001 74 05 0B 01 0B 8001",
        Publish("t", b"", properties=Properties(subscription_identifiers=(1, 128))), CLIENT,
    ),
    Golden(
        # An empty Topic Name with a Topic Alias (§3.3.2.1).
        "publish-5-topic-alias-only", MQTT_5, "30 07 0000 03 23 0001 78",
        Publish("", b"x", properties=Properties(topic_alias=1)), BOTH,
    ),
    Golden("puback-5-short", MQTT_5, "40 02 000A", PubAck(10), BOTH),  # §3.4.2.1 Remaining Length 2
    Golden(
        "puback-5-reason", MQTT_5, "40 03 000A 10", PubAck(10, ReasonCode.NO_MATCHING_SUBSCRIBERS), BOTH
    ),
    Golden(
        "puback-5-reason-string", MQTT_5, "40 09 000A 80 05 1F 0002 6E6F",
        PubAck(10, ReasonCode.UNSPECIFIED_ERROR, Properties(reason_string="no")), BOTH,
    ),
    Golden(
        "puback-5-long-success", MQTT_5, "40 04 000A 00 00", PubAck(10), BOTH, canonical=False
    ),
    Golden("pubrec-5", MQTT_5, "50 03 000A 10", PubRec(10, ReasonCode.NO_MATCHING_SUBSCRIBERS), BOTH),
    Golden(
        "pubrec-5-user-property", MQTT_5, "50 0B 000A 97 07 26 0001 6B 0001 76",
        PubRec(10, ReasonCode.QUOTA_EXCEEDED, Properties(user_properties=(("k", "v"),))), BOTH,
    ),
    Golden("pubrel-5", MQTT_5, "62 03 000A 92", PubRel(10, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), BOTH),
    Golden("pubrel-5-short", MQTT_5, "62 02 000A", PubRel(10), BOTH),
    Golden("pubcomp-5-short", MQTT_5, "70 02 000A", PubComp(10), BOTH),
    Golden(
        "pubcomp-5-reason-string", MQTT_5, "70 08 000A 92 04 1F 0001 3F",
        PubComp(10, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND, Properties(reason_string="?")), BOTH,
    ),
    Golden(
        # Options 0x2D: Maximum QoS 1, No Local, Retain As Published, Retain Handling 2 (§3.8.3.1).
        "subscribe-5", MQTT_5,
        "82 18 0001 09 0B 05 26 0001 6B 0001 76  0003 612F62 2D  0003 632F64 00",
        Subscribe(1, (
            Subscription("a/b", 1, no_local=True, retain_as_published=True,
                         retain_handling=RetainHandling.DO_NOT_SEND),
            Subscription("c/d", 0),
        ), Properties(subscription_identifiers=(5,), user_properties=(("k", "v"),))),
        SERVER,
    ),
    Golden(
        "subscribe-5-retain-handling-1", MQTT_5, "82 09 0002 00 0003 2B2F23 12",
        Subscribe(2, (Subscription("+/#", 2, retain_handling=RetainHandling.SEND_IF_NEW_SUBSCRIPTION),)),
        SERVER,
    ),
    Golden(
        "suback-5", MQTT_5, "90 06 0001 00 01 00 8F",
        SubAck(1, (ReasonCode.GRANTED_QOS_1, ReasonCode.SUCCESS, ReasonCode.TOPIC_FILTER_INVALID)), CLIENT,
    ),
    Golden(
        "suback-5-reason-string", MQTT_5, "90 08 0001 04 1F 0001 78 A2",
        SubAck(1, (ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,), Properties(reason_string="x")), CLIENT,
    ),
    Golden(
        "unsubscribe-5", MQTT_5, "A2 0F 0002 07 26 0001 6B 0001 76 0003 612F62",
        Unsubscribe(2, ("a/b",), Properties(user_properties=(("k", "v"),))), SERVER,
    ),
    Golden(
        "unsuback-5", MQTT_5, "B0 05 0002 00 00 11",
        UnsubAck(2, (ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED)), CLIENT,
    ),
    Golden("pingreq-5", MQTT_5, "C0 00", PingReq(), SERVER),
    Golden("pingresp-5", MQTT_5, "D0 00", PingResp(), CLIENT),
    Golden("disconnect-5-short", MQTT_5, "E0 00", Disconnect(), BOTH),  # §3.14.2.1 Remaining Length 0
    Golden(
        "disconnect-5-with-will", MQTT_5, "E0 01 04",
        Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE), BOTH,
    ),
    Golden(
        "disconnect-5-properties", MQTT_5, "E0 0D 8E 0B 11 0000001E 1F 0003 627965",
        Disconnect(ReasonCode.SESSION_TAKEN_OVER,
                   Properties(session_expiry_interval=30, reason_string="bye")),
        BOTH,
    ),
    Golden(
        "disconnect-5-server-reference", MQTT_5, "E0 06 9D 04 1C 0001 68",
        Disconnect(ReasonCode.SERVER_MOVED, Properties(server_reference="h")), BOTH,
    ),
    Golden("disconnect-5-long-normal", MQTT_5, "E0 01 00", Disconnect(), BOTH, canonical=False),
    Golden("disconnect-5-longer-normal", MQTT_5, "E0 02 00 00", Disconnect(), BOTH, canonical=False),
    Golden("auth-5-short", MQTT_5, "F0 00", Auth(), BOTH),  # §3.15.2.1 Remaining Length 0
    Golden(
        "auth-5-continue", MQTT_5, "F0 0D 18 0B 15 0004 5343524D 16 0001 FF",
        Auth(ReasonCode.CONTINUE_AUTHENTICATION,
             Properties(authentication_method="SCRM", authentication_data=b"\xff")),
        BOTH,
    ),
    Golden(
        "auth-5-reauthenticate", MQTT_5, "F0 0F 19 0D 15 0001 41 1F 0001 72 26 0000 0000",
        Auth(ReasonCode.RE_AUTHENTICATE,
             Properties(authentication_method="A", reason_string="r", user_properties=(("", ""),))),
        BOTH,
    ),
    Golden("auth-5-long-success", MQTT_5, "F0 02 00 00", Auth(), BOTH, canonical=False),
    Golden(
        # Properties in any order decode the same (§2.2.2.2 does not order them).
        "connack-5-properties-out-of-order", MQTT_5,
        "20 13 01 00 10  25 00  24 01  22 000A  13 001E  12 0003 616263",
        ConnAck(True, ReasonCode.SUCCESS, Properties(
            assigned_client_identifier="abc", server_keep_alive=30, topic_alias_maximum=10, maximum_qos=1,
            retain_available=0,
        )),
        CLIENT, canonical=False,
    ),
]

CASES = [pytest.param(g, role, id=f"{g.name}-{role}") for g in GOLDENS for role in g.roles]


def decoder_for(golden: Golden, role: str) -> PacketDecoder:
    """A decoder in the state where ``golden`` may arrive: before CONNECT for CONNECT, else after it."""
    if isinstance(golden.packet, Connect):
        return PacketDecoder(role="server")
    if role == "server":
        return PacketDecoder(role="server", protocol_level=golden.level)
    return PacketDecoder(role="client", protocol_level=golden.level)


def feed_all(decoder: PacketDecoder, chunks: list[bytes]) -> list[Packet]:
    packets: list[Packet] = []
    for chunk in chunks:
        packets.extend(decoder.receive_data(chunk))
    return packets


def test_every_packet_type_has_goldens_on_both_versions() -> None:
    kinds = {(type(g.packet), g.level) for g in GOLDENS}
    for cls in (Connect, ConnAck, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, SubAck, Unsubscribe,
                UnsubAck, PingReq, PingResp, Disconnect):
        assert (cls, MQTT_3_1_1) in kinds
        assert (cls, MQTT_5) in kinds
    assert (Auth, MQTT_5) in kinds


@pytest.mark.parametrize(("golden", "role"), CASES)
def test_golden_decodes(golden: Golden, role: str) -> None:
    decoder = decoder_for(golden, role)
    assert decoder.receive_data(golden.data) == [golden.packet]
    assert not decoder.has_partial_packet
    if isinstance(golden.packet, Connect):
        assert decoder.protocol_level == golden.level  # set from the CONNECT it decoded


@pytest.mark.parametrize("golden", [g for g in GOLDENS if g.canonical], ids=lambda g: g.name)
def test_golden_encodes(golden: Golden) -> None:
    assert encode(golden.packet, golden.level) == golden.data


@pytest.mark.parametrize(("golden", "role"), CASES)
def test_every_truncated_prefix_needs_more_data(golden: Golden, role: str) -> None:
    # Every truncated prefix of a valid packet means "need more data", never an error.
    data = golden.data
    for cut in range(1, len(data)):
        decoder = decoder_for(golden, role)
        assert decoder.receive_data(data[:cut]) == []
        assert decoder.has_partial_packet
        assert decoder.receive_data(data[cut:]) == [golden.packet]
        assert not decoder.has_partial_packet


@pytest.mark.parametrize(("golden", "role"), CASES)
def test_byte_by_byte_equals_whole(golden: Golden, role: str) -> None:
    # CONNECT and CONNACK come once per connection; every other packet is fed three times in a row.
    copies = 1 if isinstance(golden.packet, Connect | ConnAck) else 3
    stream = golden.data * copies
    whole = decoder_for(golden, role).receive_data(stream)
    one_by_one = feed_all(decoder_for(golden, role), [stream[i : i + 1] for i in range(len(stream))])
    assert whole == one_by_one == [golden.packet] * copies


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_a_whole_session_stream_decodes_in_any_chunking(level: int) -> None:
    # CONNECT then every client-to-server golden of that version, in one stream.
    connect = next(g for g in GOLDENS if g.level == level and isinstance(g.packet, Connect))
    rest = [
        g for g in GOLDENS if g.level == level and "server" in g.roles and not isinstance(g.packet, Connect)
    ]
    stream = connect.data + b"".join(g.data for g in rest)
    expected = [connect.packet] + [g.packet for g in rest]
    assert PacketDecoder().receive_data(stream) == expected
    for size in (1, 2, 3, 7, 64):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert feed_all(PacketDecoder(), chunks) == expected

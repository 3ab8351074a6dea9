"""Property-based tests: every valid packet round-trips; any input yields packets or a ProtocolError.

(c) strategies build valid packets of every type on both versions (all properties, unicode topics,
user properties with repeated names): encode -> decode gives the equal packet, and encoding that
packet again gives the same bytes. (d) arbitrary bytes, and valid streams with random mutations, fed
whole, byte by byte and in random chunks, either yield packets or raise ProtocolError, and every
feeding agrees (h11's fuzz invariant).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    PacketType,
    PingReq,
    PingResp,
    Properties,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    RetainHandling,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)
from edgebus.protocol.bodies import REASON_CODES, SUBACK_RETURN_CODES_3_1_1
from edgebus.protocol.decoder import Role
from edgebus.protocol.packets import NO_PROPERTIES
from edgebus.protocol.primitives import MAX_REMAINING_LENGTH
from edgebus.protocol.properties import NONZERO_PROPERTIES, PROPERTY_TABLE, PropertySpec, Where, WireType

ROUND_TRIP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ strategies

_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")  # [MQTT-1.5.4-1], [-2]
strings = st.text(_CHARS, max_size=12)
topic_names = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#"), min_size=1, max_size=20
)  # [MQTT-3.3.2-2], [MQTT-4.7.3-1]
topic_filters = st.text(_CHARS, min_size=1, max_size=20)  # wildcard placement is the broker's business
payloads = st.binary(max_size=64)
packet_ids = st.integers(1, 65_535)
user_property_names = st.sampled_from(["a", "b", "ü"]) | strings  # repeated names are common


def _value(identifier: int, spec: PropertySpec, where: Where) -> st.SearchStrategy[Any]:
    low = 1 if identifier in NONZERO_PROPERTIES else 0
    wire_type = spec.wire_type
    if wire_type is WireType.BYTE:
        return st.sampled_from([0, 1])
    if wire_type is WireType.TWO_BYTE_INTEGER:
        return st.integers(low, 0xFFFF)
    if wire_type is WireType.FOUR_BYTE_INTEGER:
        return st.integers(low, 0xFFFF_FFFF)
    if wire_type is WireType.VARIABLE_BYTE_INTEGER:
        many = 3 if where == PacketType.PUBLISH else 1  # only PUBLISH may repeat it (§3.3.2.3.8)
        return st.lists(st.integers(1, MAX_REMAINING_LENGTH), max_size=many).map(tuple)
    if wire_type is WireType.UTF8_STRING:
        return strings
    if wire_type is WireType.BINARY_DATA:
        return st.binary(max_size=16)
    return st.lists(st.tuples(user_property_names, strings), max_size=4).map(tuple)


def properties(where: Where, *, exclude: frozenset[str] = frozenset()) -> st.SearchStrategy[Properties]:
    optional = {
        spec.name: _value(identifier, spec, where)
        for identifier, spec in PROPERTY_TABLE.items()
        if where in spec.allowed and spec.name not in exclude
    }
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: Properties(**values))


def _props(level: int, where: Where) -> st.SearchStrategy[Properties]:
    return properties(where) if level == MQTT_5 else st.just(NO_PROPERTIES)


def _codes(packet_type: PacketType) -> st.SearchStrategy[int]:
    return st.sampled_from(sorted(REASON_CODES[packet_type]))


@st.composite
def connects(draw: st.DrawFn, level: int) -> Connect:
    v5 = level == MQTT_5
    will = draw(
        st.none()
        | st.builds(Will, topic_names, payloads, st.integers(0, 2), st.booleans(), _props(level, "will"))
    )
    username = draw(st.none() | strings)
    password = draw(st.none() | st.binary(max_size=16))
    if not v5 and username is None:
        password = None  # [MQTT-3.1.2-22] of 3.1.1
    # The level byte as sent: 3.1 ("MQIsdp", 3) reads as 3.1.1, and a Mosquitto bridge sets the high bit.
    level_byte = draw(st.sampled_from([level, level | 0x80] + ([3, 0x83] if level == MQTT_3_1_1 else [])))
    return Connect(
        client_id=draw(strings),
        protocol_level=level_byte,
        protocol_name="MQIsdp" if level_byte & 0x7F == 3 else "MQTT",
        clean_start=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 0xFFFF)),
        will=will,
        username=username,
        password=password,
        properties=draw(_props(level, PacketType.CONNECT)),
    )


def connacks(level: int) -> st.SearchStrategy[ConnAck]:
    if level == MQTT_5:
        return st.builds(ConnAck, st.booleans(), _codes(PacketType.CONNACK), properties(PacketType.CONNACK))
    return st.builds(ConnAck, st.booleans(), st.sampled_from(list(ConnectReturnCode)))


@st.composite
def publishes(draw: st.DrawFn, level: int, role: Role) -> Publish:
    qos = draw(st.integers(0, 2))
    props = NO_PROPERTIES
    if level == MQTT_5:
        # A client never sends Subscription Identifiers [MQTT-3.3.4-6].
        exclude = frozenset({"subscription_identifiers"}) if role == "server" else frozenset()
        props = draw(properties(PacketType.PUBLISH, exclude=exclude))
    topic = draw(topic_names)
    if props.topic_alias is not None and draw(st.booleans()):
        topic = ""  # the alias carries the topic (§3.3.2.3.4)
    return Publish(
        topic,
        draw(payloads),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,  # [MQTT-3.3.1-2]
        draw(packet_ids) if qos else None,
        props,
    )


def acks(cls: type[PubAck | PubRec | PubRel | PubComp], level: int) -> st.SearchStrategy[Packet]:
    if level == MQTT_5:
        return st.builds(cls, packet_ids, _codes(cls.packet_type), properties(cls.packet_type))
    return st.builds(cls, packet_ids)


def subscriptions(level: int) -> st.SearchStrategy[Subscription]:
    if level == MQTT_5:
        return st.builds(
            Subscription, topic_filters, st.integers(0, 2), st.booleans(), st.booleans(),
            st.sampled_from(list(RetainHandling)),
        )
    return st.builds(Subscription, topic_filters, st.integers(0, 2))


def subscribes(level: int) -> st.SearchStrategy[Packet]:
    return st.builds(
        Subscribe, packet_ids, st.lists(subscriptions(level), min_size=1, max_size=4).map(tuple),
        _props(level, PacketType.SUBSCRIBE),
    )


def subacks(level: int) -> st.SearchStrategy[Packet]:
    if level == MQTT_5:
        codes = _codes(PacketType.SUBACK)
    else:
        codes = st.sampled_from(sorted(SUBACK_RETURN_CODES_3_1_1))
    code_lists = st.lists(codes, min_size=1, max_size=4).map(tuple)
    return st.builds(SubAck, packet_ids, code_lists, _props(level, PacketType.SUBACK))


def unsubscribes(level: int) -> st.SearchStrategy[Packet]:
    return st.builds(
        Unsubscribe, packet_ids, st.lists(topic_filters, min_size=1, max_size=4).map(tuple),
        _props(level, PacketType.UNSUBSCRIBE),
    )


def unsubacks(level: int) -> st.SearchStrategy[Packet]:
    if level == MQTT_5:
        codes = st.lists(_codes(PacketType.UNSUBACK), min_size=1, max_size=4).map(tuple)
        return st.builds(UnsubAck, packet_ids, codes, properties(PacketType.UNSUBACK))
    return st.builds(UnsubAck, packet_ids)


def disconnects(level: int) -> st.SearchStrategy[Packet]:
    if level == MQTT_5:
        return st.builds(Disconnect, _codes(PacketType.DISCONNECT), properties(PacketType.DISCONNECT))
    return st.just(Disconnect())


def auths(level: int) -> st.SearchStrategy[Packet]:
    return st.builds(Auth, _codes(PacketType.AUTH), properties(PacketType.AUTH))


# kind -> (strategy for a level and the receiving role, roles that receive it, levels it exists in)
KINDS: dict[str, tuple[Callable[[int, Role], st.SearchStrategy[Any]], tuple[Role, ...], tuple[int, ...]]] = {
    "connect": (lambda level, role: connects(level), ("server",), (4, 5)),
    "connack": (lambda level, role: connacks(level), ("client",), (4, 5)),
    "publish": (publishes, ("server", "client"), (4, 5)),
    "puback": (lambda level, role: acks(PubAck, level), ("server", "client"), (4, 5)),
    "pubrec": (lambda level, role: acks(PubRec, level), ("server", "client"), (4, 5)),
    "pubrel": (lambda level, role: acks(PubRel, level), ("server", "client"), (4, 5)),
    "pubcomp": (lambda level, role: acks(PubComp, level), ("server", "client"), (4, 5)),
    "subscribe": (lambda level, role: subscribes(level), ("server",), (4, 5)),
    "suback": (lambda level, role: subacks(level), ("client",), (4, 5)),
    "unsubscribe": (lambda level, role: unsubscribes(level), ("server",), (4, 5)),
    "unsuback": (lambda level, role: unsubacks(level), ("client",), (4, 5)),
    "pingreq": (lambda level, role: st.just(PingReq()), ("server",), (4, 5)),
    "pingresp": (lambda level, role: st.just(PingResp()), ("client",), (4, 5)),
    "disconnect": (lambda level, role: disconnects(level), ("server", "client"), (4, 5)),
    "auth": (lambda level, role: auths(level), ("server", "client"), (5,)),
}
HANDSHAKE = {"server": "connect", "client": "connack"}


def after_handshake(level: int, role: Role) -> st.SearchStrategy[Packet]:
    """Any packet ``role`` may receive once connected."""
    return st.one_of(
        [
            strategy(level, role)
            for kind, (strategy, roles, levels) in KINDS.items()
            if role in roles and level in levels and kind != HANDSHAKE[role]
        ]
    )


def fresh_decoder(packet: Packet, level: int, role: Role) -> PacketDecoder:
    if isinstance(packet, Connect):
        return PacketDecoder(role="server")
    return PacketDecoder(role=role, protocol_level=level)


# ------------------------------------------------------------------ (c) round trips

ROUND_TRIP_CASES = [
    pytest.param(kind, level, role, id=f"{kind}-{level}-{role}")
    for kind, (_, roles, levels) in KINDS.items()
    for level in levels
    for role in roles
]


@pytest.mark.parametrize(("kind", "level", "role"), ROUND_TRIP_CASES)
@ROUND_TRIP
@given(data=st.data())
def test_round_trip(kind: str, level: int, role: Role, data: st.DataObject) -> None:
    strategy = KINDS[kind][0]
    packet = data.draw(strategy(level, role))
    wire = encode(packet, level)
    decoded = fresh_decoder(packet, level, role).receive_data(wire)
    assert decoded == [packet]
    assert encode(decoded[0], level) == wire


# ------------------------------------------------------------------ (d) fuzz

Outcome = tuple[list[Packet], tuple[int, str] | None, bool]
CONFIGS: list[tuple[Role, int | None]] = [
    ("server", None), ("server", MQTT_3_1_1), ("server", MQTT_5),
    ("client", None), ("client", MQTT_3_1_1), ("client", MQTT_5),
]


def outcome(config: tuple[Role, int | None], chunks: list[bytes]) -> Outcome:
    """Feed ``chunks`` then EOF: the packets, the error (reason code, message) if any, partial flag."""
    role, level = config
    decoder = PacketDecoder(role=role, protocol_level=level)
    packets: list[Packet] = []
    try:
        for chunk in chunks:
            packets.extend(decoder.receive_data(chunk))
        decoder.receive_data(b"")
    except ProtocolError as exc:
        return packets, (exc.reason_code, exc.message), False
    return packets, None, decoder.has_partial_packet


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def check_every_feeding_agrees(config: tuple[Role, int | None], data: bytes, cuts: list[int]) -> Outcome:
    whole = outcome(config, [data] if data else [])
    byte_by_byte = outcome(config, [data[i : i + 1] for i in range(len(data))])
    chunked = outcome(config, split(data, cuts))
    assert byte_by_byte == whole
    assert chunked == whole
    return whole


@FUZZ
@given(
    config=st.sampled_from(CONFIGS),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_arbitrary_bytes(config: tuple[Role, int | None], data: bytes, cuts: list[int]) -> None:
    check_every_feeding_agrees(config, data, cuts)


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[tuple[Role, int | None], list[Packet], bytes]:
    role: Role = draw(st.sampled_from(["server", "client"]))
    level = draw(st.sampled_from([MQTT_3_1_1, MQTT_5]))
    known_level = draw(st.booleans())
    packets: list[Packet] = []
    if not known_level:
        packets.append(draw(connects(level)) if role == "server" else draw(connacks(level)))
    packets += draw(st.lists(after_handshake(level, role), min_size=1, max_size=5))
    stream = b"".join(encode(packet, level) for packet in packets)
    return (role, level if known_level else None), packets, stream


@st.composite
def mutations(draw: st.DrawFn, stream: bytes) -> bytes:
    data = bytearray(stream)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "flip"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "replace" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif op == "delete" and data:
            del data[at]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


@FUZZ
@given(stream=valid_streams(), data=st.data(), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_valid_streams_and_their_mutations(
    stream: tuple[tuple[Role, int | None], list[Packet], bytes], data: st.DataObject, cuts: list[int]
) -> None:
    config, packets, wire = stream
    assert check_every_feeding_agrees(config, wire, cuts) == (packets, None, False)
    mutated = data.draw(mutations(wire))
    check_every_feeding_agrees(config, mutated, cuts)

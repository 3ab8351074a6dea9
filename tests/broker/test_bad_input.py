"""Bad input: each violation gets a spec-correct answer (mostly a close), and a client connected meanwhile
keeps working.

The bad packets are built byte by byte (``raw_packet``), since edgebus's encoder refuses to produce them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from edgebus.protocol import Connect, PingReq, PingResp, PubComp, PubRel
from tests.clients import (
    BOTH_VERSIONS,
    MQTT_3_1_1,
    MQTT_5,
    PahoClient,
    RawClient,
    assert_protocol_close,
    mosquitto_deviates,
    raw_packet,
    utf8,
)
from tests.conftest import BrokerHandle, StartBroker

RawFactory = Callable[..., Awaitable[RawClient]]


class Observer:
    """A publisher and a subscriber connected before the bad input; :meth:`check` proves the broker still
    serves them."""

    def __init__(self, subscriber: PahoClient, publisher: PahoClient) -> None:
        self.subscriber = subscriber
        self.publisher = publisher
        self.checks = 0

    async def check(self) -> None:
        self.checks += 1
        payload = f"still working {self.checks}".encode()
        await self.publisher.publish("observer/t", payload, 1)
        message = await self.subscriber.expect_message()
        assert message.payload == payload


async def _observer(paho: Callable[..., PahoClient], broker: BrokerHandle) -> Observer:
    subscriber, publisher = paho("observer-sub", MQTT_5), paho("observer-pub", MQTT_3_1_1)
    await subscriber.connect(*broker.address)
    await subscriber.subscribe("observer/t", 1)
    await publisher.connect(*broker.address)
    observer = Observer(subscriber, publisher)
    await observer.check()
    return observer


@pytest.fixture
async def observer(broker: BrokerHandle, paho: Callable[..., PahoClient]) -> Observer:
    return await _observer(paho, broker)


def publish_bytes(
    version: int,
    topic: bytes | str,
    payload: bytes = b"x",
    qos: int = 0,
    packet_id: int = 1,
    properties: bytes = b"",
) -> bytes:
    """A PUBLISH written by hand, so that its topic, packet id or properties can be wrong."""
    body = utf8(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    if version == MQTT_5:
        body += bytes((len(properties),)) + properties
    return raw_packet(0x30 | (qos << 1), body + payload)


async def _connected(
    raw: RawFactory, broker: BrokerHandle, version: int, client_id: str = "bad"
) -> RawClient:
    client = await raw(broker, version)
    assert (await client.mqtt_connect(client_id)).reason_code == 0
    return client


# --- before and around CONNECT --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" * 16, b"\x00\x00\x00\x00", b"\x10\x02\x00\x04"],
    ids=["http", "ff", "zeros", "truncated-connect-with-junk-name"],
)
async def test_garbage_instead_of_connect(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, garbage: bytes
) -> None:
    """Bytes that are not a valid CONNECT: the connection is closed without a CONNACK [MQTT-3.1.0-1]
    [MQTT-3.1.4-1]."""
    client = await raw(broker, MQTT_3_1_1)
    await client.send(garbage)
    assert await client.expect_closed() == []
    await observer.check()


@pytest.mark.parametrize(
    "first_packet",
    [
        raw_packet(0xC0, b""),  # PINGREQ
        raw_packet(0x82, b"\x00\x01" + utf8("a/b") + b"\x00"),  # 3.1.1 SUBSCRIBE
        raw_packet(0x30, utf8("a/b") + b"early"),  # 3.1.1 QoS 0 PUBLISH
    ],
    ids=["pingreq", "subscribe", "publish"],
)
async def test_packet_before_connect(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, first_packet: bytes
) -> None:
    """The first packet must be CONNECT [MQTT-3.1.0-1]; the server closes without answering (no DISCONNECT
    before a CONNACK [MQTT-3.14.0-1] (5.0))."""
    client = await raw(broker, MQTT_3_1_1)
    await client.send(first_packet)
    assert await client.expect_closed() == []
    await observer.check()


@BOTH_VERSIONS
async def test_second_connect_is_a_protocol_violation(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, version: int
) -> None:
    """A second CONNECT is a protocol violation and the client is disconnected [MQTT-3.1.0-2]; on 5.0 with
    DISCONNECT 0x82."""
    client = await _connected(raw, broker, version)
    await client.send_packet(Connect(client_id="bad", protocol_level=version))
    assert_protocol_close(await client.expect_closed(), version, {0x82})
    await observer.check()


@BOTH_VERSIONS
async def test_reserved_connect_flag_closes(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, version: int
) -> None:
    """The reserved CONNECT flag must be 0, otherwise the server disconnects [MQTT-3.1.2-3]; a 5.0 server MAY
    first send CONNACK 0x81 (§4.13)."""
    client = await raw(broker, version)
    properties = b"\x00" if version == MQTT_5 else b""
    body = utf8("MQTT") + bytes((version, 0x03)) + (30).to_bytes(2, "big") + properties + utf8("reserved")
    await client.send(raw_packet(0x10, body))
    assert_protocol_close(await client.expect_closed(), version, {0x81}, connack=True)
    await observer.check()


# --- malformed packets after CONNECT ----------------------------------------------------------------------


@BOTH_VERSIONS
async def test_remaining_length_longer_than_four_bytes(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, version: int
) -> None:
    """The Remaining Length has at most four bytes (§2.2.3 of 3.1.1, §1.5.5 of 5.0): a fifth continuation
    byte is malformed; on 5.0 DISCONNECT 0x81."""
    client = await _connected(raw, broker, version)
    await client.send(b"\x30\xff\xff\xff\xff\x01")
    assert_protocol_close(await client.expect_closed(), version, {0x81})
    await observer.check()


@BOTH_VERSIONS
async def test_oversized_remaining_length_closes_before_the_body(
    start_broker: StartBroker, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """A fixed header announcing 268,435,455 bytes, more than the Maximum Packet Size, is refused as soon as
    it is read, without waiting for the body: on 5.0 DISCONNECT 0x95 "Packet too large" (§3.2.2.3.6)."""
    broker = await start_broker(mqtt={"max_packet_size": 1024})
    observer = await _observer(paho, broker)
    client = await _connected(raw, broker, version)
    await client.send(b"\x30\xff\xff\xff\x7f" + b"\x00\x03a/b")
    assert_protocol_close(await client.expect_closed(timeout=2.0), version, {0x95})
    await observer.check()


@BOTH_VERSIONS
@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "+"])
async def test_wildcard_in_publish_topic(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, version: int, topic: str
) -> None:
    """A Topic Name must not contain wildcards [MQTT-3.3.2-2] [MQTT-4.7.1-1] (3.1.1) / [MQTT-4.7.0-1]
    (5.0): the connection is closed; on 5.0 with DISCONNECT 0x90 "Topic Name invalid" or 0x82."""
    client = await _connected(raw, broker, version)
    await client.send(publish_bytes(version, topic, qos=1))
    assert_protocol_close(await client.expect_closed(), version, {0x82, 0x90})
    await observer.check()


@BOTH_VERSIONS
async def test_null_character_in_topic(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, version: int
) -> None:
    """U+0000 in a UTF-8 string closes the connection [MQTT-1.5.3-2] [MQTT-4.7.3-2] (3.1.1); on 5.0 it is a
    Malformed Packet [MQTT-1.5.4-2]: DISCONNECT 0x81."""
    client = await _connected(raw, broker, version)
    await client.send(publish_bytes(version, b"a\x00b", qos=1))
    assert_protocol_close(await client.expect_closed(), version, {0x81})
    await observer.check()


@BOTH_VERSIONS
async def test_invalid_utf8_in_topic(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, version: int
) -> None:
    """Ill-formed UTF-8 (here an encoded surrogate, U+D800) closes the connection [MQTT-1.5.3-1] (3.1.1) /
    is a Malformed Packet [MQTT-1.5.4-1] (5.0): DISCONNECT 0x81."""
    client = await _connected(raw, broker, version)
    await client.send(publish_bytes(version, b"a/\xed\xa0\x80", qos=1))
    assert_protocol_close(await client.expect_closed(), version, {0x81})
    await observer.check()


@BOTH_VERSIONS
@pytest.mark.parametrize(
    "packet_kind",
    ["publish", "subscribe", "unsubscribe"],
)
async def test_packet_identifier_zero(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, version: int, packet_kind: str
) -> None:
    """SUBSCRIBE, UNSUBSCRIBE and QoS > 0 PUBLISH need a non-zero Packet Identifier [MQTT-2.3.1-1] (3.1.1) /
    [MQTT-2.2.1-3] (5.0): the connection is closed; on 5.0 with DISCONNECT 0x81 or 0x82."""
    properties = b"\x00" if version == MQTT_5 else b""
    bad = {
        "publish": publish_bytes(version, "a/b", qos=1, packet_id=0),
        "subscribe": raw_packet(0x82, b"\x00\x00" + properties + utf8("a/b") + b"\x01"),
        "unsubscribe": raw_packet(0xA2, b"\x00\x00" + properties + utf8("a/b")),
    }[packet_kind]
    client = await _connected(raw, broker, version)
    await client.send(bad)
    assert_protocol_close(await client.expect_closed(), version, {0x81, 0x82})
    await observer.check()


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(raw_packet(0x80, b"\x00\x01" + utf8("a/b") + b"\x01"), id="subscribe-flags-0000"),
        pytest.param(raw_packet(0xA0, b"\x00\x01" + utf8("a/b")), id="unsubscribe-flags-0000"),
        pytest.param(raw_packet(0x60, b"\x00\x01"), id="pubrel-flags-0000"),
        pytest.param(
            raw_packet(0xC1, b""),
            id="pingreq-flags-0001",
            marks=mosquitto_deviates("ignores invalid PINGREQ flags [MQTT-2.2.2-2]"),
        ),
        pytest.param(raw_packet(0x36, utf8("a/b") + b"\x00\x01x"), id="publish-qos-3"),
        pytest.param(raw_packet(0x82, b"\x00\x01"), id="subscribe-without-filters"),
        pytest.param(raw_packet(0x82, b"\x00\x01" + utf8("a/b") + b"\x03"), id="subscribe-qos-3"),
        pytest.param(raw_packet(0x00, b""), id="reserved-type-0"),
    ],
)
async def test_malformed_packets_close_v311(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, bad: bytes
) -> None:
    """Invalid fixed-header flags [MQTT-2.2.2-2] [MQTT-3.8.1-1] [MQTT-3.10.1-1] [MQTT-3.6.1-1], QoS 3
    [MQTT-3.3.1-4], an empty or invalid SUBSCRIBE payload [MQTT-3.8.3-3] [MQTT-3-8.3-4] and a reserved packet
    type each close the connection (3.1.1)."""
    client = await _connected(raw, broker, MQTT_3_1_1)
    await client.send(bad)
    assert await client.expect_closed() == []
    await observer.check()


@pytest.mark.parametrize(
    ("bad", "reason_codes"),
    [
        pytest.param(
            raw_packet(0x80, b"\x00\x01\x00" + utf8("a/b") + b"\x01"), {0x81}, id="subscribe-flags-0000"
        ),
        pytest.param(raw_packet(0x60, b"\x00\x01"), {0x81}, id="pubrel-flags-0000"),
        pytest.param(raw_packet(0x36, utf8("a/b") + b"\x00\x01\x00x"), {0x81}, id="publish-qos-3"),
        pytest.param(raw_packet(0x82, b"\x00\x01\x00"), {0x81, 0x82}, id="subscribe-without-filters"),
        pytest.param(
            raw_packet(0x82, b"\x00\x01\x00" + utf8("a/b") + b"\xc1"),
            {0x81},
            id="subscribe-reserved-option-bits",
        ),
        pytest.param(
            raw_packet(0x82, b"\x00\x01\x00" + utf8("a/b") + b"\x31"),
            {0x81, 0x82},
            id="subscribe-retain-handling-3",
        ),
        pytest.param(publish_bytes(MQTT_5, "a/b", properties=b"\x7f\x00"), {0x81}, id="unknown-property"),
        pytest.param(raw_packet(0xE1, b""), {0x81}, id="disconnect-reserved-flags"),
    ],
)
async def test_malformed_packets_close_v5(
    broker: BrokerHandle, raw: RawFactory, observer: Observer, bad: bytes, reason_codes: set[int]
) -> None:
    """Malformed 5.0 packets (invalid flags [MQTT-3.8.1-1] [MQTT-3.6.1-1] [MQTT-3.14.1-1], QoS 3, reserved
    subscription option bits [MQTT-3.8.3-5], Retain Handling 3, an empty SUBSCRIBE [MQTT-3.8.3-2], an
    unknown property identifier) close the connection with DISCONNECT 0x81 (or 0x82) (§4.13)."""
    client = await _connected(raw, broker, MQTT_5)
    await client.send(bad)
    assert_protocol_close(await client.expect_closed(), MQTT_5, reason_codes)
    await observer.check()


async def test_duplicate_property_is_a_protocol_error(
    broker: BrokerHandle, raw: RawFactory, observer: Observer
) -> None:
    """It is a Protocol Error to include the Message Expiry Interval more than once (§3.3.2.3.3):
    DISCONNECT 0x82 (§2.2.2.2, §4.13)."""
    client = await _connected(raw, broker, MQTT_5)
    expiry = b"\x02\x00\x00\x00\x3c"
    await client.send(publish_bytes(MQTT_5, "a/b", qos=1, properties=expiry + expiry))
    assert_protocol_close(await client.expect_closed(), MQTT_5, {0x81, 0x82})
    await observer.check()


# --- answered without closing -------------------------------------------------------------------------------


async def test_pubrel_for_unknown_packet_id_v311(
    broker: BrokerHandle, raw: RawFactory, observer: Observer
) -> None:
    """A PUBREL is always answered by a PUBCOMP with the same Packet Identifier [MQTT-4.3.3-2] (3.1.1); the
    connection stays open."""
    client = await _connected(raw, broker, MQTT_3_1_1)
    await client.send_packet(PubRel(packet_id=321))
    assert await client.receive_packet() == PubComp(packet_id=321)
    await client.send_packet(PingReq())
    assert isinstance(await client.receive_packet(), PingResp)
    await observer.check()


@mosquitto_deviates("answers PUBREL for an unknown id with PUBCOMP 0x00, not 0x92 (§3.7.2.1)")
async def test_pubrel_for_unknown_packet_id_v5(
    broker: BrokerHandle, raw: RawFactory, observer: Observer
) -> None:
    """A PUBREL is answered by a PUBCOMP with the same Packet Identifier [MQTT-4.3.3-11] (5.0), here with
    0x92 "Packet Identifier not found" (§3.7.2.1); the connection stays open."""
    client = await _connected(raw, broker, MQTT_5)
    await client.send_packet(PubRel(packet_id=321))
    complete = await client.receive_packet()
    assert isinstance(complete, PubComp)
    assert (complete.packet_id, complete.reason_code) == (321, 0x92)
    await client.send_packet(PingReq())
    assert isinstance(await client.receive_packet(), PingResp)
    await observer.check()


async def test_many_bad_clients_do_not_disturb_a_good_one(
    broker: BrokerHandle, raw: RawFactory, observer: Observer
) -> None:
    """Twenty connections sending garbage at once are all closed; the observer's messages still flow."""

    async def misbehave(number: int) -> None:
        client = await raw(broker, MQTT_5)
        await client.send(bytes([0x10 + (number % 3), 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]))
        assert await client.expect_closed() == []

    async with trio.open_nursery() as nursery:
        for number in range(20):
            nursery.start_soon(misbehave, number)
        await observer.check()
    await observer.check()

"""The MQTT upstream sink (edgebus.bridge.mqtt) against a real Mosquitto run as a process.

Subscribers on the upstream (paho-mqtt, on its own thread) only record what they receive; every assertion
is in the test body. Exactly-once is checked where it can break: a sink that resends what the upstream
already received, after a link cut, an upstream restart, or a "crashed gateway" (a second sink object
that starts from nothing but the outbox range).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from edgebus.bridge.mqtt import MqttSink, checkpoint_topic
from edgebus.bridge.mqtt_uplink import MqttUplink, packet_id_of
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import MESSAGE_ID_PROPERTY, BridgeIdentity, InboundMessage, Record, SinkError
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.mosquitto_upstream import (
    Upstream,
    UpstreamFactory,
    free_port,
    make_tls_files,
    open_upstreams,
)
from tests.clients import MQTT_3_1_1, MQTT_5, PahoClient

IDENTITY = BridgeIdentity("gw-7", "e1")
CLIENT_ID = "edgebus-gw-7-up"
DATA_TOPIC = "fleet/data"
CHECKPOINT = f"edgebus/bridge/{CLIENT_ID}/checkpoint"


@pytest.fixture
async def upstream_factory(tmp_path: Path) -> AsyncIterator[UpstreamFactory]:
    async with open_upstreams(tmp_path) as start:
        yield start


@pytest.fixture
async def upstream(upstream_factory: UpstreamFactory) -> Upstream:
    return await upstream_factory()


@pytest.fixture
async def observers() -> AsyncIterator[Callable[..., PahoClient]]:
    """Factory of paho clients that watch the upstream; all stopped at teardown."""
    created: list[PahoClient] = []

    def make(client_id: str, version: int = MQTT_5) -> PahoClient:
        client = PahoClient(client_id, version)
        created.append(client)
        return client

    yield make
    for client in created:
        await trio.to_thread.run_sync(client.force_close)


def bridge_config(upstream: Upstream | None = None, **settings: Any) -> BridgeConfig:
    values: dict[str, Any] = {
        "name": "up",
        "addresses": (ListenAddress("127.0.0.1", upstream.port),) if upstream is not None else (),
        "client_id": "",
        "keep_alive": 5.0,
        "ack_timeout": 5.0,
        "connect_timeout": 2.0,
        "topics": (BridgeTopic("#", "out", 2),),
    }
    values.update(settings)
    return BridgeConfig(**values)


async def _no_inbound(message: InboundMessage) -> None:
    raise AssertionError(f"no in rule, yet {message} was delivered")


def make_sink(bridge: BridgeConfig, deliver: Callable[[InboundMessage], Any] = _no_inbound) -> MqttSink:
    return MqttSink(bridge, IDENTITY, TopicMap(bridge), deliver, CLIENT_ID)


def records(first: int, last: int, qos: int = 2, topic: str = DATA_TOPIC) -> list[Record]:
    return [
        Record(
            seq=seq,
            message_id=IDENTITY.message_id(seq),
            topic=topic,
            payload=b'{"n": %d}' % seq,
            qos=qos,
            retain=False,
            content_type="application/json",
        )
        for seq in range(first, last + 1)
    ]


async def persistent_subscriber(
    make: Callable[..., PahoClient],
    upstream: Upstream,
    client_id: str = "cloud-log",
    version: int = MQTT_5,
    granted: int = 2,
) -> PahoClient:
    """A QoS 2 subscriber with a session that outlives its connections: it stands for the cloud log.
    ``granted``: the QoS the upstream's SUBACK grants (1 from a Mosquitto with max_qos 1)."""
    subscriber = make(client_id, version)
    await subscriber.connect("127.0.0.1", upstream.port, clean_start=False, session_expiry_interval=3600)
    assert await subscriber.subscribe("fleet/#", 2) == granted
    return subscriber


def payloads(received: list[Any]) -> list[bytes]:
    return [message.payload for message in received]


def checkpoint_precedes_every_release(log: str, client_id: str = CLIENT_ID) -> list[int]:
    """From Mosquitto's log (log_type all): the packet ids whose PUBREL the upstream processed before any
    checkpoint that followed their PUBLISH. Such a record could be released and forgotten upstream while
    the retained checkpoint does not cover it yet: a crash then would resend it as a new message."""
    published_since_checkpoint: set[int] = set()
    uncovered: list[int] = []
    publish = re.compile(rf"Received PUBLISH from {re.escape(client_id)} \(d\d, q[12], r\d, m(\d+), ")
    release = re.compile(rf"Received PUBREL from {re.escape(client_id)} \(Mid: (\d+)\)")
    for line in log.splitlines():
        if f"Received PUBLISH from {client_id} " in line and "/checkpoint'" in line:
            published_since_checkpoint.clear()
        elif match := publish.search(line):
            published_since_checkpoint.add(int(match[1]))
        elif (match := release.search(line)) and int(match[1]) in published_since_checkpoint:
            uncovered.append(int(match[1]))
    return uncovered


def freeze(uplink: MqttUplink) -> socket.socket:
    """The gateway hangs, then dies: its MQTT connection stops at once (no PUBREL, no DISCONNECT), but
    the TCP connection stays open, so the upstream reads everything already written (a closed socket
    would answer the upstream's PUBREC with a reset, and the upstream would drop what it had not read
    yet). Returns a duplicate of the socket; closing it ends the TCP connection."""
    stream = uplink.connection.stream
    raw: socket.socket = stream._sock  # type: ignore[attr-defined]
    kept = socket.socket(fileno=os.dup(raw.fileno()))
    uplink.connection.abort("gateway hung")
    return kept


# --- forwarding -----------------------------------------------------------------------------------------


async def test_records_arrive_once_in_order_with_message_id_and_content_type(
    upstream: Upstream, observers: Callable[..., PahoClient]
) -> None:
    # 50 QoS 2 records, more than Mosquitto's Receive Maximum (20): the sink sends them in slices within
    # the send window [MQTT-4.9.0-2], each followed by its checkpoint, so the upstream processes the
    # checkpoint covering a record before the record's PUBREL. Every one arrives once, in order
    # [MQTT-4.6.0-6] (ordered topic), with the user property and content type passed on [MQTT-3.3.2-17]
    # [MQTT-3.3.2-20]; the checkpoint is retained [MQTT-3.3.1-5].
    subscriber = await persistent_subscriber(observers, upstream)
    sink = make_sink(bridge_config(upstream))
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 50) == 0  # a fresh upstream holds no checkpoint
        await uplink.send(records(1, 50))
    received = await subscriber.expect_messages(50)
    await subscriber.expect_no_message()
    assert payloads(received) == [r.payload for r in records(1, 50)]
    for message, record in zip(received, records(1, 50), strict=True):
        assert message.qos == 2 and message.topic == DATA_TOPIC
        assert message.properties.user_properties == ((MESSAGE_ID_PROPERTY, record.message_id),)
        assert message.properties.content_type == "application/json"
    reader = observers("checkpoint-reader")
    await reader.connect("127.0.0.1", upstream.port)
    await reader.subscribe(CHECKPOINT, 0)
    retained = await reader.expect_message()
    assert retained.retain and retained.payload == IDENTITY.message_id(50).encode()
    # A new connection reads it back: the runner skips everything up to 50.
    async with sink.connect() as uplink:
        assert await uplink.resume(51, 50) == 50
    assert sink.checkpoint_topic == CHECKPOINT == checkpoint_topic(sink.bridge, CLIENT_ID)
    log = upstream.log_text()
    assert log.count(f"Received PUBREL from {CLIENT_ID} ") >= 50
    assert checkpoint_precedes_every_release(log) == []


async def test_checkpoint_of_another_epoch_counts_as_none(upstream: Upstream) -> None:
    # The retained checkpoint names the store epoch: a new store (epoch e2) starts from nothing.
    async with make_sink(bridge_config(upstream)).connect() as uplink:
        await uplink.resume(1, 3)
        await uplink.send(records(1, 3))
    bridge = bridge_config(upstream)
    other = MqttSink(bridge, BridgeIdentity("gw-7", "e2"), TopicMap(bridge), _no_inbound, CLIENT_ID)
    async with other.connect() as uplink:
        assert await uplink.resume(1, 3) == 0


async def test_packet_ids_follow_the_sequence() -> None:
    # The id of a record is a function of its sequence alone, 1..65535 [MQTT-2.2.1-3].
    assert [packet_id_of(seq) for seq in (1, 2, 65535, 65536, 65537)] == [1, 2, 65535, 1, 2]


# --- exactly once across crashes, cuts and restarts ---------------------------------------------------


async def test_records_received_but_never_released_are_delivered_once_after_a_gateway_crash(
    upstream: Upstream, observers: Callable[..., PahoClient]
) -> None:
    # The gateway wrote 10 records and their checkpoint, then died before any PUBREC reached it (the
    # upstream is paused while it writes, so nothing is answered). The upstream holds them in its inbound
    # QoS 2 state; Mosquitto delivers a QoS 2 message on PUBREL. A new process (a second sink object)
    # reads the checkpoint (10), releases ids 1..10 with PUBREL [MQTT-4.3.3-4], and each record reaches
    # the subscriber once [MQTT-4.3.3-10] [MQTT-4.3.3-11]; the runner then starts at 11.
    subscriber = await persistent_subscriber(observers, upstream)
    watcher = observers("checkpoint-watcher")
    await watcher.connect("127.0.0.1", upstream.port)
    await watcher.subscribe(CHECKPOINT, 0)
    crashed = make_sink(bridge_config(upstream, ack_timeout=0.5))
    async with crashed.connect() as uplink:
        assert await uplink.resume(1, 10) == 0
        upstream.pause()
        with pytest.raises(SinkError, match="did not answer within"):
            await uplink.send(records(1, 10))
        kept = freeze(uplink)
    upstream.cont()
    checkpoint = await watcher.expect_message()  # the upstream has now read all the crashed gateway wrote
    assert checkpoint.payload == IDENTITY.message_id(10).encode()
    kept.close()
    await subscriber.expect_no_message()  # held, not yet released
    restarted = make_sink(bridge_config(upstream))
    async with restarted.connect() as uplink:
        assert await uplink.resume(1, 10) == 10
        await uplink.send(records(11, 12))
    received = await subscriber.expect_messages(12)
    await subscriber.expect_no_message()
    assert payloads(received) == [r.payload for r in records(1, 12)]


async def test_resend_of_records_held_upstream_is_not_delivered_twice_across_an_upstream_restart(
    upstream: Upstream, observers: Callable[..., PahoClient]
) -> None:
    # The gateway wrote 10 records but died before its checkpoint was written (its checkpoint went to a
    # topic nobody reads, which is the same to the upstream), and the upstream restarted (SIGTERM; the
    # session and its inbound QoS 2 state are persisted). The new process finds no checkpoint and resends
    # 1..10 with DUP [MQTT-3.3.1-1] and the same packet ids: the upstream recognises each as the message it
    # holds under that id and delivers it once [MQTT-4.3.3-10], leaving no copy behind under any id
    # (Mosquitto logs "Reused message ID" when an id comes back with a different message: not here).
    subscriber = await persistent_subscriber(observers, upstream)
    crashed = make_sink(bridge_config(upstream, ack_timeout=0.5))
    crashed.checkpoint_topic = "lost/checkpoint"
    watcher = observers("lost-checkpoint-watcher")
    await watcher.connect("127.0.0.1", upstream.port)
    await watcher.subscribe("lost/checkpoint", 0)
    async with crashed.connect() as uplink:
        await uplink.resume(1, 10)
        upstream.pause()
        with pytest.raises(SinkError):
            await uplink.send(records(1, 10))
        kept = freeze(uplink)
    upstream.cont()
    await watcher.expect_message()  # everything written was read
    kept.close()
    await subscriber.expect_no_message()
    await upstream.restart()
    await subscriber.connect("127.0.0.1", upstream.port, clean_start=False, session_expiry_interval=3600)
    restarted = make_sink(bridge_config(upstream))
    async with restarted.connect() as uplink:
        assert uplink.session_present
        assert await uplink.resume(1, 10) == 0
        await uplink.send(records(1, 10))
    received = await subscriber.expect_messages(10)
    await subscriber.expect_no_message()
    assert payloads(received) == [r.payload for r in records(1, 10)]
    # Had the resend used other ids, the upstream would still hold the first copies under ids 1..10, and
    # the next resume (the gateway crashed again before advancing its outbox cursor) would release them.
    async with make_sink(bridge_config(upstream)).connect() as uplink:
        assert await uplink.resume(1, 10) == 10
    await subscriber.expect_no_message()
    assert "Reused message ID" not in upstream.log_text()


async def test_release_of_ids_the_upstream_no_longer_holds_delivers_nothing(
    upstream: Upstream, observers: Callable[..., PahoClient]
) -> None:
    # The outbox still holds 1..10 (the gateway crashed before it advanced its cursor), but the upstream
    # completed them all. resume() releases ids 1..10 again: the upstream answers PUBCOMP for ids it does
    # not hold [MQTT-4.3.3-11] and delivers nothing twice; the runner then skips 1..10.
    subscriber = await persistent_subscriber(observers, upstream)
    async with make_sink(bridge_config(upstream)).connect() as uplink:
        await uplink.resume(1, 10)
        await uplink.send(records(1, 10))
    assert len(await subscriber.expect_messages(10)) == 10
    async with make_sink(bridge_config(upstream)).connect() as uplink:
        assert await uplink.resume(1, 10) == 10
    await subscriber.expect_no_message()


async def test_mqtt_3_1_1_upstream(upstream: Upstream, observers: Callable[..., PahoClient]) -> None:
    # On 3.1.1 a PUBLISH has no properties; the checkpoint works the same. 3.1.1 has no Receive Maximum
    # and Mosquitto silently drops QoS 2 messages past its in-flight limit (20) with a plain PUBREC, so
    # the sink caps its 3.1.1 window: all 50 records arrive, once, in order.
    subscriber = await persistent_subscriber(observers, upstream, version=MQTT_3_1_1)
    sink = make_sink(bridge_config(upstream, protocol_level=4))
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 50) == 0
        await uplink.send(records(1, 50))
    received = await subscriber.expect_messages(50)
    await subscriber.expect_no_message()
    assert payloads(received) == [r.payload for r in records(1, 50)]
    async with sink.connect() as uplink:
        assert await uplink.resume(51, 50) == 50


async def test_qos_1_and_0_records_are_forwarded(
    upstream: Upstream, observers: Callable[..., PahoClient]
) -> None:
    # A rule's QoS is the record's: QoS 1 ends with PUBACK [MQTT-4.3.2-1]; QoS 0 needs no acknowledgement.
    subscriber = await persistent_subscriber(observers, upstream)
    mixed = [*records(1, 2, qos=1), *records(3, 4, qos=0)]
    async with make_sink(bridge_config(upstream)).connect() as uplink:
        await uplink.resume(1, 4)
        await uplink.send(mixed)
    received = await subscriber.expect_messages(4)
    assert [(m.payload, m.qos) for m in received] == [(r.payload, r.qos) for r in mixed]


async def test_qos_2_records_go_at_qos_1_to_an_upstream_granting_at_most_1(
    upstream_factory: UpstreamFactory, observers: Callable[..., PahoClient], caplog: pytest.LogCaptureFixture
) -> None:
    # [MQTT-3.2.2-11]: a client must not send PUBLISH above the Maximum QoS of the server's CONNACK
    # (Mosquitto's max_qos 1 announces it [MQTT-3.2.2-9]). The sink sends them at QoS 1, keeps forwarding,
    # and says so once (log and $SYS .../qos_downgraded).
    upstream = await upstream_factory(extra_config="max_qos 1\n")
    subscriber = await persistent_subscriber(observers, upstream, granted=1)  # its SUBACK grants QoS 1
    sink = make_sink(bridge_config(upstream))
    async with sink.connect() as uplink:
        await uplink.resume(1, 20)
        await uplink.send(records(1, 10))
        await uplink.send(records(11, 20))
    received = await subscriber.expect_messages(20)
    assert [(m.payload, m.qos) for m in received] == [(r.payload, 1) for r in records(1, 20)]
    assert sink.qos_downgraded == "2->1"
    assert len([r for r in caplog.records if "grants at most QoS 1" in r.getMessage()]) == 1


# --- in rules ---------------------------------------------------------------------------------------------


async def test_in_rules_deliver_in_order_and_acknowledge_only_after_deliver_returned(
    upstream: Upstream, observers: Callable[..., PahoClient]
) -> None:
    # Messages on an in rule's filter reach deliver() in order [MQTT-4.6.0-6], one at a time. A message
    # whose deliver() never returned is not acknowledged, so the upstream sends it again on the next
    # connection of the session [MQTT-4.4.0-1] and nothing after it overtakes it.
    rules = (BridgeTopic("cmd/#", "in", 1, "local/"), BridgeTopic("#", "out", 2))
    bridge = bridge_config(upstream, topics=rules)
    delivered: list[InboundMessage] = []
    blocked = trio.Event()
    block_on: bytes | None = b"4"
    two_delivered = trio.Event()

    async def deliver(message: InboundMessage) -> None:
        delivered.append(message)
        if len(delivered) == 2:
            two_delivered.set()
        if message.payload == block_on:
            blocked.set()
            await trio.sleep_forever()

    publisher = observers("cloud-app")
    await publisher.connect("127.0.0.1", upstream.port)
    sink = make_sink(bridge, deliver)
    async with sink.connect() as uplink:
        await uplink.resume(1, 0)
        for n in (1, 2, 3):
            await publisher.publish(f"cmd/valve/{n}", str(n).encode(), qos=1)
        await publisher.publish("other/topic", b"not ours", qos=1)
        await publisher.publish("cmd/valve/4", b"4", qos=1)
        await publisher.publish("cmd/valve/5", b"5", qos=1)
        with trio.fail_after(5):
            await blocked.wait()
        await trio.sleep(0.3)  # time enough for 5 to be handed over, were deliver not one at a time
        assert [m.payload for m in delivered] == [b"1", b"2", b"3", b"4"]
        assert delivered[0] == InboundMessage("cmd/valve/1", b"1", 1, False)
    # The context was left while deliver() of 4 was blocked: 4 was never acknowledged.
    block_on = None
    delivered.clear()
    two_delivered = trio.Event()
    async with sink.connect() as uplink:
        await uplink.resume(1, 0)
        with trio.fail_after(5):
            await two_delivered.wait()
    assert [(m.topic, m.payload) for m in delivered] == [("cmd/valve/4", b"4"), ("cmd/valve/5", b"5")]


# --- dead links -------------------------------------------------------------------------------------------


async def test_send_to_a_stopped_upstream_fails_within_the_ack_timeout(upstream: Upstream) -> None:
    # A SIGSTOPped upstream keeps the TCP connection open and answers nothing: send() gives up after
    # ack_timeout; the keep-alive (1 s) would also declare the link dead [MQTT-3.1.2-24] (client side:
    # no PINGRESP within the keep-alive interval).
    sink = make_sink(bridge_config(upstream, ack_timeout=1.0, keep_alive=1.0))
    async with sink.connect() as uplink:
        await uplink.resume(1, 5)
        upstream.pause()
        try:
            start = trio.current_time()
            with pytest.raises(SinkError):
                await uplink.send(records(1, 5))
            assert trio.current_time() - start < 2.0
        finally:
            upstream.cont()


async def test_send_fails_at_once_when_the_connection_drops(upstream: Upstream) -> None:
    # The upstream dies (SIGKILL: the kernel resets the connection) while a send waits for its
    # acknowledgements: the uplink fails as soon as the connection is gone, long before ack_timeout
    # (30 s): the pending send raises SinkError, or is cancelled by the connection's own SinkError.
    sink = make_sink(bridge_config(upstream, ack_timeout=30.0))
    outcome: list[BaseException] = []
    start = trio.current_time()

    async def run_until_the_link_dies() -> None:
        async with sink.connect() as uplink:
            await uplink.resume(1, 5)
            upstream.pause()

            async def send() -> None:
                try:
                    await uplink.send(records(1, 5))
                except SinkError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await trio.sleep(0.2)
                await upstream.kill()
            await trio.sleep_forever()  # the connection's end ends the body

    with pytest.raises(SinkError, match="connection lost"):
        await run_until_the_link_dies()
    assert trio.current_time() - start < 3.0
    assert all("connection lost" in str(exc) for exc in outcome)


async def test_unreachable_addresses_fail_within_the_connect_timeout(upstream: Upstream) -> None:
    # Nothing listens on the first port (refused at once); the second accepts TCP and never answers
    # CONNECT, so the sink gives up after connect_timeout; with the real upstream third, it connects.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        closed = ListenAddress("127.0.0.1", free_port())
        mute = ListenAddress("127.0.0.1", silent.getsockname()[1])
        start = trio.current_time()
        with pytest.raises(SinkError, match="no upstream accepted") as failure:
            async with make_sink(bridge_config(addresses=(closed, mute), connect_timeout=0.5)).connect():
                raise AssertionError("connected to nothing")
        elapsed = trio.current_time() - start
        assert 0.4 < elapsed < 2.0
        assert "no CONNACK" in str(failure.value) and "cannot connect" in str(failure.value)
        real = ListenAddress("127.0.0.1", upstream.port)
        sink = make_sink(bridge_config(addresses=(closed, mute, real), connect_timeout=0.5))
        async with sink.connect() as uplink:
            assert await uplink.resume(1, 0) == 0


async def test_refused_connect_names_the_reason_code(upstream_factory: UpstreamFactory) -> None:
    # A wrong password: a CONNACK with a failure code, after which the server closes the connection
    # [MQTT-3.2.2-7] (5.0). Mosquitto 2.0.11 answers 0x87 Not authorized (5.0, §3.2.2.2) rather than 0x86,
    # and return code 5 on 3.1.1 (§3.2.2.3). The right password connects.
    upstream = await upstream_factory(users={"gateway": "s3cret"})
    with pytest.raises(SinkError, match="refused the connection: reason code 0x87"):
        async with make_sink(bridge_config(upstream, username="gateway", password="wrong")).connect():
            raise AssertionError("accepted a wrong password")
    with pytest.raises(SinkError, match="refused the connection: reason code 0x05"):
        async with make_sink(
            bridge_config(upstream, username="gateway", password="wrong", protocol_level=4)
        ).connect():
            raise AssertionError("accepted a wrong password")
    async with make_sink(bridge_config(upstream, username="gateway", password="s3cret")).connect() as uplink:
        assert await uplink.resume(1, 0) == 0


# --- TLS --------------------------------------------------------------------------------------------------


async def test_tls_upstream_with_its_ca_and_a_client_certificate(
    upstream_factory: UpstreamFactory, observers: Callable[..., PahoClient], tmp_path: Path
) -> None:
    # The server certificate is checked against cafile and the address's host (127.0.0.1, an IP SAN);
    # the listener requires a client certificate (mutual TLS) signed by the same CA.
    upstream = await upstream_factory(tls=True, require_certificate=True)
    assert upstream.tls is not None and upstream.tls_port is not None
    subscriber = await persistent_subscriber(observers, upstream)
    tls = upstream.tls
    bridge = bridge_config(
        addresses=(ListenAddress("127.0.0.1", upstream.tls_port),),
        tls=True,
        cafile=str(tls.cafile),
        certfile=str(tls.client_certfile),
        keyfile=str(tls.client_keyfile),
    )
    async with make_sink(bridge).connect() as uplink:
        assert await uplink.resume(1, 3) == 0
        await uplink.send(records(1, 3))
    assert payloads(await subscriber.expect_messages(3)) == [r.payload for r in records(1, 3)]
    # Without the client certificate the server drops the connection (in the handshake, or with TLS 1.3
    # right after it, before CONNACK).
    no_client_cert = bridge_config(addresses=bridge.addresses, tls=True, cafile=str(tls.cafile))
    with pytest.raises(SinkError):
        async with make_sink(no_client_cert).connect():
            raise AssertionError("connected without a client certificate")
    # A server certificate from another CA is refused, naming the verification failure.
    other = make_tls_files(tmp_path / "other-ca")
    wrong_ca = bridge_config(
        addresses=bridge.addresses,
        tls=True,
        cafile=str(other.cafile),
        certfile=str(tls.client_certfile),
        keyfile=str(tls.client_keyfile),
    )
    with pytest.raises(SinkError, match="CERTIFICATE_VERIFY_FAILED"):
        async with make_sink(wrong_ca).connect():
            raise AssertionError("trusted a certificate from another CA")


async def test_tls_checks_the_host_name(upstream_factory: UpstreamFactory) -> None:
    # The certificate is for 127.0.0.1; reached as "localhost" the name does not match: refused.
    upstream = await upstream_factory(tls=True)
    assert upstream.tls is not None and upstream.tls_port is not None
    bridge = bridge_config(
        addresses=(ListenAddress("localhost", upstream.tls_port),), tls=True, cafile=str(upstream.tls.cafile)
    )
    with pytest.raises(SinkError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        async with make_sink(bridge).connect():
            raise AssertionError("accepted a certificate for another host name")

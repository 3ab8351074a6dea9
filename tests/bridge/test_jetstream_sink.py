"""JetStreamSink against a real nats-server with JetStream: records land once and in order, resume() reads
the log, re-sends are de-duplicated on Nats-Msg-Id, dead links surface quickly, in rules deliver then ack.

The "normative statements" here are the bridge contract (edgebus/bridge/sink.py) and JetStream's documented
behaviour: a publish carrying ``Nats-Msg-Id`` already seen within the stream's duplicate window is acked
with ``"duplicate": true`` and not stored again; ``STREAM.MSG.GET`` with ``last_by_subj`` returns the last
message on a subject filter.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import trio
import trustme

from edgebus.bridge.jetstream import JetStreamSink
from edgebus.bridge.jetstream_link import CONTENT_TYPE_HEADER, RETAIN_HEADER
from edgebus.bridge.jetstream_subjects import consumer_name, out_filters, subject_matches
from edgebus.bridge.rules import TopicMap, subject_to_topic, topic_to_subject
from edgebus.bridge.sink import MESSAGE_ID_HEADER, BridgeIdentity, InboundMessage, Record, SinkError
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.nats_upstream import NatsAdmin, NatsServer, open_nats_admin, running_nats_server
from tests.processes import free_port

STREAM = "EDGE"
IDENTITY = BridgeIdentity("gw1", "e1")
OUT_RULE = BridgeTopic("sensors/#", "out", 1, "", "gw.gw1")
IN_RULE = BridgeTopic("cmd/+", "in", 1, "", "gw.in")


@pytest.fixture
async def admin(nats_server: NatsServer) -> AsyncIterator[NatsAdmin]:
    async with open_nats_admin(nats_server.url) as nats_admin:
        await nats_admin.create_stream(STREAM, ["gw.>"], duplicate_window_s=120)
        yield nats_admin


def make_bridge(
    port: int,
    *,
    stream: str = STREAM,
    topics: Sequence[BridgeTopic] = (OUT_RULE,),
    ack_timeout: float = 5.0,
    keep_alive: float = 30.0,
    ports: Sequence[int] = (),
) -> BridgeConfig:
    addresses = tuple(ListenAddress("127.0.0.1", p) for p in (*ports, port))
    return BridgeConfig(
        name="cloud",
        kind="nats-jetstream",
        addresses=addresses,
        stream=stream,
        topics=tuple(topics),
        ack_timeout=ack_timeout,
        keep_alive=keep_alive,
        connect_timeout=2.0,
    )


class Inbox:
    """A deliver() that records what it got; optionally blocks or fails on the first call."""

    def __init__(self) -> None:
        self.messages: list[InboundMessage] = []
        self.arrived = trio.Event()
        self.block = False
        self.fail = False

    async def __call__(self, message: InboundMessage) -> None:
        if self.fail:
            self.arrived.set()
            raise RuntimeError("local store refused")
        if self.block:
            self.arrived.set()
            await trio.sleep_forever()
        self.messages.append(message)
        self.arrived.set()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(5):
            while len(self.messages) < count:  # noqa: ASYNC110 - filled by the sink's receiver task
                await trio.sleep(0.01)


async def _ignore(message: InboundMessage) -> None:
    raise AssertionError(f"no in rule, yet {message} arrived")


def make_sink(
    bridge: BridgeConfig, deliver: object = _ignore, identity: BridgeIdentity = IDENTITY
) -> JetStreamSink:
    return JetStreamSink(bridge, identity, TopicMap(bridge), deliver, "edgebus-gw1-cloud")  # type: ignore[arg-type]


def records_for(
    seqs: range, topic_map: TopicMap, identity: BridgeIdentity = IDENTITY, local: str = "sensors/t"
) -> list[Record]:
    route = topic_map.route_out(local)
    assert route is not None
    return [
        Record(
            seq,
            identity.message_id(seq),
            route.remote,
            f"payload {seq}".encode(),
            1,
            seq % 5 == 0,
            "application/json" if seq % 2 else None,
        )
        for seq in seqs
    ]


async def hold_link(sink: JetStreamSink, then: Callable[[], None] | None = None) -> None:
    """Open a link and keep it until it ends by itself (which is what the caller expects)."""
    async with sink.connect():
        if then is not None:
            then()
        await trio.sleep_forever()


async def wait_until_all_acked(admin: NatsAdmin, consumer: str) -> None:
    with trio.fail_after(5):
        while await admin.consumer_pending(STREAM, consumer) != (0, 0):  # noqa: ASYNC110 - server state
            await trio.sleep(0.05)


# -- pure helpers ----------------------------------------------------------------------------------------


def test_out_filters_cover_the_parent_of_a_hash_pattern() -> None:
    bridge = make_bridge(1, topics=(OUT_RULE, BridgeTopic("a/+/b", "both", 1, "", "x."), IN_RULE))
    assert out_filters(TopicMap(bridge)) == ["gw.gw1.sensors.>", "gw.gw1.sensors", "x.a.*.b"]


def test_subject_matches_follows_nats_wildcards() -> None:
    assert subject_matches("a.*.c", "a.b.c")
    assert not subject_matches("a.*.c", "a.b.c.d")
    assert subject_matches("a.>", "a.b.c")
    assert not subject_matches("a.>", "a")
    assert not subject_matches("a.b", "a.b.c")
    assert subject_matches("a.b", "a.b")


def test_consumer_names_hold_no_subject_characters_and_do_not_collide() -> None:
    assert consumer_name("edgebus-gw1-cloud") == "edgebus-gw1-cloud"
    dotted, underscored = consumer_name("gw.1 x>*"), consumer_name("gw_1_x__")
    assert not set(".*> \t/\\") & set(dotted)
    assert dotted != underscored


# -- out: send and resume --------------------------------------------------------------------------------


async def test_records_land_once_in_order_with_their_headers(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    bridge = make_bridge(nats_server.port)
    sink = make_sink(bridge)
    records = records_for(range(1, 11), sink.topic_map)
    async with sink.connect() as uplink:
        await uplink.send(records[:4])
        await uplink.send(records[4:])
    stored = await admin.messages(STREAM)
    assert [message.headers[MESSAGE_ID_HEADER] for message in stored] == [r.message_id for r in records]
    assert [message.data for message in stored] == [r.payload for r in records]
    assert {message.subject for message in stored} == {"gw.gw1.sensors.t"}
    for message, record in zip(stored, records, strict=True):
        assert message.headers.get(CONTENT_TYPE_HEADER) == record.content_type
        assert (message.headers.get(RETAIN_HEADER) == "1") == record.retain


async def test_resume_is_zero_on_an_empty_stream(nats_server: NatsServer, admin: NatsAdmin) -> None:
    sink = make_sink(make_bridge(nats_server.port))
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 10) == 0


async def test_resume_returns_the_last_of_our_sequences_in_the_log(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    other_rule = BridgeTopic("alarms/#", "out", 1, "", "gw.gw1.alarm")
    bridge = make_bridge(nats_server.port, topics=(OUT_RULE, other_rule))
    sink = make_sink(bridge)
    sensors = records_for(range(1, 4), sink.topic_map)
    alarms = records_for(range(4, 6), sink.topic_map, local="alarms/fire")
    async with sink.connect() as uplink:
        await uplink.send(sensors)
        await uplink.send(alarms)
    # A new connection (as after a reconnect or a gateway restart) reads the log: the max over the filters.
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 9) == 5


@pytest.mark.parametrize("foreign", [BridgeIdentity("gw2", "e1"), BridgeIdentity("gw1", "e0")])
async def test_resume_is_zero_when_the_last_message_is_another_gateways_or_epochs(
    nats_server: NatsServer, admin: NatsAdmin, caplog: pytest.LogCaptureFixture, foreign: BridgeIdentity
) -> None:
    sink = make_sink(make_bridge(nats_server.port))
    async with sink.connect() as uplink:
        await uplink.send(records_for(range(1, 4), sink.topic_map))
        # Another gateway (or our store before a reset) publishes last on the same subjects.
        await uplink.send(records_for(range(7, 8), sink.topic_map, identity=foreign))
    with caplog.at_level(logging.WARNING, logger="edgebus.bridge.jetstream"):
        async with sink.connect() as uplink:
            assert await uplink.resume(1, 3) == 0
        async with sink.connect() as uplink:
            assert await uplink.resume(1, 3) == 0
    warnings = [record for record in caplog.records if "duplicate window" in record.getMessage()]
    assert len(warnings) == 1  # once per sink


async def test_resending_after_a_crash_is_deduplicated(nats_server: NatsServer, admin: NatsAdmin) -> None:
    bridge = make_bridge(nats_server.port)
    sink = make_sink(bridge)
    records = records_for(range(1, 21), sink.topic_map)
    async with sink.connect() as uplink:
        await uplink.send(records)
    assert await admin.message_count(STREAM) == 20
    # A gateway restarted from nothing but its outbox sends the same range again (say resume was not trusted).
    restarted = make_sink(bridge)
    async with restarted.connect() as uplink:
        await uplink.send(records[5:])  # acked as duplicates: a success
        await uplink.send(records_for(range(21, 23), restarted.topic_map))
    stored = await admin.messages(STREAM)
    assert [message.headers[MESSAGE_ID_HEADER] for message in stored] == [
        IDENTITY.message_id(seq) for seq in range(1, 23)
    ]


async def test_subject_mapping_round_trips(nats_server: NatsServer, admin: NatsAdmin) -> None:
    sink = make_sink(make_bridge(nats_server.port))
    local = "sensors/room 1/t.c/*/>/%"
    records = records_for(range(1, 2), sink.topic_map, local=local)
    assert records[0].topic == "gw.gw1." + topic_to_subject(local)
    async with sink.connect() as uplink:
        await uplink.send(records)
    (stored,) = await admin.messages(STREAM)
    assert subject_to_topic(stored.subject.removeprefix("gw.gw1.")) == local


async def test_tls_and_a_password(tmp_path: Path) -> None:
    """bridge.tls with cafile, username and password reach a nats-server that requires all three."""
    authority = trustme.CA()
    server_cert = authority.issue_cert("127.0.0.1")
    cert, key, ca = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    options = ["--tls", "--tlscert", str(cert), "--tlskey", str(key), "--user", "edge", "--pass", "s3cret"]
    async with running_nats_server(tmp_path / "server", options) as server:
        tls = ssl.create_default_context(cafile=str(ca))
        async with open_nats_admin(
            f"tls://127.0.0.1:{server.port}", tls=tls, user="edge", password="s3cret"
        ) as a:
            await a.create_stream(STREAM, ["gw.>"])
            plain = make_bridge(server.port)
            bridge = dataclasses.replace(plain, tls=True, cafile=str(ca), username="edge", password="s3cret")
            sink = make_sink(bridge)
            async with sink.connect() as uplink:
                await uplink.send(records_for(range(1, 3), sink.topic_map))
            assert await a.message_count(STREAM) == 2
        wrong = make_sink(dataclasses.replace(bridge, password="wrong"))
        with pytest.raises(SinkError, match=r"[Aa]uthorization"):
            async with wrong.connect():
                pytest.fail("connected with a wrong password")


# -- failures --------------------------------------------------------------------------------------------


async def test_a_missing_stream_fails_connect_naming_it(nats_server: NatsServer, admin: NatsAdmin) -> None:
    sink = make_sink(make_bridge(nats_server.port, stream="NOPE"))
    with pytest.raises(SinkError, match="'NOPE' does not exist"):
        async with sink.connect():
            pytest.fail("connected to a stream that does not exist")


async def test_addresses_are_tried_in_turn(nats_server: NatsServer, admin: NatsAdmin) -> None:
    dead_port = free_port()
    sink = make_sink(make_bridge(nats_server.port, ports=(dead_port,)))
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 1) == 0
    nowhere = make_sink(make_bridge(dead_port))
    with pytest.raises(SinkError, match=f"127.0.0.1:{dead_port}"):
        async with nowhere.connect():
            pytest.fail("connected to nothing")


async def test_a_killed_server_fails_the_pending_send_at_once(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    """The server dies with the batch published and no ack sent: the kernel resets the connection, so the send
    fails as soon as nats-py sees the EOF, long before ack_timeout."""
    sink = make_sink(make_bridge(nats_server.port, ack_timeout=10))
    records = records_for(range(1, 501), sink.topic_map)
    async with sink.connect() as uplink:
        nats_server.pause()  # deterministic "mid-batch": everything is published, nothing acked yet
        failed_after: list[float] = []

        async def send() -> None:
            started = trio.current_time()
            with pytest.raises(SinkError):
                await uplink.send(records)
            failed_after.append(trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.sleep(0.3)
            nats_server.kill()
        assert failed_after and failed_after[0] < 2.0
        # The link stays dead: the next send fails at once.
        with trio.fail_after(1), pytest.raises(SinkError, match="dead"):
            await uplink.send(records[:1])


async def test_a_stopped_server_fails_the_send_after_ack_timeout(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    sink = make_sink(make_bridge(nats_server.port, ack_timeout=1.0))
    async with sink.connect() as uplink:
        nats_server.pause()
        try:
            started = trio.current_time()
            with pytest.raises(SinkError, match="acks within 1 s"):
                await uplink.send(records_for(range(1, 4), sink.topic_map))
            assert 0.9 <= trio.current_time() - started < 2.5
        finally:
            nats_server.resume()


async def test_keep_alive_detects_a_stopped_server_before_ack_timeout(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    """Pings every keep_alive, at most two outstanding: a silent server is declared dead after about three
    keep-alive periods, and the pending send fails then, not at ack_timeout."""
    sink = make_sink(make_bridge(nats_server.port, ack_timeout=30, keep_alive=1.0))
    async with sink.connect() as uplink:
        nats_server.pause()
        try:
            started = trio.current_time()
            with pytest.raises(SinkError, match="died"):
                await uplink.send(records_for(range(1, 4), sink.topic_map))
            assert trio.current_time() - started < 5
        finally:
            nats_server.resume()


async def test_leaving_the_context_is_bounded_when_the_server_hangs(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    sink = make_sink(make_bridge(nats_server.port, topics=(OUT_RULE, IN_RULE)), Inbox())
    try:
        with trio.fail_after(5):
            async with sink.connect() as uplink:
                await uplink.send(records_for(range(1, 4), sink.topic_map))
                nats_server.pause()
                # More than the socket buffers hold: nats-py's writer blocks on the stopped server.
                bulky = [
                    dataclasses.replace(record, payload=bytes(65536))
                    for record in records_for(range(4, 300), sink.topic_map)
                ]
                with trio.move_on_after(0.3):
                    await uplink.send(bulky)
    finally:
        nats_server.resume()


async def test_a_restarted_server_keeps_the_log_and_resume_sees_it(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    sink = make_sink(make_bridge(nats_server.port))
    records = records_for(range(1, 8), sink.topic_map)
    async with sink.connect() as uplink:
        await uplink.send(records[:5])
        nats_server.kill()
        with pytest.raises(SinkError):
            await uplink.send(records[5:])
    port = nats_server.port
    await nats_server.restart()
    assert nats_server.port == port
    # As the runner would: reconnect (JetStream may need a moment to load its store), then resume.
    with trio.fail_after(10):
        while True:
            try:
                async with sink.connect() as uplink:
                    assert await uplink.resume(1, 7) == 5
                    await uplink.send(records[5:])
                break
            except SinkError:
                await trio.sleep(0.2)
    async with open_nats_admin(nats_server.url) as fresh:
        stored = await fresh.messages(STREAM)
    assert [m.headers[MESSAGE_ID_HEADER] for m in stored] == [r.message_id for r in records]


# -- in rules --------------------------------------------------------------------------------------------


async def test_an_inbound_message_is_delivered_then_acked(nats_server: NatsServer, admin: NatsAdmin) -> None:
    bridge = make_bridge(nats_server.port, topics=(OUT_RULE, IN_RULE))
    inbox = Inbox()
    sink = make_sink(bridge, inbox)
    subject = "gw.in." + topic_to_subject("cmd/re boot")
    await admin.publish(subject, b"now", {RETAIN_HEADER: "1"})
    await admin.publish("gw.in.cmd.plain", b"later")
    async with sink.connect():
        await inbox.wait_for(2)
        await wait_until_all_acked(admin, sink.consumer)
    assert inbox.messages == [
        InboundMessage(subject, b"now", 1, True),
        InboundMessage("gw.in.cmd.plain", b"later", 1, False),
    ]
    assert sink.topic_map.route_in(subject) == "cmd/re boot"


async def test_an_unroutable_inbound_subject_is_acked_and_dropped(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    bridge = make_bridge(nats_server.port, topics=(IN_RULE,))
    inbox = Inbox()
    sink = make_sink(bridge, inbox)
    # Matches the consumer's filter gw.in.cmd.* but maps back to cmd/a/b, which 'cmd/+' does not match.
    await admin.publish("gw.in.cmd.a%2Fb", b"odd")
    await admin.publish("gw.in.cmd.ok", b"fine")
    async with sink.connect():
        await inbox.wait_for(1)
        await wait_until_all_acked(admin, sink.consumer)
    assert inbox.messages == [InboundMessage("gw.in.cmd.ok", b"fine", 1, False)]


async def test_an_undelivered_message_is_not_acked_and_comes_back(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    bridge = make_bridge(nats_server.port, topics=(IN_RULE,))
    inbox = Inbox()
    inbox.block = True
    sink = make_sink(bridge, inbox)
    await admin.publish("gw.in.cmd.x", b"one")
    async with sink.connect():
        with trio.fail_after(5):
            await inbox.arrived.wait()
        # deliver() has not returned: the message is delivered upstream-side but not acknowledged.
        assert await admin.consumer_pending(STREAM, sink.consumer) == (0, 1)
    # The link closed with deliver() still blocked: the next connection gets the message again.
    inbox.block = False
    async with sink.connect():
        await inbox.wait_for(1)
    assert inbox.messages == [InboundMessage("gw.in.cmd.x", b"one", 1, False)]


async def test_a_failing_deliver_ends_the_link_and_the_message_comes_back(
    nats_server: NatsServer, admin: NatsAdmin
) -> None:
    bridge = make_bridge(nats_server.port, topics=(IN_RULE,))
    inbox = Inbox()
    inbox.fail = True
    sink = make_sink(bridge, inbox)
    await admin.publish("gw.in.cmd.x", b"one")
    with trio.fail_after(5), pytest.raises(RuntimeError, match="local store refused"):
        await hold_link(sink)
    inbox.fail = False
    async with sink.connect():
        await inbox.wait_for(1)
    assert inbox.messages == [InboundMessage("gw.in.cmd.x", b"one", 1, False)]


async def test_a_killed_server_ends_an_inbound_only_link(nats_server: NatsServer, admin: NatsAdmin) -> None:
    """With nothing to send, the runner learns of a dead link from the context itself."""
    sink = make_sink(make_bridge(nats_server.port, topics=(IN_RULE,)), Inbox())
    with trio.fail_after(5), pytest.raises(SinkError):
        await hold_link(sink, nats_server.kill)

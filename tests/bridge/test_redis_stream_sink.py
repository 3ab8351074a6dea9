"""RedisStreamSink against a real redis-server (AOF, appendfsync always): records land once and in order with
their fields, the entry-id scheme makes a resend impossible to store twice, resume() reads the stream's last
entry, a new store epoch gets higher ids, dead servers surface within ack_timeout.

The "normative statements" here are the bridge contract (edgebus/bridge/sink.py) and Redis's documented
behaviour: XADD with an explicit ID refuses an id equal to or smaller than the stream's top item
("ERR The ID specified in XADD is equal or smaller than the target stream top item"); a Lua script runs
atomically and stops at its first error, keeping what it wrote before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import trio

from edgebus.bridge.redis_stream import RedisStreamSink, default_stream, split_entry_id
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import MESSAGE_ID_PROPERTY, BridgeIdentity, InboundMessage, Record, SinkError
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.redis_upstream import RedisServer, read_stream, running_redis_server
from tests.processes import free_port

IDENTITY = BridgeIdentity("gw1", "e1")
OUT_RULE = BridgeTopic("sensors/#", "out", 1, "", "gw/gw1/")


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the tests that do not stop it; each test writes its own stream."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start_blocking()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stream(request: pytest.FixtureRequest) -> str:
    return f"test:{request.node.name}"


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server this test may kill, stop and restart."""
    async with running_redis_server(tmp_path / "redis") as server:
        yield server


def make_bridge(
    port: int, stream: str = "", *, ack_timeout: float = 5.0, ports: tuple[int, ...] = ()
) -> BridgeConfig:
    return BridgeConfig(
        name="cloud",
        kind="redis-stream",
        addresses=tuple(ListenAddress("127.0.0.1", p) for p in (*ports, port)),
        stream=stream,
        topics=(OUT_RULE,),
        ack_timeout=ack_timeout,
        connect_timeout=2.0,
    )


async def _ignore(message: InboundMessage) -> None:
    raise AssertionError(f"no in rule, yet {message} arrived")


def make_sink(bridge: BridgeConfig, identity: BridgeIdentity = IDENTITY) -> RedisStreamSink:
    return RedisStreamSink(bridge, identity, TopicMap(bridge), _ignore, "edgebus-gw1-cloud")


def records_for(seqs: range, topic_map: TopicMap, identity: BridgeIdentity = IDENTITY) -> list[Record]:
    route = topic_map.route_out("sensors/t")
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


async def entries(server: RedisServer, stream: str) -> list[tuple[str, dict[str, bytes]]]:
    found = await trio.to_thread.run_sync(read_stream, server.port, stream)
    return [(entry.entry_id, entry.fields) for entry in found]


def message_ids(found: list[tuple[str, dict[str, bytes]]]) -> list[str]:
    return [fields[MESSAGE_ID_PROPERTY].decode() for _, fields in found]


async def send_all(sink: RedisStreamSink, records: list[Record]) -> int:
    """One connection: resume (as the runner does), send what the log lacks; returns the resume point."""
    async with sink.connect() as uplink:
        in_log = await uplink.resume(records[0].seq, records[-1].seq)
        await uplink.send([r for r in records if r.seq > in_log])
        return in_log


# -- out: send and resume --------------------------------------------------------------------------------


def test_the_default_stream_is_per_gateway() -> None:
    assert default_stream("gw-7") == "edgebus:gw-7"
    assert make_sink(make_bridge(1)).stream == "edgebus:gw1"
    assert split_entry_id("1700000000000-42") == (1700000000000, 42)


async def test_records_land_once_in_order_with_their_fields(shared_redis: RedisServer, stream: str) -> None:
    sink = make_sink(make_bridge(shared_redis.port, stream))
    records = records_for(range(1, 11), sink.topic_map)
    before_ms = int(time.time() * 1000)
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 10) == 0
        await uplink.send(records[:4])
        await uplink.send(records[4:])
    found = await entries(shared_redis, stream)
    assert message_ids(found) == [r.message_id for r in records]
    base = sink.base_ms
    assert base is not None and base >= before_ms
    # The id scheme: <the epoch's base>-<outbox seq>.
    assert [entry_id for entry_id, _ in found] == [f"{base}-{r.seq}" for r in records]
    for (_, fields), record in zip(found, records, strict=True):
        assert fields["payload"] == record.payload
        assert fields["topic"] == b"gw/gw1/sensors/t"
        assert fields.get("content-type") == (record.content_type.encode() if record.content_type else None)
        assert (fields.get("retain") == b"1") == record.retain


async def test_resume_returns_the_last_of_our_sequences_in_the_stream(
    shared_redis: RedisServer, stream: str
) -> None:
    bridge = make_bridge(shared_redis.port, stream)
    assert await send_all(make_sink(bridge), records_for(range(1, 8), TopicMap(bridge))) == 0
    # A new sink (a restarted gateway, same store epoch) reads the log: seq 7, and the epoch's base.
    restarted = make_sink(bridge)
    async with restarted.connect() as uplink:
        assert await uplink.resume(1, 9) == 7
    found = await entries(shared_redis, stream)
    assert restarted.base_ms == split_entry_id(found[-1][0])[0]


async def test_resending_after_a_crash_cannot_create_a_second_entry(
    shared_redis: RedisServer, stream: str
) -> None:
    """The mechanism: the same record always gets the same id, and XADD refuses an id not above the top."""
    bridge = make_bridge(shared_redis.port, stream)
    records = records_for(range(1, 21), TopicMap(bridge))
    await send_all(make_sink(bridge), records)
    # A restarted gateway whose resume was not trusted (or a reply lost) sends an overlapping range again.
    restarted = make_sink(bridge)
    async with restarted.connect() as uplink:
        await uplink.resume(1, 22)
        await uplink.send(records[5:])  # all already there: refused as duplicates, a success
        await uplink.send([*records[18:], *records_for(range(21, 23), restarted.topic_map)])
    assert message_ids(await entries(shared_redis, stream)) == [IDENTITY.message_id(s) for s in range(1, 23)]


async def test_a_late_batch_of_an_earlier_connection_is_not_stored_twice(
    shared_redis: RedisServer, stream: str
) -> None:
    """A batch of a connection given up for dead may still reach the server after the next connection sent
    it again: both carry the same ids (the base is kept for the life of the sink), so one is refused."""
    sink = make_sink(make_bridge(shared_redis.port, stream))
    records = records_for(range(1, 11), sink.topic_map)
    async with sink.connect() as old, sink.connect() as new:
        assert await old.resume(1, 10) == 0
        assert await new.resume(1, 10) == 0  # nothing of ours yet: the same base as the old link's
        await new.send(records)
        await old.send(records)  # the late one
    assert message_ids(await entries(shared_redis, stream)) == [r.message_id for r in records]


async def test_a_new_store_epoch_gets_higher_ids_and_starts_its_own_numbering(
    shared_redis: RedisServer, stream: str
) -> None:
    bridge = make_bridge(shared_redis.port, stream)
    await send_all(make_sink(bridge), records_for(range(1, 6), TopicMap(bridge)))
    new_epoch = BridgeIdentity("gw1", "e2")
    fresh = make_sink(bridge, new_epoch)
    assert await send_all(fresh, records_for(range(1, 4), fresh.topic_map, new_epoch)) == 0
    found = await entries(shared_redis, stream)
    assert message_ids(found) == [IDENTITY.message_id(s) for s in range(1, 6)] + [
        new_epoch.message_id(s) for s in range(1, 4)
    ]
    ids = [split_entry_id(entry_id) for entry_id, _ in found]
    assert ids == sorted(ids) and ids[5][0] > ids[4][0]


async def test_an_entry_of_another_writer_on_top_is_not_taken_for_ours(
    shared_redis: RedisServer, stream: str
) -> None:
    """Resume says 0 when the top entry is not ours; and an id refused because another writer's entry with a
    higher base is on top is a refusal (rejected_seq), never counted as a duplicate."""
    bridge = make_bridge(shared_redis.port, stream)
    sink = make_sink(bridge)
    records = records_for(range(1, 6), sink.topic_map)
    client = redis.Redis(port=shared_redis.port)
    try:
        async with sink.connect() as uplink:
            assert await uplink.resume(1, 5) == 0
            assert sink.base_ms is not None
            client.xadd(stream, {"payload": b"x"}, id=f"{sink.base_ms + 1000}-1")
            with pytest.raises(SinkError, match="refused entry") as refused:
                await uplink.send(records)
            assert refused.value.rejected_seq == 1
        async with sink.connect() as uplink:
            assert await uplink.resume(1, 5) == 0  # the top is foreign: a new base above it
            await uplink.send(records)
        assert sink.base_ms > split_entry_id((await entries(shared_redis, stream))[0][0])[0]
    finally:
        client.close()
    assert message_ids((await entries(shared_redis, stream))[1:]) == [r.message_id for r in records]


async def test_a_key_that_is_not_a_stream_fails_connect_naming_it(
    shared_redis: RedisServer, stream: str
) -> None:
    client = redis.Redis(port=shared_redis.port)
    try:
        client.set(stream, "a string")
    finally:
        client.close()
    with pytest.raises(SinkError, match=f"{stream!r} holds a string"):
        async with make_sink(make_bridge(shared_redis.port, stream)).connect():
            pytest.fail("connected")


async def test_addresses_are_tried_in_turn(shared_redis: RedisServer, stream: str) -> None:
    dead_port = free_port()
    sink = make_sink(make_bridge(shared_redis.port, stream, ports=(dead_port,)))
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 1) == 0
    nowhere = make_sink(make_bridge(dead_port, stream))
    with pytest.raises(SinkError, match=f"127.0.0.1:{dead_port}"):
        async with nowhere.connect():
            pytest.fail("connected to nothing")


# -- health: dead servers --------------------------------------------------------------------------------


async def test_a_killed_server_fails_the_send_at_once(own_redis: RedisServer) -> None:
    sink = make_sink(make_bridge(own_redis.port, ack_timeout=10))
    records = records_for(range(1, 501), sink.topic_map)
    async with sink.connect() as uplink:
        await uplink.resume(1, 500)
        own_redis.kill()
        started = trio.current_time()
        with pytest.raises(SinkError):
            await uplink.send(records)
        assert trio.current_time() - started < 2.0


async def test_a_stopped_server_fails_the_send_within_ack_timeout(own_redis: RedisServer) -> None:
    sink = make_sink(make_bridge(own_redis.port, ack_timeout=1.0))
    async with sink.connect() as uplink:
        await uplink.resume(1, 3)
        own_redis.pause()
        try:
            started = trio.current_time()
            with pytest.raises(SinkError, match="within 1 s"):
                await uplink.send(records_for(range(1, 4), sink.topic_map))
            assert 0.9 <= trio.current_time() - started < 2.5
        finally:
            own_redis.resume()


async def test_a_sigkilled_server_keeps_what_it_acknowledged(own_redis: RedisServer) -> None:
    """appendfsync always: a reply means the AOF was fsynced; after SIGKILL and restart resume sees it all."""
    bridge = make_bridge(own_redis.port)
    sink = make_sink(bridge)
    records = records_for(range(1, 301), sink.topic_map)
    async with sink.connect() as uplink:
        await uplink.resume(1, 300)
        await uplink.send(records)
    own_redis.kill()
    await own_redis.start()
    with trio.fail_after(10):
        async with make_sink(bridge).connect() as uplink:
            assert await uplink.resume(1, 300) == 300
    assert len(await entries(own_redis, sink.stream)) == 300


async def test_the_duplicate_count_is_logged(
    shared_redis: RedisServer, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    sink = make_sink(make_bridge(shared_redis.port, stream))
    records = records_for(range(1, 4), sink.topic_map)
    with caplog.at_level(logging.INFO, logger="edgebus.bridge.redis_stream"):
        async with sink.connect() as uplink:
            await uplink.resume(1, 3)
            await uplink.send(records)
            await uplink.send(records)
    assert any("already held 3 of 3" in r.getMessage() for r in caplog.records)

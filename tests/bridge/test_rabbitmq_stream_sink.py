"""RabbitStreamSink against a real RabbitMQ (Debian's rabbitmq-server with the stream plugin): records land
once and in order with their properties, resume() asks the stream for the producer's last publishing id,
re-sends are de-duplicated by producer name + publishing id (also by a new connection, and after a RabbitMQ
restart), dead links surface within ack_timeout.

The normative statements here are the bridge contract (edgebus/bridge/sink.py) and RabbitMQ's documented
stream de-duplication: "a publisher with a name ... the broker keeps track of the last publishing ID for this
name and filters out messages with a publishing ID lower or equal"; QueryPublisherSequence returns that id.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from itertools import count

import pytest
import trio

from edgebus.bridge.amqp_message import MQTT_RETAIN_PROPERTY, MQTT_TOPIC_PROPERTY
from edgebus.bridge.rabbitmq_stream import RabbitStreamSink, producer_name
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import MESSAGE_ID_PROPERTY, BridgeIdentity, InboundMessage, Record, SinkError
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress, parse_config
from edgebus.server.config_file import startup_problems
from tests.bridge.rabbitmq_upstream import RabbitServer, StreamAdmin, open_stream_admin, shared_rabbitmq
from tests.processes import free_port
from tests.test_config import BRIDGE, parse_error

IDENTITY = BridgeIdentity("gw1", "e1")
OUT_RULE = BridgeTopic("sensors/#", "out", 1, "", "gw/gw1/")
_streams = count()


@pytest.fixture(scope="module")
def rabbit() -> RabbitServer:
    return shared_rabbitmq()


@pytest.fixture
async def admin(rabbit: RabbitServer) -> AsyncIterator[StreamAdmin]:
    async with open_stream_admin(rabbit.port) as stream_admin:
        yield stream_admin


@pytest.fixture
async def stream(admin: StreamAdmin) -> str:
    name = f"sink-{time.monotonic_ns()}-{next(_streams)}"
    await admin.create_stream(name)
    return name


def make_bridge(
    port: int, stream: str, *, ack_timeout: float = 5.0, ports: tuple[int, ...] = ()
) -> BridgeConfig:
    return BridgeConfig(
        name="cloud",
        kind="rabbitmq-stream",
        addresses=tuple(ListenAddress("127.0.0.1", p) for p in (*ports, port)),
        stream=stream,
        topics=(OUT_RULE,),
        ack_timeout=ack_timeout,
        keep_alive=30.0,
        connect_timeout=3.0,
    )


async def _no_inbound(message: InboundMessage) -> None:
    raise AssertionError(f"no in rule, yet {message} arrived")


def make_sink(bridge: BridgeConfig, identity: BridgeIdentity = IDENTITY) -> RabbitStreamSink:
    return RabbitStreamSink(bridge, identity, TopicMap(bridge), _no_inbound, "edgebus-gw1-cloud")


def records_for(seqs: range, identity: BridgeIdentity = IDENTITY) -> list[Record]:
    return [
        Record(
            seq,
            identity.message_id(seq),
            f"gw/gw1/sensors/{seq % 3}",
            f"payload {seq}".encode(),
            1,
            seq % 5 == 0,
            "application/json" if seq % 2 else None,
        )
        for seq in seqs
    ]


# -- what lands in the stream ----------------------------------------------------------------------------


async def test_records_land_once_in_order_with_their_properties(
    rabbit: RabbitServer, admin: StreamAdmin, stream: str
) -> None:
    sink = make_sink(make_bridge(rabbit.port, stream))
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 10) == 0
        await uplink.send(records_for(range(1, 11)))
    stored = await admin.read(stream)
    assert [message.body for message in stored] == [f"payload {seq}".encode() for seq in range(1, 11)]
    for seq, message in enumerate(stored, start=1):
        assert message.application_property(MESSAGE_ID_PROPERTY) == f"gw1:e1:{seq}"
        assert message.application_property(MQTT_TOPIC_PROPERTY) == f"gw/gw1/sensors/{seq % 3}"
        assert message.application_property(MQTT_RETAIN_PROPERTY) is (seq % 5 == 0)
        properties = message.message.properties
        assert properties.message_id == f"gw1:e1:{seq}".encode()
        assert properties.content_type == (b"application/json" if seq % 2 else None)


async def test_resend_is_deduplicated_by_producer_name_and_resume_reads_it(
    rabbit: RabbitServer, admin: StreamAdmin, stream: str
) -> None:
    bridge = make_bridge(rabbit.port, stream)
    async with make_sink(bridge).connect() as uplink:
        await uplink.send(records_for(range(1, 51)))
    # A gateway that crashed before it noted the confirms: a new sink, a new connection, the same records.
    async with make_sink(bridge).connect() as uplink:
        assert await uplink.resume(1, 60) == 50  # QueryPublisherSequence: the producer's last publishing id
        await uplink.send(records_for(range(1, 61)))  # sent all the same: the stream drops 1..50
    stored = await admin.read(stream)
    assert [message.body for message in stored] == [f"payload {seq}".encode() for seq in range(1, 61)]


async def test_a_new_store_epoch_is_a_new_producer(
    rabbit: RabbitServer, admin: StreamAdmin, stream: str
) -> None:
    # A wiped data dir numbers from 1 again: under the old producer name those would be dropped as duplicates.
    bridge = make_bridge(rabbit.port, stream)
    async with make_sink(bridge).connect() as uplink:
        await uplink.send(records_for(range(1, 6)))
    fresh = BridgeIdentity("gw1", "e2")
    assert producer_name(fresh, "cloud") != producer_name(IDENTITY, "cloud")
    async with make_sink(bridge, fresh).connect() as uplink:
        assert await uplink.resume(1, 3) == 0
        await uplink.send(records_for(range(1, 4), fresh))
    stored = await admin.read(stream)
    assert [message.application_property(MESSAGE_ID_PROPERTY) for message in stored] == [
        *(f"gw1:e1:{seq}" for seq in range(1, 6)),
        *(f"gw1:e2:{seq}" for seq in range(1, 4)),
    ]


async def test_a_large_batch_spans_several_frames(
    rabbit: RabbitServer, admin: StreamAdmin, stream: str
) -> None:
    records = [
        Record(seq, IDENTITY.message_id(seq), "gw/gw1/big", bytes([seq % 256]) * 100_000, 1, False, None)
        for seq in range(1, 13)
    ]  # 1.2 MB: three Publish frames of at most 512 KiB
    async with make_sink(make_bridge(rabbit.port, stream)).connect() as uplink:
        await uplink.send(records)
    stored = await admin.read(stream)
    assert [message.body for message in stored] == [record.payload for record in records]


# -- failures --------------------------------------------------------------------------------------------


async def test_a_missing_stream_fails_connect_naming_it(rabbit: RabbitServer) -> None:
    with pytest.raises(SinkError, match="'no-such-stream' does not exist"):
        async with make_sink(make_bridge(rabbit.port, "no-such-stream")).connect():
            pass


async def test_a_refused_connection_fails_at_once() -> None:
    # Catch-up after an outage begins as soon as the upstream answers, so a refused attempt must not hold
    # the next one back: a link that never opened is dropped, not closed politely (rstream's close() sleeps
    # 0.2 s whatever happened). Best of 3 attempts, against scheduling noise.
    bridge = make_bridge(free_port(), "any-stream")
    took = []
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(SinkError, match="unreachable"):
            async with make_sink(bridge).connect():
                pass
        took.append(time.monotonic() - started)
    assert min(took) < 0.15, took


async def test_addresses_are_tried_in_turn(rabbit: RabbitServer, admin: StreamAdmin, stream: str) -> None:
    dead = free_port()
    async with make_sink(make_bridge(rabbit.port, stream, ports=(dead,))).connect() as uplink:
        await uplink.send(records_for(range(1, 3)))
    assert len(await admin.read(stream)) == 2


async def test_a_killed_server_fails_the_send_and_a_restarted_one_keeps_the_log(
    rabbit: RabbitServer, admin: StreamAdmin, stream: str
) -> None:
    bridge = make_bridge(rabbit.port, stream, ack_timeout=3.0)
    async with make_sink(bridge).connect() as uplink:
        await uplink.send(records_for(range(1, 21)))
        rabbit.kill()
        started = trio.current_time()
        with pytest.raises(SinkError):
            await uplink.send(records_for(range(21, 31)))
        assert trio.current_time() - started < bridge.ack_timeout + 1.5
    await rabbit.start()
    with trio.fail_after(30):
        while True:  # the stream's leader comes back a moment after the listeners
            try:
                async with make_sink(bridge).connect() as uplink:
                    assert await uplink.resume(21, 30) == 20
                    await uplink.send(records_for(range(21, 31)))
                break
            except SinkError:
                await trio.sleep(0.5)
    stored = await admin.read(stream)
    assert [message.body for message in stored] == [f"payload {seq}".encode() for seq in range(1, 31)]


# -- configuration ---------------------------------------------------------------------------------------


def test_config_needs_a_stream_and_allows_out_rules_only() -> None:
    error = parse_error(BRIDGE + 'kind = "rabbitmq-stream"\ntopics = [{ pattern = "#" }]\n')
    assert "test.toml:1: bridge[0].stream: a rabbitmq-stream bridge needs the stream name" in str(error)
    error = parse_error(
        BRIDGE + 'kind = "rabbitmq-stream"\nstream = "s"\ntopics = [{ pattern = "#", direction = "in" }]\n'
    )
    assert "bridge[0].topics: a rabbitmq-stream bridge forwards out only" in str(error)


def test_startup_names_the_extra_when_rstream_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(BRIDGE + 'kind = "rabbitmq-stream"\nstream = "s"\ntopics = [{ pattern = "#" }]\n')
    monkeypatch.setitem(sys.modules, "rstream", None)  # import rstream now raises ImportError
    assert startup_problems(config) == [
        'bridge cloud: a rabbitmq-stream bridge needs rstream: pip install "edgebus[rabbitmq]"'
    ]

"""KafkaSink against the real Apache Kafka (4.1.1, KRaft, one JVM shared by the module): records land with
their key, headers and templated topic; resume reads the resume point committed with the last batch; a
transaction left open by a dead incarnation is aborted and invisible; in rules deliver, then commit
offsets; a dead link is noticed within ack_timeout; config errors name file:line.

The normative statements here are the bridge contract (edgebus/bridge/sink.py) and Kafka's documented
transactions (KIP-98): ``init_transactions`` fences earlier producers with the same ``transactional.id``
and aborts their open transaction; a ``read_committed`` consumer sees only committed records.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
import trio
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from edgebus_fleet.proxy import ChaosProxy

from edgebus.bridge.kafka import KafkaSink
from edgebus.bridge.kafka_client import close_link, open_link
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import BridgeIdentity, InboundMessage, Record, SinkError
from edgebus.config import BridgeConfig, BridgeTopic, ConfigError, ListenAddress, parse_config
from tests.bridge.kafka_log import read_topic
from tests.bridge.kafka_upstream import KafkaServer, kafka_available, shared_kafka

pytestmark = pytest.mark.skipif(not kafka_available(), reason="Kafka's jars are not in .cache/kafka")

IDENTITY = BridgeIdentity("gw1", "e1")
CLIENT_ID = "edgebus-gw1-cloud"


@pytest.fixture(scope="module")
def kafka() -> KafkaServer:
    return shared_kafka()  # stopped by PID when the test session ends (kafka_upstream)


def unique(name: str) -> str:
    return f"{name}-{time.time_ns() % 10**12}"


def make_bridge(
    port: int, topics: Sequence[BridgeTopic], *, client_id: str = CLIENT_ID, **overrides: object
) -> BridgeConfig:
    values: dict[str, object] = {
        "name": "cloud",
        "kind": "kafka",
        "addresses": (ListenAddress("127.0.0.1", port),),
        "client_id": client_id,
        "topics": tuple(topics),
        "ack_timeout": 3.0,
        "connect_timeout": 2.0,
        **overrides,
    }
    return BridgeConfig(**values)  # type: ignore[arg-type]


async def _ignore(message: InboundMessage) -> None:
    raise AssertionError(f"no in rule, yet {message} arrived")


def make_sink(
    bridge: BridgeConfig, deliver: object = _ignore, identity: BridgeIdentity = IDENTITY
) -> KafkaSink:
    return KafkaSink(bridge, identity, TopicMap(bridge), deliver, bridge.client_id)  # type: ignore[arg-type]


def records_for(
    seqs: range, topic_map: TopicMap, local: str, identity: BridgeIdentity = IDENTITY
) -> list[Record]:
    route = topic_map.route_out(local)
    assert route is not None
    return [
        Record(
            seq,
            identity.message_id(seq),
            route.remote,
            f"{seq}".encode(),
            1,
            seq % 5 == 0,
            "application/json" if seq % 2 else None,
        )
        for seq in seqs
    ]


async def read(kafka: KafkaServer, topic: str) -> list[tuple[int, bytes | None, bytes, dict[str, bytes]]]:
    stored = await trio.to_thread.run_sync(read_topic, kafka.bootstrap, topic)
    return [(record.partition, record.key, record.value, record.headers) for record in stored]


async def test_records_land_with_key_headers_and_templated_topic(kafka: KafkaServer) -> None:
    prefix = unique("tele")
    bridge = make_bridge(kafka.port, [BridgeTopic("sensors/#", remote_prefix=prefix + "-{2}")])
    sink = make_sink(bridge)
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 12) == 0
        await uplink.send(records_for(range(1, 7), sink.topic_map, "sensors/temp/dev-1"))
        await uplink.send(records_for(range(7, 13), sink.topic_map, "sensors/hum/dev 2"))
    temp = await read(kafka, f"{prefix}-temp")
    assert [value for _, _, value, _ in temp] == [str(n).encode() for n in range(1, 7)]
    assert {key for _, key, _, _ in temp} == {b"sensors/temp/dev-1"}  # key = the MQTT topic: one partition
    assert len({partition for partition, _, _, _ in temp}) == 1
    _, _, _, headers = temp[4]  # seq 5: retained, odd: JSON
    assert headers["edgebus-msg-id"] == b"gw1:e1:5"
    assert headers["edgebus-topic"] == b"sensors/temp/dev-1"
    assert headers["edgebus-retain"] == b"1"
    assert headers["content-type"] == b"application/json"
    assert "edgebus-retain" not in temp[0][3] and "content-type" not in temp[1][3]
    hum = await read(kafka, f"{prefix}-hum")
    assert [value for _, _, value, _ in hum] == [str(n).encode() for n in range(7, 13)]


async def test_a_key_template_and_no_key(kafka: KafkaServer) -> None:
    topic = unique("keys")
    rule = [BridgeTopic("sensors/#", remote_prefix=topic)]
    sink = make_sink(make_bridge(kafka.port, rule, key="{2}"))
    async with sink.connect() as uplink:
        await uplink.resume(1, 2)
        await uplink.send(records_for(range(1, 3), sink.topic_map, "sensors/dev-7/temp"))
    assert [key for _, key, _, _ in await read(kafka, topic)] == [b"dev-7", b"dev-7"]
    sink = make_sink(make_bridge(kafka.port, rule, key="", client_id="edgebus-gw1-nokey"))
    async with sink.connect() as uplink:
        await uplink.resume(3, 3)
        await uplink.send(records_for(range(3, 4), sink.topic_map, "sensors/dev-7/temp"))
    assert [key for _, key, _, _ in await read(kafka, topic)][-1] is None


async def test_resume_returns_the_last_committed_batch_across_connections(kafka: KafkaServer) -> None:
    topic = unique("resume")
    bridge = make_bridge(
        kafka.port, [BridgeTopic("sensors/#", remote_prefix=topic)], client_id=unique("gw-r")
    )
    sink = make_sink(bridge)
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 30) == 0
        await uplink.send(records_for(range(1, 11), sink.topic_map, "sensors/a"))
        await uplink.send(records_for(range(11, 21), sink.topic_map, "sensors/a"))
    async with sink.connect() as uplink:  # a reconnect: a new producer, the same transactional.id
        assert await uplink.resume(21, 30) == 20
    # Another store epoch of the same gateway (a new store): nothing of it is in the log.
    other_epoch = make_sink(bridge, identity=BridgeIdentity("gw1", "e2"))
    async with other_epoch.connect() as uplink:
        assert await uplink.resume(1, 5) == 0


async def test_an_open_transaction_of_a_dead_incarnation_is_aborted_and_invisible(kafka: KafkaServer) -> None:
    # A gateway killed mid-batch leaves a transaction open: its records are in the partition but not
    # committed. The next incarnation's init_transactions aborts it; resume says the last committed batch,
    # and a read_committed reader never sees the aborted records.
    topic = unique("fenced")
    bridge = make_bridge(
        kafka.port, [BridgeTopic("sensors/#", remote_prefix=topic)], client_id=unique("gw-f")
    )
    sink = make_sink(bridge)
    async with sink.connect() as uplink:
        await uplink.resume(1, 10)
        await uplink.send(records_for(range(1, 6), sink.topic_map, "sensors/a"))

    def leave_a_transaction_open() -> Producer:
        link = open_link(bridge, bridge.client_id, bridge.client_id)
        link.producer.begin_transaction()
        for record in records_for(range(6, 11), sink.topic_map, "sensors/a"):
            link.producer.produce(topic, record.payload, b"sensors/a")
        link.producer.produce(
            bridge.state_topic, IDENTITY.message_id(10), bridge.client_id, partition=link.state_partition
        )
        assert link.producer.flush(10) == 0  # stored on the broker, never committed
        return link.producer

    dead = await trio.to_thread.run_sync(leave_a_transaction_open)
    async with sink.connect() as uplink:
        assert await uplink.resume(6, 10) == 5
        await uplink.send(records_for(range(6, 11), sink.topic_map, "sensors/a"))
    assert [value for _, _, value, _ in await read(kafka, topic)] == [str(n).encode() for n in range(1, 11)]
    del dead


async def test_transactional_off_resumes_nothing(kafka: KafkaServer) -> None:
    topic = unique("plain")
    bridge = make_bridge(kafka.port, [BridgeTopic("sensors/#", remote_prefix=topic)], transactional=False)
    sink = make_sink(bridge)
    async with sink.connect() as uplink:
        await uplink.send(records_for(range(1, 4), sink.topic_map, "sensors/a"))
    async with sink.connect() as uplink:
        assert await uplink.resume(4, 4) == 0  # at least once: an idempotent producer keeps no resume point
    assert len(await read(kafka, topic)) == 3


async def test_in_rule_delivers_then_commits_offsets(kafka: KafkaServer) -> None:
    topic = unique("cmd")
    client_id = unique("gw-in")
    bridge = make_bridge(
        kafka.port,
        [BridgeTopic("cmd/+", direction="in", qos=1, local_prefix="local/", remote_prefix=topic)],
        client_id=client_id,
    )
    received: list[InboundMessage] = []

    async def deliver(message: InboundMessage) -> None:
        received.append(message)

    def publish() -> None:
        producer = Producer({"bootstrap.servers": kafka.bootstrap, "log_level": 2})
        producer.produce(topic, b"on", b"cmd/dev1", headers=[("edgebus-topic", b"cmd/dev1")])
        producer.produce(topic, b"keyed", b"cmd/dev2")  # no header: the key is the MQTT topic
        producer.produce(topic, b"deep", b"cmd/dev2/x")  # matches no in rule: dropped
        producer.produce(topic, b"kept", b"cmd/dev3", headers=[("edgebus-retain", b"1")])
        assert producer.flush(10) == 0

    def committed() -> int:
        """The records the group has committed (over the topic's partitions)."""
        consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": client_id, "log_level": 2})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            return sum(max(0, part.offset) for part in found)
        finally:
            consumer.close()

    await trio.to_thread.run_sync(publish)
    sink = make_sink(bridge, deliver)
    async with sink.connect():
        with trio.fail_after(30):
            while len(received) < 3:  # noqa: ASYNC110 - filled by the sink's receiver task
                await trio.sleep(0.05)
            # The batch's offsets (the dropped record's too), committed after the deliveries.
            while await trio.to_thread.run_sync(committed) < 4:  # noqa: ASYNC110 - polls the broker
                await trio.sleep(0.1)
    # Keyed by topic, the records sit in different partitions (num.partitions 3): Kafka orders each
    # partition, so each MQTT topic, not the three topics among themselves.
    assert sorted((m.payload, m.retain, sink.topic_map.route_in(m.topic)) for m in received) == sorted([
        (b"on", False, "local/cmd/dev1"),
        (b"keyed", False, "local/cmd/dev2"),
        (b"kept", True, "local/cmd/dev3"),
    ])
    # Reconnecting: the group's committed offsets say all of it was delivered.
    received.clear()
    async with sink.connect():
        await trio.sleep(3.0)
    assert received == []


async def test_a_muted_link_fails_the_send_within_ack_timeout(
    kafka: KafkaServer, nursery: trio.Nursery
) -> None:
    # The broker stops answering (acks lost on the way): the commit cannot complete.
    proxy = ChaosProxy("127.0.0.1", kafka.proxied_port, kafka.proxy_port)
    port = await nursery.start(proxy.serve)
    topic = unique("mute")
    bridge = make_bridge(
        port, [BridgeTopic("sensors/#", remote_prefix=topic)], ack_timeout=2.0, client_id=unique("gw-m")
    )
    sink = make_sink(bridge)
    async with sink.connect() as uplink:
        await uplink.resume(1, 10)
        proxy.mute(30)
        started = trio.current_time()
        with pytest.raises(SinkError, match="commit"):
            await uplink.send(records_for(range(1, 4), sink.topic_map, "sensors/a"))
        assert trio.current_time() - started < bridge.ack_timeout + 2.0


async def test_a_cut_link_ends_an_idle_connection(kafka: KafkaServer, nursery: trio.Nursery) -> None:
    # Every broker connection is reset and refused: librdkafka reports all brokers down, and the idle
    # link ends (SinkError) without waiting for a send.
    proxy = ChaosProxy("127.0.0.1", kafka.proxied_port, kafka.proxy_port)
    port = await nursery.start(proxy.serve)
    bridge = make_bridge(
        port, [BridgeTopic("sensors/#", remote_prefix=unique("cut"))], client_id=unique("gw-c")
    )
    sink = make_sink(bridge)

    async def hold_then_cut() -> None:
        async with sink.connect() as uplink:
            await uplink.resume(1, 10)
            proxy.flap(30)
            await trio.sleep_forever()

    with trio.fail_after(bridge.ack_timeout + 5.0), pytest.raises(SinkError, match="dead"):
        await hold_then_cut()


async def test_an_unreachable_cluster_fails_connect(kafka: KafkaServer) -> None:
    from tests.processes import free_port

    bridge = make_bridge(
        free_port(), [BridgeTopic("sensors/#", remote_prefix="x")], connect_timeout=1.0, ack_timeout=1.0
    )

    async def connect() -> None:
        async with make_sink(bridge).connect():
            pass

    with trio.fail_after(10), pytest.raises(SinkError, match="could not connect to Kafka"):
        await connect()


async def test_a_refused_cluster_fails_connect_at_once() -> None:
    # Catch-up after an outage begins as soon as the cluster answers: the sink tries the port before it
    # makes any librdkafka client, so a refused attempt ends at once (and the bridge's backoff, not
    # librdkafka's, decides when to try again) instead of waiting out connect_timeout. Best of 3.
    from tests.processes import free_port

    bridge = make_bridge(
        free_port(), [BridgeTopic("sensors/#", remote_prefix="x")], connect_timeout=2.0, ack_timeout=2.0
    )
    took = []
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(SinkError, match="could not connect to Kafka"):
            async with make_sink(bridge).connect():
                pass
        took.append(time.monotonic() - started)
    assert min(took) < 0.5, took


def test_an_all_brokers_down_from_before_the_connection_is_forgotten(kafka: KafkaServer) -> None:
    # librdkafka queues "all brokers down" while the cluster is still coming up and hands it over on the
    # next poll; once init_transactions succeeded it is stale and must not end the new connection. A
    # fatal error is never forgotten.
    bridge = make_bridge(kafka.port, [BridgeTopic("sensors/#", remote_prefix=unique("stale"))])
    link = open_link(bridge, unique("gw-s"), "state-key")
    try:
        link.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        assert link.dead is not None
        link.forget_stale_errors()
        assert link.dead is None
        link.on_error(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
        link.forget_stale_errors()
        assert link.dead is not None
    finally:
        close_link(link)


BRIDGE = '[[bridge]]\nname = "cloud"\nkind = "kafka"\naddresses = ["127.0.0.1:9092"]\n'


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.toml")
    return str(caught.value)


def test_config_errors_name_file_and_line() -> None:
    config = parse_config(
        BRIDGE + 'key = "{2}"\nkafka_properties = { "linger.ms" = 20, "compression.type" = "lz4" }\n'
        'topics = [{ pattern = "sensors/#", remote_prefix = "tele-{2}" }]\n',
        "gw.toml",
    )
    assert config.bridge[0].kafka_properties == (("linger.ms", "20"), ("compression.type", "lz4"))
    assert "gw.toml:" in _error(BRIDGE + 'topics = [{ pattern = "sensors/#" }]\n')
    assert "remote_prefix must name the Kafka topic" in _error(
        BRIDGE + 'topics = [{ pattern = "sensors/#" }]\n'
    )
    assert "unknown placeholder {device}" in _error(
        BRIDGE + 'key = "{device}"\ntopics = [{ pattern = "a/#", remote_prefix = "t" }]\n'
    )
    assert "an in rule's Kafka topic cannot be a template" in _error(
        BRIDGE + 'topics = [{ pattern = "a/#", direction = "in", remote_prefix = "t-{1}" }]\n'
    )
    assert "'bootstrap.servers' is set by the bridge itself" in _error(
        BRIDGE + 'kafka_properties = { "bootstrap.servers" = "x:1" }\n'
        'topics = [{ pattern = "a/#", remote_prefix = "t" }]\n'
    )
    error = _error(
        BRIDGE + 'kafka_properties = { "a" = [1] }\ntopics = [{ pattern = "a/#", remote_prefix = "t" }]\n'
    )
    assert error.startswith("gw.toml:5: bridge[0].kafka_properties.a: must be a string, number or boolean")

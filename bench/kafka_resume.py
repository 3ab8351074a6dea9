"""What a Kafka bridge's resume costs, both ways (issue 13): the transactional design's read of its state
record, against the prototype of the alternative, reading each partition's tail for this gateway's highest
id (not shipped: see README, "Apache Kafka", for the decision and these figures).

One real Kafka (tests/bridge/kafka_upstream.py, its jars from scripts/test). A data topic of ``--partitions``
partitions holds ``--records`` records of two gateways, interleaved, keyed by 32 device topics, each with
an ``edgebus-msg-id`` header; then ``--foreign-tail`` records of the other gateway only (our newest record
is that deep under the tail). The tail scan finds our highest id; the state-topic read finds our state
record among ``--records // 1000`` state records of 50 bridges (one per batch of 1,000, as the sink writes
them). Each is timed ``--repeat`` times, each time with fresh clients, as a reconnect has.

    python -m bench.kafka_resume --partitions 6 --records 200000 --foreign-tail 0,10000,100000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from edgebus.bridge.kafka_client import KafkaLink, read_resume_point
from edgebus.bridge.sink import MESSAGE_ID_PROPERTY
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.kafka_upstream import KafkaServer, kafka_available

OURS = "gw-a"
OTHER = "gw-b"
EPOCH = "e1"
DEVICE_TOPICS = [f"sensors/s{i}" for i in range(32)]
#: The first look back from a partition's end; each further look goes 8 times as far.
TAIL_WINDOW = 500


def seq_of(message_id: bytes, prefix: bytes) -> int:
    return int(message_id[len(prefix) :]) if message_id.startswith(prefix) else 0


def scan_tails(bootstrap: str, topic: str, gateway: str, timeout: float = 30.0) -> dict[int, int]:
    """The prototype: per partition of ``topic``, the highest seq among ``gateway``'s records, read back
    from the partition's end in growing windows (all partitions fetched at once) until one is found or the
    partition's start is reached. {partition: seq} (0: none of ours)."""
    prefix = f"{gateway}:{EPOCH}:".encode()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tail-scan", "enable.auto.commit": False,
                         "enable.partition.eof": True, "log_level": 2, "fetch.wait.max.ms": 10})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        partitions = sorted(metadata.topics[topic].partitions)
        bounds = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                  for p in partitions}
        found: dict[int, int] = {}
        window = {p: TAIL_WINDOW for p in partitions}
        upper = {p: bounds[p][1] for p in partitions}  # each look reads [start, upper)
        pending = [p for p in partitions if bounds[p][1] > bounds[p][0]]
        for p in partitions:
            if p not in pending:
                found[p] = 0
        deadline = time.monotonic() + timeout
        while pending:
            starts = {p: max(bounds[p][0], upper[p] - window[p]) for p in pending}
            consumer.assign([TopicPartition(topic, p, starts[p]) for p in pending])
            best = dict.fromkeys(pending, 0)
            done: set[int] = set()
            while len(done) < len(pending):
                if time.monotonic() > deadline:
                    raise TimeoutError("tail scan")
                for message in consumer.consume(1000, 0.02):
                    p = message.partition() or 0
                    error = message.error()
                    offset = message.offset() or 0
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            done.add(p)
                            continue
                        raise KafkaException(error)
                    if p in done or offset >= upper[p]:
                        done.add(p)
                        continue
                    raw = message.headers() or []
                    pairs = raw.items() if isinstance(raw, dict) else raw
                    for name, value in pairs:
                        if name == MESSAGE_ID_PROPERTY and isinstance(value, bytes):
                            best[p] = max(best[p], seq_of(value, prefix))
                    if offset + 1 >= upper[p]:
                        done.add(p)
            still = []
            for p in pending:
                if best[p] or starts[p] <= bounds[p][0]:
                    found[p] = best[p]
                else:
                    upper[p] = starts[p]
                    window[p] *= 8
                    still.append(p)
            pending = still
        return found
    finally:
        consumer.close()


def fill(server: KafkaServer, topic: str, partitions: int, records: int, foreign_tail: int,
         state_topic: str) -> int:
    """The data topic and the state topic; returns our highest seq."""
    admin = AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 2})
    for name, count, config in ((topic, partitions, {}),
                                (state_topic, 1, {"cleanup.policy": "compact"})):
        admin.create_topics([NewTopic(name, num_partitions=count, config=config)])[name].result(30)
    producer = Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 20, "log_level": 2,
                         "queue.buffering.max.messages": 1_000_000,
                         "enable.idempotence": True})
    seqs = {OURS: 0, OTHER: 0}
    for index in range(records + foreign_tail):
        gateway = OURS if index < records and index % 2 == 0 else OTHER
        seqs[gateway] += 1
        device = DEVICE_TOPICS[index % len(DEVICE_TOPICS)]
        producer.produce(topic, b"x" * 64, f"{gateway}/{device}",
                         headers=[(MESSAGE_ID_PROPERTY, f"{gateway}:{EPOCH}:{seqs[gateway]}")])
        if index % 1000 == 999:
            bridge = f"edgebus-gw-{(index // 1000) % 50}-cloud"
            if (index // 1000) % 50 == 0:
                bridge = f"edgebus-{OURS}-cloud"
            producer.produce(state_topic, f"{OURS}:{EPOCH}:{seqs[OURS]}", bridge, partition=0)
            producer.poll(0)
    producer.flush(60)
    return seqs[OURS]


def time_state_read(server: KafkaServer, state_topic: str) -> tuple[float, str | None]:
    bridge = BridgeConfig(name="cloud", kind="kafka", addresses=(ListenAddress("127.0.0.1", server.port),),
                          topics=(BridgeTopic("sensors/#", qos=1, remote_prefix="t"),),
                          state_topic=state_topic)
    started = time.monotonic()
    admin = AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 2})
    link = KafkaLink(producer=None, admin=admin, state_key=f"edgebus-{OURS}-cloud",  # type: ignore[arg-type]
                     state_partition=0)
    value = read_resume_point(bridge, "bench-resume", link, 30.0)
    return time.monotonic() - started, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kafka_resume", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--records", type=int, default=100_000, help="interleaved records of both gateways")
    parser.add_argument("--foreign-tail", default="0,10000,100000",
                        help="comma-separated: records of the other gateway only, after ours (one run each)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if not kafka_available():
        print("Kafka's jars are not in .cache/kafka/lib (run scripts/test)")
        return 2
    server = KafkaServer(Path(tempfile.mkdtemp(prefix="bench-kafka-resume-")))
    server.start()
    try:
        for run, tail in enumerate(int(t) for t in args.foreign_tail.split(",")):
            topic, state_topic = f"data-{run}", f"state-{run}"
            highest = fill(server, topic, args.partitions, args.records, tail, state_topic)
            scans, reads = [], []
            for _ in range(args.repeat):
                started = time.monotonic()
                found = scan_tails(server.bootstrap, topic, OURS)
                scans.append(time.monotonic() - started)
                assert max(found.values()) == highest, (found, highest)
                elapsed, value = time_state_read(server, state_topic)
                reads.append(elapsed)
                assert value is not None
            print(f"{args.partitions} partitions, {args.records:,} interleaved records of 2 gateways + "
                  f"{tail:,} of the other after ours: tail scan median "
                  f"{statistics.median(scans) * 1000:.0f} ms "
                  f"(min {min(scans) * 1000:.0f}, max {max(scans) * 1000:.0f}); state record read median "
                  f"{statistics.median(reads) * 1000:.0f} ms (min {min(reads) * 1000:.0f}, "
                  f"max {max(reads) * 1000:.0f})", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

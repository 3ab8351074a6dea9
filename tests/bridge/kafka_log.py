"""Kafka as the outage campaign's log (test_outages.LOGS), and `read_topic`: what a topic holds, read as a
log consumer should (``isolation.level=read_committed``), partition by partition."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.kafka_upstream import KafkaServer, shared_kafka
from tests.bridge.outage_logs import FAST_LINK, FAST_LINK_TOML, GATEWAY

__all__ = ["KafkaLog", "StoredRecord", "create_topic", "kafka_log", "read_topic"]

_topics = itertools.count(1)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]  # the first of each name
    header_list: tuple[tuple[str, bytes], ...] = ()  # every header, in order, repeats included


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> list[StoredRecord]:
    """Every committed record of ``topic`` (blocking), partition after partition in offset order (so
    per-key order is kept). Returns once each partition is read to its committed end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tests-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "log_level": 2,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []
        partitions = sorted(found.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])  # 0: the beginning
        records: dict[int, list[StoredRecord]] = {p: [] for p in partitions}
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {set(partitions) - at_end} not at their end")
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                partition = message.partition() or 0
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(partition)
                        continue
                    if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        return []
                    raise KafkaException(error)
                at_end.discard(partition)
                raw = message.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                header_list = tuple(
                    (name, value.encode() if isinstance(value, str) else value or b"")
                    for name, value in pairs
                )
                headers: dict[str, bytes] = {}
                for name, header_value in header_list:
                    headers.setdefault(name, header_value)
                offset, value = message.offset() or 0, message.value() or b""
                records[partition].append(
                    StoredRecord(partition, offset, message.key(), value, headers, header_list)
                )
        return [record for p in partitions for record in records[p]]
    finally:
        consumer.close()


@dataclass
class KafkaLog:
    """The shared test Kafka; this log is one topic of its own. Bridges direct use ``server.port``; through
    a proxy, the proxy must listen on ``server.proxy_port`` and forward to ``server.proxied_port``."""

    server: KafkaServer
    topic: str
    exactly_once: bool = True
    transactional: bool = True  # False: the control run, exactly-once switched off

    @property
    def proxy_route(self) -> tuple[int, int]:
        """(the port a ChaosProxy forwards to, the port it listens on): see tests/bridge/kafka_upstream.py."""
        return self.server.proxied_port, self.server.proxy_port

    def bridge(self, port: int, **overrides: object) -> BridgeConfig:
        values: dict[str, object] = {
            "name": "cloud",
            "kind": "kafka",
            "addresses": (ListenAddress("127.0.0.1", port),),
            "topics": (BridgeTopic("sensors/#", qos=1, remote_prefix=self.topic),),
            "transactional": self.transactional,
            **FAST_LINK,
        }
        values.update(overrides)
        return BridgeConfig(**values)  # type: ignore[arg-type]

    def bridge_toml(self, port: int) -> str:
        return (
            f'[[bridge]]\nname = "cloud"\nkind = "kafka"\naddresses = ["127.0.0.1:{port}"]\n'
            f"transactional = {'true' if self.transactional else 'false'}\n{FAST_LINK_TOML}"
            f'topics = [{{ pattern = "sensors/#", qos = 1, remote_prefix = "{self.topic}" }}]\n'
        )

    async def _records(self) -> list[StoredRecord]:
        return await trio.to_thread.run_sync(read_topic, self.server.bootstrap, self.topic)

    async def count(self) -> int:
        return len(await self._records())

    async def read(self) -> list[tuple[str, int]]:
        found = []
        for record in await self._records():
            assert record.headers["edgebus-msg-id"].startswith(f"{GATEWAY}:".encode())
            topic = record.headers["edgebus-topic"].decode()
            assert record.key == topic.encode()
            found.append((topic, int(record.value)))
        return found

    async def restart(self) -> None:
        await self.server.restart()


def create_topic(server: KafkaServer, topic: str) -> None:
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 2})
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(30)


@asynccontextmanager
async def kafka_log(tmp_path: Path, transactional: bool = True) -> AsyncIterator[KafkaLog]:
    """A fresh topic (3 partitions) on the session's Kafka. ``tmp_path`` is unused: the broker outlives
    the test (a JVM starts in seconds)."""
    server = await trio.to_thread.run_sync(shared_kafka)
    topic = f"log-{GATEWAY}-{time.time_ns() % 10**9}-{next(_topics)}"
    await trio.to_thread.run_sync(create_topic, server, topic)
    yield KafkaLog(server, topic, transactional=transactional)

"""An Apache Kafka reader for the fleet backend (`edgebus_fleet.cloud_log`): a confluent-kafka consumer with
``isolation.level=read_committed`` (what the bridge's transactions require of every consumer: a
``read_uncommitted`` one also sees aborted batches, hence duplicates), on the Kafka topic the bridge writes
(``[log] stream``). `start` pins each partition at its end, so what earlier runs left is not read; the MQTT
topic is the ``edgebus-topic`` header (the bridge's record key may be configured to something else).

librdkafka's consumer blocks: each `consume` of up to a batch is one worker-thread crossing."""

from __future__ import annotations

import time

import trio
from confluent_kafka import Consumer, KafkaException, TopicPartition

from edgebus.bridge.kafka import TOPIC_HEADER
from edgebus.bridge.kafka_client import describe
from edgebus_fleet.cloud_log import LogSettings, OnMessage

__all__ = ["KafkaReader"]

BATCH = 500
WAIT_S = 0.5
#: Seconds `start` waits for the topic's metadata (every partition with a leader).
START_TIMEOUT_S = 20.0


class KafkaReader:
    def __init__(self, settings: LogSettings) -> None:
        self.settings = settings
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        try:
            self._consumer = await trio.to_thread.run_sync(self._open)
        except KafkaException as error:
            raise ConnectionError(describe(error)) from None  # the engine's "cloud log ...: <this>"

    def _open(self) -> Consumer:
        settings = self.settings
        consumer = Consumer(
            {
                "bootstrap.servers": f"{settings.host}:{settings.port}",
                "group.id": f"edgebus-fleet-{settings.stream}",  # offsets are never committed: assign()
                "isolation.level": settings.isolation,  # read_uncommitted: the control run only
                "enable.auto.commit": False,
                "allow.auto.create.topics": True,  # a broker with auto.create.topics.enable makes it here
                "socket.connection.setup.timeout.ms": 5000,
                "log_level": 2,
            }
        )
        try:
            consumer.assign(self._ends(consumer))
        except BaseException:
            consumer.close()
            raise
        return consumer

    def _ends(self, consumer: Consumer) -> list[TopicPartition]:
        """Each partition of the topic at its current end (the high watermark)."""
        topic = self.settings.stream
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            found = consumer.list_topics(topic, timeout=START_TIMEOUT_S).topics.get(topic)
            problem = "not in the cluster's metadata" if found is None else found.error
            if found is not None and problem is None:
                leaderless = [p for p in found.partitions.values() if p.error is not None or p.leader < 0]
                if found.partitions and not leaderless:
                    break
                problem = f"{len(leaderless)} of {len(found.partitions)} partitions without a leader"
            if time.monotonic() > deadline:
                raise KafkaException(f"Kafka topic {topic!r}: {problem}")
            time.sleep(0.2)
        ends = []
        for partition in sorted(found.partitions):
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=START_TIMEOUT_S
            )
            ends.append(TopicPartition(topic, partition, high))
        return ends

    def _read(self) -> list[tuple[str, bytes]]:
        assert self._consumer is not None
        prefix = self.settings.remote_prefix
        found = []
        for message in self._consumer.consume(BATCH, WAIT_S):
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                continue  # end of a partition, or transient (a broker restarting): librdkafka retries
            raw = message.headers() or []
            headers = dict(raw.items() if isinstance(raw, dict) else raw)
            topic = headers.get(TOPIC_HEADER)
            text = topic.decode("utf-8", "replace") if isinstance(topic, bytes) else topic or ""
            found.append((text.removeprefix(prefix), message.value() or b""))
        return found

    async def run(self, on_message: OnMessage) -> None:
        while True:
            for topic, payload in await trio.to_thread.run_sync(self._read):
                on_message(topic, payload)

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(consumer.close)

"""The Apache Kafka sink (confluent-kafka / librdkafka): each batch is one Kafka transaction that also writes
the bridge's resume point; in rules read a consumer group. Driven from trio without a thread per message:
``produce()`` runs on the trio thread (it only queues), and one worker-thread crossing per batch commits
the transaction (librdkafka flushes and collects every delivery report inside it).

Exactly once across outages and gateway restarts (``transactional = true``, the default):

* the producer's ``transactional.id`` is the bridge's client id (``edgebus-<gateway>-<bridge>``), stable
  across restarts. Each connection's ``init_transactions`` fences every earlier producer with that id and
  completes or aborts the transaction it left open; nothing of an aborted batch is visible to
  ``read_committed`` readers.
* each `send` batch is one transaction: its records, plus one record in the compacted state topic
  (``__edgebus_bridge_state``, key = client id, value = the message id of the batch's last record). Both
  are committed together or not at all.
* `resume` reads that state record back ``read_committed``: the runner skips everything up to it, and
  sends the rest again, in a new transaction.

An idempotent producer alone would not do: its de-duplication holds only within one producer id, which a
reconnect or a gateway restart replaces. Reading the data partitions' tails for our highest id instead
(the JetStream sink's way) would need to read every partition of every topic a template can name; the
state record costs one extra record per batch, and `bench.bridge` measured no loss of throughput worth the
difference (README, "Kafka"). With ``transactional = false`` the producer is only idempotent and `resume`
knows nothing: at least once.

Records: topic from the rule (edgebus.bridge.rules), key from the ``key`` template (default the MQTT topic:
one partition per topic, so per-topic order), headers ``edgebus-msg-id`` (``<gateway>:<epoch>:<seq>``),
``edgebus-topic`` (the MQTT topic), ``edgebus-retain: 1`` when retained, ``content-type`` (the device's
MQTT 5 Content Type, or application/json after a cbor-json transform), then one header per MQTT 5 user
property, name and value as the device gave them, in order. Kafka headers may repeat, so a user property
named like one of ours is sent too, after ours: readers take the first of a name. Consumers must read with
``isolation.level=read_committed``.

In rules: a consumer group named after the client id; a batch's offsets are committed only after every
message of it was delivered (committed to the local store): at least once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import trio
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from edgebus.bridge.kafka_client import (
    KafkaLink,
    client_settings,
    close_link,
    describe,
    open_link,
    read_resume_point,
)
from edgebus.bridge.rules import TopicMap, expand_template
from edgebus.bridge.sink import (
    MESSAGE_ID_PROPERTY,
    BridgeIdentity,
    Deliver,
    InboundMessage,
    Record,
    SinkBase,
    SinkError,
    Uplink,
)
from edgebus.config import BridgeConfig
from edgebus.nursery import unwrap_single_error

__all__ = ["CONTENT_TYPE_HEADER", "RETAIN_HEADER", "TOPIC_HEADER", "KafkaSink"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The MQTT topic a record came from (the record key is configurable; this header always says it).
TOPIC_HEADER = "edgebus-topic"
RETAIN_HEADER = "edgebus-retain"
CONTENT_TYPE_HEADER = "content-type"
#: Seconds between looks at the producer's health (librdkafka's error callback) while idle.
WATCH_INTERVAL_S = 0.25
#: Most messages one consume() call returns (one crossing delivers them, one commits their offsets).
FETCH_BATCH = 100
#: Seconds one consume() call waits when nothing is there (also the longest a cancellation waits for it).
FETCH_WAIT_S = 0.5


async def _blocking(what: str, fn: Callable[..., T], *args: Any) -> T:
    """One worker-thread crossing; librdkafka's failures become SinkError."""
    try:
        return await trio.to_thread.run_sync(fn, *args)
    except SinkError:
        raise
    except TimeoutError:  # an admin request's future (concurrent.futures) not done in time
        raise SinkError(f"Kafka {what}: no answer in time") from None
    except (KafkaException, BufferError, ValueError) as error:
        raise SinkError(f"Kafka {what} failed: {describe(error)}") from None


class _KafkaUplink:
    """The `Uplink` of one connection."""

    def __init__(self, sink: KafkaSink, link: KafkaLink) -> None:
        self._sink = sink
        self._link = link

    async def resume(self, first_seq: int, last_seq: int) -> int:
        sink = self._sink
        bridge = sink.bridge
        if not bridge.transactional:
            return 0  # an idempotent producer keeps no resume point: at least once
        started = time.monotonic()
        value = await _blocking(
            "resume", read_resume_point, bridge, sink.client_id, self._link, bridge.ack_timeout
        )
        log.debug("resume point %r read in %.3f s", value, time.monotonic() - started)
        highest = sink.identity.seq_of(value)
        if value is not None and highest == 0:
            log.info("bridge %r: the last state record %r is of another store epoch", bridge.name, value)
        if first_seq <= last_seq and highest > last_seq:
            log.warning(
                "Kafka state topic %r holds our seq %d beyond the outbox's last %d (a restored backup?)",
                bridge.state_topic,
                highest,
                last_seq,
            )
        return highest

    async def send(self, records: Sequence[Record]) -> None:
        if not records:
            return
        link = self._link
        if link.dead is not None:
            raise SinkError(f"Kafka link is dead: {link.dead}")
        sink = self._sink
        bridge = sink.bridge
        producer = link.producer
        try:
            if bridge.transactional:
                producer.begin_transaction()
            for record in records:
                kafka_topic, _, mqtt_topic = record.topic.partition("/")
                headers: list[tuple[str, str | bytes | None]] = [
                    (MESSAGE_ID_PROPERTY, record.message_id),
                    (TOPIC_HEADER, mqtt_topic),
                ]
                if record.retain:
                    headers.append((RETAIN_HEADER, "1"))
                if record.content_type:
                    headers.append((CONTENT_TYPE_HEADER, record.content_type))
                if record.user_properties:
                    # After ours, one header each, as given and in order (Kafka headers may repeat).
                    headers.extend(record.user_properties)
                key = expand_template(bridge.key, mqtt_topic) if bridge.key else None
                producer.produce(kafka_topic, record.payload, key, headers=headers)
            if bridge.transactional:
                producer.produce(
                    bridge.state_topic, records[-1].message_id, link.state_key, partition=link.state_partition
                )
        except (KafkaException, BufferError) as error:
            raise SinkError(f"Kafka produce failed: {describe(error)}") from None
        produced = time.monotonic()
        link.committing = True
        try:
            if bridge.transactional:
                await _blocking("commit", producer.commit_transaction, bridge.ack_timeout)
            else:
                await _blocking("flush", self._flush, bridge.ack_timeout, len(records))
        finally:
            link.committing = False
        # Acknowledged: the link is alive, whatever "all brokers down" librdkafka queued while it rode out
        # a short cut (served after the commit, it cost a reconnect, and a fencing init_transactions).
        link.forget_stale_errors()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%d records committed in %.3f s", len(records), time.monotonic() - produced)

    def _flush(self, timeout: float, count: int) -> None:
        left = self._link.producer.flush(timeout)
        if left:
            raise SinkError(f"{left} of {count} Kafka records unacknowledged within {timeout:g} s")
        if self._link.fatal:
            raise SinkError(f"Kafka link is dead: {self._link.dead}")


class KafkaSink(SinkBase):
    """An upstream Apache Kafka cluster (`edgebus.bridge.sink.Sink`)."""

    def __init__(
        self,
        bridge: BridgeConfig,
        identity: BridgeIdentity,
        topic_map: TopicMap,
        deliver: Deliver,
        client_id: str,
    ) -> None:
        super().__init__(bridge, identity, topic_map, deliver, client_id)
        self._in_topics = sorted({kafka_topic for kafka_topic, _ in topic_map.remote_filters()})

    def connect(self) -> AbstractAsyncContextManager[Uplink]:
        return self._open()

    async def _probe(self) -> None:
        """One TCP connection to a bootstrap address, made and closed before any librdkafka client exists;
        SinkError if none accepts within connect_timeout. A client made while the cluster is down retries
        on librdkafka's schedule (its reconnect backoff grows to 1 s) and the bridge waits out its timeout
        (measured: the first record ~1 s later than needed after the broker came back); a client made once
        the port answers connects at once. So the bridge's own backoff decides when to try again."""
        bridge = self.bridge
        failures = []
        for address in bridge.addresses:
            with trio.move_on_after(bridge.connect_timeout):
                try:
                    stream = await trio.open_tcp_stream(address.host, address.port)
                except OSError as error:
                    failures.append(f"{address.host}:{address.port}: {error.strerror or error}")
                    continue
                await stream.aclose()
                return
            failures.append(f"{address.host}:{address.port}: no answer within {bridge.connect_timeout:g} s")
        raise SinkError("could not connect to Kafka: " + "; ".join(failures))

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Uplink]:
        await self._probe()
        link = await _blocking("connect", open_link, self.bridge, self.client_id, self.client_id)
        try:
            with unwrap_single_error():  # the watcher and the receiver may see the same dead link
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, link)
                    if self._in_topics:
                        await nursery.start(self._receive)
                    try:
                        yield _KafkaUplink(self, link)
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(close_link, link)

    async def _watch(self, link: KafkaLink) -> None:
        """Serve librdkafka's callbacks while idle; a link it reports dead ends the connection."""
        while True:
            link.producer.poll(0)
            if link.dead is not None and (link.fatal or not link.committing):
                raise SinkError(f"Kafka link is dead: {link.dead}")
            await trio.sleep(WATCH_INTERVAL_S)

    # -- in rules ----------------------------------------------------------------------------------------

    def _consumer(self) -> Consumer:
        settings = {
            **client_settings(self.bridge, self.client_id),
            "group.id": self.client_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **dict(self.bridge.kafka_properties),
        }
        consumer = Consumer(settings)
        consumer.subscribe(self._in_topics)
        return consumer

    async def _receive(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Consume batches; deliver each message in order; commit the batch's offsets once all were
        delivered. Offsets not committed (the link died mid-batch) mean a redelivery: at least once."""
        consumer = await _blocking("consumer", self._consumer)
        task_status.started()
        try:
            while True:
                batch = await _blocking("consume", consumer.consume, FETCH_BATCH, FETCH_WAIT_S)
                offsets: dict[tuple[str, int], int] = {}
                for message in batch:
                    error = message.error()
                    if error is not None:
                        if error.fatal():
                            raise SinkError(f"Kafka consumer: {error.name()}: {error.str()}")
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.info("bridge %r: Kafka consumer: %s", self.bridge.name, error.str())
                        continue
                    await self._deliver(message)
                    topic, partition, offset = message.topic(), message.partition(), message.offset()
                    if topic is not None and partition is not None and offset is not None:
                        offsets[(topic, partition)] = offset + 1
                if offsets:
                    positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                    await _blocking("offset commit", _commit, consumer, positions)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close_consumer, consumer)

    async def _deliver(self, message: Message) -> None:
        raw = message.headers() or []
        pairs = raw.items() if isinstance(raw, dict) else raw
        headers: dict[str, bytes | None] = {}
        for name, value in pairs:
            # The first of a name is ours (edgebus writes its headers before a device's user properties).
            headers.setdefault(name, _bytes(value))
        topic_value = headers.get(TOPIC_HEADER)
        key = message.key()
        if topic_value is not None:
            mqtt_topic = topic_value.decode(errors="replace")
        elif key:
            mqtt_topic = key.decode(errors="replace")
        else:
            mqtt_topic = message.topic() or ""
        kafka_topic = message.topic() or ""
        qos = self._inbound_qos(kafka_topic)
        remote = f"{kafka_topic}/{mqtt_topic}"
        if qos is None or self.topic_map.route_in(remote) is None:
            log.debug("bridge %r: no in rule for %r; dropped", self.bridge.name, remote)
            return
        retain = headers.get(RETAIN_HEADER) == b"1"
        await self.deliver(InboundMessage(remote, message.value() or b"", qos, retain))

    def _inbound_qos(self, kafka_topic: str) -> int | None:
        for rule in self.topic_map.in_rules:
            if rule.remote_prefix == kafka_topic:
                return rule.qos
        return None


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _commit(consumer: Consumer, positions: list[TopicPartition]) -> None:
    consumer.commit(offsets=positions, asynchronous=False)


def _close_consumer(consumer: Consumer) -> None:
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as error:
        log.debug("closing a Kafka consumer: %s", describe(error))

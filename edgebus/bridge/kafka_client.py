"""The blocking side of the Kafka sink: librdkafka client settings, and the calls that wait on the network
(open a transactional producer, read the resume point, close), each run on a worker thread once per step
by edgebus.bridge.kafka. Nothing here is called per message.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.cimpl import NewTopic

from edgebus.bridge.sink import SinkError
from edgebus.config import BridgeConfig

__all__ = ["KafkaLink", "client_settings", "describe", "open_link", "read_resume_point"]

log = logging.getLogger("edgebus.bridge.kafka")

#: How far back from the end of its state partition resume first looks for this bridge's last record;
#: each further look goes 8 times as far (until the partition's start).
RESUME_WINDOW = 1000
#: Seconds one consume() call of the resume read waits for a full batch.
RESUME_POLL_S = 0.02
#: Seconds a transaction may stay open on the broker (a gateway that dies mid-batch holds back
#: read_committed readers of the partitions it wrote for at most this long, unless it restarts first:
#: its next init_transactions aborts the open transaction at once).
TRANSACTION_TIMEOUT_MS = 60_000


def describe(error: BaseException) -> str:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        kafka_error: KafkaError = error.args[0]
        return f"{kafka_error.name()}: {kafka_error.str()}"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def client_settings(bridge: BridgeConfig, client_id: str) -> dict[str, Any]:
    """What producer, consumer and admin client share: addresses, TLS, SASL/PLAIN, timeouts, logging."""
    servers = ",".join(
        f"[{a.host}]:{a.port}" if ":" in a.host else f"{a.host}:{a.port}" for a in bridge.addresses
    )
    settings: dict[str, Any] = {
        "bootstrap.servers": servers,
        "client.id": client_id,
        "socket.connection.setup.timeout.ms": max(1000, int(bridge.connect_timeout * 1000)),
        "socket.keepalive.enable": True,
        # librdkafka reconnects a link by itself (an uplink back after a cut): no slower than the bridge's
        # own backoff would, and at least every second.
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": min(1000, max(50, int(bridge.backoff_max * 1000))),
        # No re-bootstrap inside librdkafka (KIP-899): a failed link is closed and the bridge makes a new
        # client from the configured addresses, which is a re-bootstrap. With it on, a transaction cut by
        # an uplink outage committed 1.5-2.0 s after the uplink was back, with it off 0.03-0.14 s
        # (measured in the closing note of issue 13).
        "metadata.recovery.strategy": "none",
        # librdkafka logs every refused reconnect; the bridge logs the failure it causes once instead.
        "log_level": 2,
    }
    if bridge.tls:
        settings["security.protocol"] = "SSL"
        if bridge.cafile:
            settings["ssl.ca.location"] = bridge.cafile
        if bridge.certfile:
            settings["ssl.certificate.location"] = bridge.certfile
        if bridge.keyfile:
            settings["ssl.key.location"] = bridge.keyfile
    if bridge.username:
        settings["security.protocol"] = "SASL_SSL" if bridge.tls else "SASL_PLAINTEXT"
        settings["sasl.mechanism"] = "PLAIN"
        settings["sasl.username"] = bridge.username
        settings["sasl.password"] = bridge.password
    return settings


def _user_settings(bridge: BridgeConfig) -> dict[str, str]:
    return dict(bridge.kafka_properties)


@dataclass
class KafkaLink:
    """One connection's clients: the producer, the admin client, and where this bridge's resume point is
    kept (the state topic's partition for its key)."""

    producer: Producer
    admin: AdminClient
    state_key: str
    state_partition: int
    dead: str | None = None  # set by librdkafka's error callback: every broker down, or a fatal error
    fatal: bool = False
    # A commit (or flush) is waiting on a worker thread: its own timeout (ack_timeout) decides whether
    # the link is dead, so that a short outage does not end a link that is about to commit.
    committing: bool = False

    def on_error(self, error: KafkaError) -> None:
        if error.fatal() or error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.dead = f"{error.name()}: {error.str()}"
            self.fatal = self.fatal or error.fatal()

    def forget_stale_errors(self) -> None:
        """Serve the callbacks queued while connecting: an "all brokers down" from before the connection
        completed is over (measured: one queued while the broker was starting ended the first connection
        16 ms after it was made, costing a reconnect)."""
        self.producer.poll(0)
        if not self.fatal:
            self.dead = None


def open_link(bridge: BridgeConfig, client_id: str, state_key: str) -> KafkaLink:
    """Make the producer (transactional unless ``bridge.transactional`` is off), make sure the state topic
    exists, and init_transactions: that fences every earlier producer with our transactional.id (a previous
    incarnation of this gateway, or this process before the reconnect) and completes or aborts the
    transaction it left open, so that what the state topic says afterwards is final. Raises SinkError."""
    common = client_settings(bridge, client_id)
    settings = {
        **common,
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": TRANSACTION_TIMEOUT_MS,
        **_user_settings(bridge),
    }
    if bridge.transactional:
        settings["transactional.id"] = client_id
        settings["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
    link: KafkaLink | None = None
    timeout = max(bridge.connect_timeout, bridge.ack_timeout)
    started = time.monotonic()
    try:
        admin = AdminClient({**common, **_user_settings(bridge)})
        holder: list[KafkaLink] = []
        settings["error_cb"] = lambda error: holder[0].on_error(error) if holder else None
        if bridge.transactional:
            _create_state_topic(admin, bridge.state_topic, timeout)
            created = time.monotonic()
            producer, partitions = _initialised_producer(settings, bridge.state_topic, timeout)
            # Our own choice of partition (not the client's partitioner), so resume knows where to read.
            link = KafkaLink(producer, admin, state_key, zlib.crc32(state_key.encode()) % partitions)
            holder.append(link)
            link.forget_stale_errors()
            log.debug(
                "connected: state topic %.3f s, then init_transactions %.3f s",
                created - started,
                time.monotonic() - created,
            )
        else:
            producer = Producer(settings)
            link = KafkaLink(producer, admin, state_key, 0)
            holder.append(link)
            # Idempotent only: a metadata round trip proves the cluster is there.
            producer.list_topics(timeout=timeout)
            link.forget_stale_errors()
            log.debug("connected: metadata %.3f s", time.monotonic() - started)
        return link
    except KafkaException as error:
        if link is not None:
            close_link(link)
        servers = common["bootstrap.servers"]
        raise SinkError(f"could not connect to Kafka ({servers}): {describe(error)}") from None
    except TimeoutError:  # an admin request's future
        if link is not None:
            close_link(link)
        servers = common["bootstrap.servers"]
        raise SinkError(f"could not connect to Kafka ({servers}): no answer within {timeout:g} s") from None
    except (ValueError, TypeError) as error:  # a bad property in kafka_properties
        raise SinkError(f"Kafka client settings: {error}") from None


def _drop_producer(producer: Producer) -> None:
    try:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.flush(0)
    except (KafkaException, RuntimeError) as error:
        log.debug("dropping a Kafka producer: %s", describe(error))


def _create_state_topic(admin: AdminClient, topic: str, timeout: float) -> None:
    """Create the compacted state topic unless it exists."""
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, config={"cleanup.policy": "compact", "segment.ms": "3600000"})],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    try:
        futures[topic].result(timeout)
    except KafkaException as error:
        kafka_error = error.args[0] if error.args else None
        exists = isinstance(kafka_error, KafkaError) and kafka_error.code() == KafkaError.TOPIC_ALREADY_EXISTS
        if not exists:
            raise


def _initialised_producer(
    settings: dict[str, Any], state_topic: str, timeout: float
) -> tuple[Producer, int]:
    """A transactional producer whose init_transactions succeeded, and the state topic's partition count.

    The state topic's metadata is asked of the producer before init_transactions, on purpose: that leaves
    it a broker connection up. A producer without one finds "no brokers available" for its coordinator
    query and asks again only after 500 ms (librdkafka's fixed timer; seen in its debug log). Measured from
    the port answering to init_transactions done on a restarted test broker, 2 runs each: 0.53-0.56 s
    without, 0.14-0.17 s with. (A coordinator still loading its transaction log answers "load in
    progress", and librdkafka asks again after another fixed 500 ms: that wait remains.)"""
    deadline = time.monotonic() + timeout
    producer = Producer(settings)
    try:
        metadata = producer.list_topics(state_topic, timeout=timeout)
        found = metadata.topics.get(state_topic)
        if found is None or found.error is not None or not found.partitions:
            why = found.error if found is not None else "not in the metadata"
            raise SinkError(f"Kafka state topic {state_topic!r}: {why}")
        producer.init_transactions(max(0.001, deadline - time.monotonic()))
        return producer, len(found.partitions)
    except BaseException:
        _drop_producer(producer)
        raise


def read_resume_point(bridge: BridgeConfig, client_id: str, link: KafkaLink, timeout: float) -> str | None:
    """The value of this bridge's last committed state record (the message id of the last record of its last
    committed batch), or None. Reads ``read_committed`` up to the partition's end as it was after
    init_transactions (every transaction of ours is complete by then): another producer's open transaction
    in the same partition holds the read back until it ends, and past ``timeout`` that is SinkError."""
    topic = bridge.state_topic
    partition = TopicPartition(topic, link.state_partition)
    deadline = time.monotonic() + timeout
    specs = {TopicPartition(topic, link.state_partition): OffsetSpec.latest()}  # type: ignore[no-untyped-call]
    futures = link.admin.list_offsets(
        specs, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=timeout
    )
    end = next(iter(futures.values())).result(timeout).offset
    earliest = link.admin.list_offsets(
        {TopicPartition(topic, link.state_partition): OffsetSpec.earliest()},  # type: ignore[no-untyped-call]
        request_timeout=timeout,
    )
    start_of_log = next(iter(earliest.values())).result(timeout).offset
    if end <= start_of_log:
        return None
    consumer = Consumer(
        {
            **client_settings(bridge, client_id),
            "group.id": f"{client_id}-resume",  # never joined or committed: assign() only
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            # The partition's end is known only from the end-of-partition event (its last offset is
            # usually a transaction marker, which read_committed does not deliver), and that comes after a
            # fetch that found nothing: with the default 500 ms fetch wait, each resume took ~1 s
            # (measured by bench.kafka_resume), with 10 ms ~0.1 s.
            "fetch.wait.max.ms": 10,
            **_user_settings(bridge),
        }
    )
    try:
        window = RESUME_WINDOW
        start = end
        while start > start_of_log:
            start = max(start_of_log, start - window)
            window *= 8
            found = _read_range(consumer, partition, start, end, link.state_key, deadline)
            if found is not None:
                return found
        return None
    finally:
        consumer.close()


def _read_range(
    consumer: Consumer, partition: TopicPartition, start: int, end: int, key: str, deadline: float
) -> str | None:
    """The last value under ``key`` in offsets ``start``..``end`` of the partition (read_committed)."""
    consumer.assign([TopicPartition(partition.topic, partition.partition, start)])
    wanted = key.encode()
    found: str | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SinkError(
                f"reading the resume point from {partition.topic!r}: the committed end did not reach offset "
                f"{end} in time (an open transaction of another producer in that partition?)"
            )
        # consume() returns early only with 500 messages: a short wait, or each resume waits it out.
        for message in consumer.consume(500, min(remaining, RESUME_POLL_S)):
            error = message.error()
            offset = message.offset() or 0
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if offset >= end:
                        return found
                    continue
                raise KafkaException(error)
            if offset >= end:
                return found
            if message.key() == wanted:
                value = message.value()
                found = value.decode() if value is not None else None


def close_link(link: KafkaLink) -> None:
    """Drop the clients without waiting for anything: what was not committed is aborted by the next
    init_transactions (or the transaction timeout)."""
    _drop_producer(link.producer)
    del link.producer
    del link.admin

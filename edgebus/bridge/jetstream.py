"""The NATS JetStream sink: records become JetStream publishes de-duplicated on ``Nats-Msg-Id``; in rules
read a durable pull consumer. nats-py runs on an asyncio loop thread of its own (`edgebus.bridge.aio`).

Exactly once, the JetStream way:

* every record carries ``Nats-Msg-Id: <gateway>:<epoch>:<seq>``; a record sent twice within the stream's
  duplicate window is stored once (the ack then says ``"duplicate": true``: a success, it is in the log);
* after a reconnect or a gateway crash, `resume` reads the log itself: for each out rule's subject filter
  it fetches the stream's last message on that filter (``STREAM.MSG.GET`` with ``last_by_subj``; wildcard
  filters are accepted there, tested on nats-server 2.15) and takes the highest of our sequences in their
  ids; the runner skips up to it. When the last message on a filter belongs to another gateway or store
  epoch, that filter says nothing about us: de-duplication then rests on the stream's duplicate window
  alone (a warning says so, once).

NATS has no retain flag: a retained record is published with the header ``Edgebus-Retain: 1`` and an inbound
message with that header is delivered as retained. The device's content type and user properties are
headers too (edgebus.bridge.jetstream_headers).

Inbound messages are at least once upstream of the gateway: a message is acknowledged only after ``deliver``
returned; an ack lost with the link means a redelivery.

This module is the trio side: the sink, its uplink and the in-rule receiver, each step one crossing. The
nats-py connection on the asyncio side is `NatsLink` (edgebus.bridge.jetstream_link); the subject filters
and consumer names come from edgebus.bridge.jetstream_subjects.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import nats.js.api
import trio

from edgebus.bridge.aio import LoopThread
from edgebus.bridge.crossing import CROSSING_MARGIN_S, connect_first, cross_to_sink
from edgebus.bridge.jetstream_link import CLOSE_TIMEOUT_S, LastMessage, NatsLink, describe, server_url
from edgebus.bridge.jetstream_subjects import consumer_name, out_filters, subject_matches
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import (
    BridgeIdentity,
    Deliver,
    InboundMessage,
    Record,
    SinkBase,
    Uplink,
)
from edgebus.config import BridgeConfig, ListenAddress
from edgebus.nursery import unwrap_single_error

__all__ = ["JetStreamSink"]

log = logging.getLogger(__name__)


#: Most messages one pull request asks for (one crossing delivers them, one crossing acknowledges them).
FETCH_BATCH = 100
#: Seconds one pull request lingers on the server when nothing is there (then the next one goes out).
FETCH_WAIT_S = 1.0
#: Seconds the durable consumer waits for an ack before it redelivers; a fetched batch is delivered well
#: within it. After a link dies mid-batch the unacknowledged messages come back after this long.
ACK_WAIT_S = 30.0


class _JetStreamUplink:
    """The `Uplink` of one connection: trio side; each call crosses to the asyncio loop once."""

    def __init__(self, sink: JetStreamSink, loop_thread: LoopThread, link: NatsLink) -> None:
        self._sink = sink
        self._loop = loop_thread
        self._link = link

    async def resume(self, first_seq: int, last_seq: int) -> int:
        sink = self._sink
        filters = out_filters(sink.topic_map)
        if not filters:
            return 0
        timeout = sink.bridge.ack_timeout + CROSSING_MARGIN_S
        lasts = await _cross(
            "resume", self._loop, self._link.last_messages, sink.bridge.stream, filters, timeout=timeout
        )
        highest = 0
        for last in lasts:
            if last.stream_seq is None:
                continue  # nothing on this filter yet
            seq = sink.identity.seq_of(last.message_id)
            if seq == 0:
                sink.warn_foreign_last(last)
            highest = max(highest, seq)
        if first_seq <= last_seq and highest > last_seq:
            log.warning(
                "JetStream stream %r holds our seq %d beyond the outbox's last %d (a restored backup?)",
                sink.bridge.stream,
                highest,
                last_seq,
            )
        return highest

    async def send(self, records: Sequence[Record]) -> None:
        if not records:
            return
        bridge = self._sink.bridge
        await _cross(
            "send",
            self._loop,
            self._link.publish_batch,
            list(records),
            bridge.stream,
            bridge.ack_timeout,
            timeout=bridge.ack_timeout + CROSSING_MARGIN_S,
        )


_cross = functools.partial(cross_to_sink, "JetStream")


class JetStreamSink(SinkBase):
    """An upstream NATS JetStream stream (`edgebus.bridge.sink.Sink`)."""

    def __init__(
        self,
        bridge: BridgeConfig,
        identity: BridgeIdentity,
        topic_map: TopicMap,
        deliver: Deliver,
        client_id: str,
    ) -> None:
        super().__init__(bridge, identity, topic_map, deliver, client_id)
        self.consumer = consumer_name(client_id)
        self._in_filters: list[tuple[str, int]] = []
        for subject_filter, qos in topic_map.remote_filters():
            if all(subject_filter != known for known, _ in self._in_filters):
                self._in_filters.append((subject_filter, qos))
        self._warned_foreign = False

    def connect(self) -> AbstractAsyncContextManager[Uplink]:
        return self._open()

    def warn_foreign_last(self, last: LastMessage) -> None:
        if self._warned_foreign:
            return
        self._warned_foreign = True
        log.warning(
            "the last message of JetStream stream %r on %r (stream seq %s, id %r) is not from gateway %r "
            "store epoch %r: resuming cannot tell what the log holds there; de-duplication relies on the "
            "stream's duplicate window",
            self.bridge.stream,
            last.subject_filter,
            last.stream_seq,
            last.message_id,
            self.identity.gateway_id,
            self.identity.epoch,
        )

    def _consumer_config(self) -> nats.js.api.ConsumerConfig | None:
        if not self._in_filters:
            return None
        filters = [subject_filter for subject_filter, _ in self._in_filters]
        return nats.js.api.ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer,
            # Everything the stream holds on the in subjects; later, everything since the last ack.
            deliver_policy=nats.js.api.DeliverPolicy.ALL,
            ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Uplink]:
        bridge = self.bridge
        consumer = self._consumer_config()

        def url(address: ListenAddress) -> str:
            return server_url(address.host, address.port, bridge.tls)

        async def open_link(link: NatsLink, address: ListenAddress) -> None:
            await link.open(url(address), bridge.stream, consumer)

        async with connect_first(
            "JetStream",
            bridge,
            f"jetstream-{self.client_id}",
            lambda _address: NatsLink(bridge, self.client_id),
            open_link,
            CLOSE_TIMEOUT_S,
            where=url,
        ) as (loop_thread, link):
            with unwrap_single_error():  # the body's send and the receiver may see the same dead link
                async with trio.open_nursery() as nursery:
                    if self._in_filters:
                        nursery.start_soon(self._receive, loop_thread, link)
                    try:
                        yield _JetStreamUplink(self, loop_thread, link)
                    finally:
                        nursery.cancel_scope.cancel()

    # -- in rules ----------------------------------------------------------------------------------------

    def _inbound_qos(self, subject: str) -> int | None:
        """The QoS of the first in rule whose filter matches ``subject``; None when none does (or the subject
        does not map back to a local topic)."""
        for subject_filter, qos in self._in_filters:
            if subject_matches(subject_filter, subject):
                return qos if self.topic_map.route_in(subject) is not None else None
        return None

    async def _receive(self, loop_thread: LoopThread, link: NatsLink) -> None:
        """Pull batches; deliver each message in order; ack the batch once every message was delivered."""
        fetch_timeout = FETCH_WAIT_S + self.bridge.ack_timeout + CROSSING_MARGIN_S
        settle_timeout = self.bridge.ack_timeout + CROSSING_MARGIN_S
        while True:
            batch = await _cross(
                "fetch", loop_thread, link.fetch, FETCH_BATCH, FETCH_WAIT_S, timeout=fetch_timeout
            )
            delivered = 0
            try:
                for fetched in batch:
                    qos = self._inbound_qos(fetched.subject)
                    if qos is None:
                        log.debug("bridge %r: no in rule for %r; dropped", self.bridge.name, fetched.subject)
                    else:
                        message = InboundMessage(fetched.subject, fetched.data, qos, fetched.retain)
                        await self.deliver(message)
                    delivered += 1
            except BaseException:
                # Delivery failed or the link closes: ack what was delivered, hand the rest back at once.
                if not batch:
                    raise
                handles = [fetched.handle for fetched in batch]
                with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
                    scope.shield = True
                    try:
                        await loop_thread.run(
                            link.settle, handles[:delivered], handles[delivered:], timeout=CLOSE_TIMEOUT_S
                        )
                    except Exception as error:
                        log.debug("settling a JetStream batch on close: %s", describe(error))
                raise
            if batch:
                handles = [fetched.handle for fetched in batch]
                await _cross("ack", loop_thread, link.settle, handles, [], timeout=settle_timeout)


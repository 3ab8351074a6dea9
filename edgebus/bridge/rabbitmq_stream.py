"""The RabbitMQ stream sink: records become messages of one RabbitMQ stream, published through the stream
protocol by a named publisher that the server de-duplicates. rstream (an asyncio client) runs on an asyncio
loop thread of its own (`edgebus.bridge.aio`); each step (connect, resume, a batch) is one crossing.

Exactly once, the RabbitMQ-stream way:

* the bridge publishes as producer ``<gateway>:<epoch>:<bridge name>`` with publishing id = outbox seq.
  The stream remembers, per producer name, the highest publishing id it stored, and drops (while
  confirming) any message of that producer whose id is not above it. That memory is in the stream itself:
  it survives reconnects, a RabbitMQ restart and a gateway crash; it has no time window.
* `resume` asks the stream for that id (QueryPublisherSequence); the runner skips everything up to it.
  Even without resume a resend would be dropped: resume only saves sending it.
* the epoch is in the name because a new store (data dir wiped) numbers from 1 again: under the old name
  its first messages would be taken for duplicates and dropped, silently. A new epoch is a new producer.
* since the stream keeps only ids above the last, what it holds of one producer is strictly increasing in
  seq: the outbox order, hence per-topic order, even if a late frame of a dead connection arrives.

Each message is an AMQP 1.0 message (edgebus.bridge.amqp_message): ``edgebus-msg-id``, ``mqtt-topic``
and ``mqtt-retain`` application properties, then the device's MQTT 5 user properties (a repeated name's
values joined), content type and expiry in the properties, payload as data.
Out rules only: every out rule goes to the bridge's one ``stream``; the rule's remote topic is the
``mqtt-topic`` property.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from edgebus.bridge.aio import LoopThread
from edgebus.bridge.crossing import CROSSING_MARGIN_S, connect_first, cross_to_sink
from edgebus.bridge.rabbitmq_link import CLOSE_TIMEOUT_S, StreamLink
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import BridgeIdentity, Deliver, Record, SinkBase, Uplink
from edgebus.config import BridgeConfig, ListenAddress

__all__ = ["RabbitStreamSink", "producer_name"]

log = logging.getLogger(__name__)


def producer_name(identity: BridgeIdentity, bridge_name: str) -> str:
    """The stream publisher's name: stable per gateway, store epoch and bridge (see the module's doc)."""
    return f"{identity.id_prefix}{bridge_name}"


class _StreamUplink:
    """The `Uplink` of one connection: trio side; each call crosses to the asyncio loop once."""

    def __init__(self, sink: RabbitStreamSink, loop_thread: LoopThread, link: StreamLink) -> None:
        self._sink = sink
        self._loop = loop_thread
        self._link = link

    async def resume(self, first_seq: int, last_seq: int) -> int:
        bridge = self._sink.bridge
        highest = await _cross(
            "resume",
            self._loop,
            self._link.last_publishing_id,
            bridge.stream,
            timeout=bridge.ack_timeout + CROSSING_MARGIN_S,
        )
        if first_seq <= last_seq and highest > last_seq:
            log.warning(
                "RabbitMQ stream %r holds id %d of %r, beyond the outbox's last %d (restored backup?)",
                bridge.stream,
                highest,
                self._link.producer_name,
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
            bridge.ack_timeout,
            timeout=bridge.ack_timeout + CROSSING_MARGIN_S,
        )


_cross = functools.partial(cross_to_sink, "RabbitMQ stream")


class RabbitStreamSink(SinkBase):
    """An upstream RabbitMQ stream (`edgebus.bridge.sink.Sink`)."""

    def __init__(
        self,
        bridge: BridgeConfig,
        identity: BridgeIdentity,
        topic_map: TopicMap,
        deliver: Deliver,
        client_id: str,
    ) -> None:
        super().__init__(bridge, identity, topic_map, deliver, client_id)
        self.producer_name = producer_name(identity, bridge.name)

    def connect(self) -> AbstractAsyncContextManager[Uplink]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Uplink]:
        bridge = self.bridge

        async def open_link(link: StreamLink, address: ListenAddress) -> None:
            await link.open(address.host, address.port, bridge.stream)

        async with connect_first(
            "RabbitMQ stream",
            bridge,
            f"rabbitmq-{self.client_id}",
            lambda _address: StreamLink(bridge, self.client_id, self.producer_name),
            open_link,
            CLOSE_TIMEOUT_S,
        ) as (loop_thread, link):
            yield _StreamUplink(self, loop_thread, link)

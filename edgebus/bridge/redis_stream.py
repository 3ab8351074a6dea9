"""The Redis Streams sink (``kind = "redis-stream"``): records become entries of one stream per gateway, with
entry ids that make a resend impossible to store twice. redis-py's asyncio client runs on an asyncio loop
thread of its own (`edgebus.bridge.aio`), crossed once per batch.

The id scheme, exactly once:

* an entry's id is ``<base>-<seq>``: ``seq`` is the outbox sequence, ``base`` (the millisecond part) is fixed
  for one store epoch. Redis refuses an XADD whose id is not above the stream's top, so a record sent again
  (after a lost reply, a reconnect, a gateway crash, or a late batch of a dead connection) cannot become a
  second entry: the batch script (edgebus.bridge.redis_link) counts that refusal as "already there";
* a new store epoch restarts the sequences at 1, so it takes a new, higher base: ``max(now in ms, top's
  base + 1)``. The base is not stored anywhere but in the stream: `resume` reads the last entry; when its
  ``edgebus-msg-id`` field names this gateway and epoch, its id gives the base and the highest sequence the
  stream holds (the runner skips up to it); otherwise nothing of this epoch is there yet and a new base is
  chosen (kept for the life of the process, so a late batch from an earlier connection still collides);
* a batch is one script run: a partial failure leaves a prefix of it in the stream, never a hole.

Fine print: one writer per stream (the default name is per gateway): an entry of another writer on top makes
`resume` start a new base, and records already in the stream under the old base would be written again. An
entry id's millisecond part is the epoch's start on the stream, not the message's time.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from edgebus.bridge.aio import LoopThread
from edgebus.bridge.crossing import CROSSING_MARGIN_S, connect_first, cross_to_sink
from edgebus.bridge.redis_link import CLOSE_TIMEOUT_S, LastEntry, RedisLink
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import (
    MESSAGE_ID_PROPERTY,
    BridgeIdentity,
    Deliver,
    Record,
    SinkBase,
    Uplink,
)
from edgebus.config import BridgeConfig, ListenAddress

__all__ = ["USER_PROPERTY_PREFIX", "RedisStreamSink", "default_stream", "entry_arguments", "split_entry_id"]

log = logging.getLogger(__name__)


#: The field-name prefix of the MQTT 5 user properties (one field each, in order, repeats kept). The fields
#: edgebus writes itself (payload, topic, edgebus-msg-id, content-type, retain) never contain ":".
USER_PROPERTY_PREFIX = "prop:"
#: False: entries get server-made ids (``*``); only for the control run showing why the scheme is there.
EXPLICIT_IDS = True


def default_stream(gateway_id: str) -> str:
    """The stream a bridge writes when its ``stream`` setting is empty: one per gateway."""
    return f"edgebus:{gateway_id}"


def split_entry_id(entry_id: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as two integers."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def entry_arguments(base_ms: int, records: Sequence[Record]) -> list[bytes | str | int]:
    """The batch script's ARGV: per record its id, its number of field strings, its fields."""
    arguments: list[bytes | str | int] = []
    for record in records:
        fields: list[bytes | str | int] = [
            "payload", record.payload, "topic", record.topic, MESSAGE_ID_PROPERTY, record.message_id
        ]
        if record.content_type:
            fields += ["content-type", record.content_type]
        if record.retain:
            fields += ["retain", "1"]
        for name, value in record.user_properties:
            fields += [USER_PROPERTY_PREFIX + name, value]
        entry_id = f"{base_ms}-{record.seq}" if EXPLICIT_IDS else "*"
        arguments += [entry_id, len(fields), *fields]
    return arguments


class _RedisUplink:
    """The `Uplink` of one connection: trio side; each call crosses to the asyncio loop once."""

    def __init__(self, sink: RedisStreamSink, loop_thread: LoopThread, link: RedisLink) -> None:
        self._sink = sink
        self._loop = loop_thread
        self._link = link

    async def resume(self, first_seq: int, last_seq: int) -> int:
        sink = self._sink
        timeout = sink.bridge.ack_timeout + CROSSING_MARGIN_S
        last = await _cross("resume", self._loop, self._link.last_entry, sink.stream, timeout=timeout)
        highest = sink.take_base(last)
        if first_seq <= last_seq and highest > last_seq:
            log.warning(
                "Redis stream %r holds our seq %d beyond the outbox's last %d (a restored backup?)",
                sink.stream,
                highest,
                last_seq,
            )
        return highest

    async def send(self, records: Sequence[Record]) -> None:
        if not records:
            return
        sink = self._sink
        base = sink.base_ms
        assert base is not None, "resume() comes first"
        ack_timeout = sink.bridge.ack_timeout
        arguments = entry_arguments(base, records)
        duplicates = await _cross(
            "send",
            self._loop,
            self._link.add_batch,
            sink.stream,
            arguments,
            ack_timeout,
            timeout=ack_timeout + CROSSING_MARGIN_S,
        )
        if duplicates:
            log.info("Redis stream %r already held %d of %d records", sink.stream, duplicates, len(records))


_cross = functools.partial(cross_to_sink, "Redis")


class RedisStreamSink(SinkBase):
    """An upstream Redis stream (`edgebus.bridge.sink.Sink`); out rules only."""

    def __init__(
        self,
        bridge: BridgeConfig,
        identity: BridgeIdentity,
        topic_map: TopicMap,
        deliver: Deliver,
        client_id: str,
    ) -> None:
        super().__init__(bridge, identity, topic_map, deliver, client_id)
        self.stream = bridge.stream or default_stream(identity.gateway_id)
        #: The millisecond part of this epoch's entry ids; known after the first `resume`.
        self.base_ms: int | None = None

    def connect(self) -> AbstractAsyncContextManager[Uplink]:
        return self._open()

    def take_base(self, last: LastEntry | None) -> int:
        """Settle `base_ms` from the stream's last entry; return the highest of our sequences it holds."""
        if last is not None and self.identity.seq_of(last.message_id) > 0:
            base, seq = split_entry_id(last.entry_id)  # ours, this epoch: its base and how far it got
            if self.base_ms is not None and self.base_ms != base:
                log.warning("Redis stream %r: epoch base %d, not %d", self.stream, base, self.base_ms)
            self.base_ms = base
            return seq
        top_ms = split_entry_id(last.entry_id)[0] if last is not None else 0
        if self.base_ms is None or self.base_ms <= top_ms:
            self.base_ms = max(int(time.time() * 1000), top_ms + 1)
            log.info("Redis stream %r: entries of store epoch %r get ids %d-<seq>",
                     self.stream, self.identity.epoch, self.base_ms)
        return 0

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Uplink]:
        bridge = self.bridge

        async def open_link(link: RedisLink, _address: ListenAddress) -> None:
            await link.open(self.stream)

        async with connect_first(
            "Redis",
            bridge,
            f"redis-{self.client_id}",
            lambda address: RedisLink(bridge, self.client_id, address.host, address.port),
            open_link,
            CLOSE_TIMEOUT_S,
        ) as (loop_thread, link):
            yield _RedisUplink(self, loop_thread, link)

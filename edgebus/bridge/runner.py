"""One bridge at work: forwards its outbox in order, reconnects with backoff, brings in-rule messages in.

The runner owns the order, the window (one batch in flight, at most ``window`` messages), the catch-up
rate, the reconnect backoff and the bridge's state in $SYS; the sink (edgebus.bridge.sink) only talks
to its engine. A batch is forgotten only after the upstream acknowledged all of it; on any failure the
same entries go again, first, on the next connection, after `Uplink.resume` said which the log holds.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

import trio

from edgebus.bridge.outbox import Outbox
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import BridgeIdentity, InboundMessage, Record, Sink, SinkError, SinkFactory, Uplink
from edgebus.bridge.transform import JSON_CONTENT_TYPE, cbor_to_json, require_cbor
from edgebus.config import BridgeConfig
from edgebus.core.message import Message
from edgebus.core.topics import is_valid_topic_name
from edgebus.store import OutboxRow, Store
from edgebus.store.journal import wall_time

log = logging.getLogger("edgebus.bridge")

__all__ = ["NOT_ROUTED", "Bridge", "BridgeState"]

#: A burst under a rate limit lasts at most this long (the batch is cut to rate x this).
RATE_BURST_S = 0.1
#: What `Bridge.offer` returns for a message no out rule matches.
NOT_ROUTED = -1
SYS_PREFIX = "$SYS/broker/bridge/"


class BridgeState:
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    REMOVED = "removed"  # no longer configured (a reload removed it)


class Bridge:
    """A configured bridge inside the broker. The broker calls `offer` for every message it routes
    (synchronous: it only journals), `on_commit` after each store commit, and runs `run` in its nursery.
    ``sink_factory`` makes the sink of the bridge's engine (`edgebus.bridge.sinks.sink_class`)."""

    def __init__(
        self,
        config: BridgeConfig,
        gateway_id: str,
        store: Store | None,
        publish: Callable[[Message], int],
        wait_committed: Callable[[int], Awaitable[None]],
        publish_state: Callable[[str, str], None],
        sink_factory: SinkFactory,
    ) -> None:
        self.config = config
        self.name = config.name
        self.gateway_id = gateway_id
        self.client_id = config.client_id or f"edgebus-{gateway_id}-{config.name}"
        self.topic_map = TopicMap(config)
        if any(rule.transform == "cbor-json" for rule in self.topic_map.out_rules):
            require_cbor()
        self.store = store
        self.outbox = Outbox(config.name, store, config.max_messages, config.max_bytes, config.overflow)
        self.identity = BridgeIdentity(gateway_id, "")
        # Messages that came in through this bridge carry this publisher id and are not sent back out.
        self.publisher_id = f"$bridge/{config.name}"
        self._publish = publish
        self._wait_committed = wait_committed
        self._publish_state = publish_state
        self.state = BridgeState.DISCONNECTED
        self.last_error = ""
        self.forwarded = 0
        self.skipped = 0  # found already in the log on resume
        self.received = 0
        self.transform_failed = 0
        self.expired = 0  # past their Message Expiry Interval before they could go up
        self.connects = 0
        self._wakeup = trio.Event()
        self._waiting_commit = False
        self._sink_factory = sink_factory
        self._sink: Sink | None = None
        # The first sequence an upstream refused outright: resume never skips it on the log's word (a
        # later record of its batch may be in the log while it is not).
        self._rejected_seq: int | None = None

    # --- the broker's side (synchronous) -----------------------------------------------------------

    def restore(self, rows: list[OutboxRow], cursor: int, epoch: str) -> None:
        self.identity = BridgeIdentity(self.gateway_id, epoch)
        self.outbox.restore(rows, cursor)
        if rows:
            log.info("bridge %s: %d messages waiting in the outbox", self.name, len(self.outbox.entries))

    def adopt(self, outbox: Outbox, epoch: str) -> None:
        """Take over the outbox of the bridge of this name that ran before (a reload changed or re-added it):
        the same rows and sequence numbers, so no row is lost and no message id is issued twice; this
        bridge's budget from now on. Queued rows keep the remote topic they were routed to."""
        outbox.max_messages = self.config.max_messages
        outbox.max_bytes = self.config.max_bytes
        outbox.overflow = self.config.overflow
        self.outbox = outbox
        self.identity = BridgeIdentity(self.gateway_id, epoch)
        if outbox.entries:
            log.info("bridge %s: %d messages waiting in the outbox", self.name, len(outbox.entries))

    def removed(self) -> None:
        """Its runner has stopped for good: say so in $SYS."""
        self._set_state(BridgeState.REMOVED)

    def offer(self, message: Message) -> int | None:
        """Queue ``message`` if an out rule matches it. Returns the store batch it was written in (0: no
        store), None when the outbox is full and refuses it, NOT_ROUTED when no out rule matches."""
        if message.publisher_id == self.publisher_id:
            return NOT_ROUTED  # it came from this bridge's upstream: never back up (no loops)
        route = self.topic_map.route_out(message.topic)
        if route is None:
            return NOT_ROUTED
        payload = message.payload
        # The device's own Content Type and User Properties go up with it (NO_PROPERTIES: None and the
        # shared (), nothing allocated for a message without them).
        properties = message.properties
        content_type = properties.content_type
        if route.rule.transform == "cbor-json":
            converted = cbor_to_json(payload)
            if converted is None:
                self.transform_failed += 1  # forwarded as it came: nothing is lost to a bad payload
            else:
                payload, content_type = converted, JSON_CONTENT_TYPE
        batch = self.outbox.append(
            route.remote,
            payload,
            route.rule.qos,
            message.retain,
            content_type,
            time.time(),
            wall_time(message.expiry_deadline),
            properties.user_properties,
        )
        if batch is None:
            return None
        if self.store is None and self._waiting_commit:
            self._wakeup.set()  # else the commit that writes it wakes the runner
        return batch

    def on_commit(self, committed_batch: int) -> None:
        if self._waiting_commit and self.outbox.has_sendable(committed_batch):
            self._wakeup.set()

    def sys_values(self, now_wall: float) -> dict[str, str]:
        outbox = self.outbox
        oldest = outbox.oldest_queued_at()
        prefix = f"{SYS_PREFIX}{self.name}/"
        return {
            prefix + "queued": str(len(outbox.entries)),
            prefix + "queued_bytes": str(outbox.bytes),
            prefix + "forwarded": str(self.forwarded),
            prefix + "skipped": str(self.skipped),
            prefix + "dropped": str(outbox.dropped),
            prefix + "refused": str(outbox.refused),
            prefix + "received": str(self.received),
            prefix + "connects": str(self.connects),
            prefix + "transform_failed": str(self.transform_failed),
            prefix + "expired": str(self.expired),
            prefix + "oldest_age": f"{max(0.0, now_wall - oldest):.1f}" if oldest is not None else "0",
            prefix + "last_error": self.last_error or "none",
            prefix + "qos_downgraded": getattr(self._sink, "qos_downgraded", None) or "none",
        }

    # --- the runner ------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            log.info("bridge %s: %s", self.name, state)
        self._publish_state(f"{SYS_PREFIX}{self.name}/state", state)

    def make_sink(self) -> Sink:
        return self._sink_factory(self.config, self.identity, self.topic_map, self.deliver, self.client_id)

    async def run(self) -> None:
        """Connect, resume, forward; on failure wait a jittered, doubling delay and start again. Forever."""
        config = self.config
        failures = 0
        sink: Sink | None = None
        self._set_state(BridgeState.DISCONNECTED)
        while True:
            self._set_state(BridgeState.CONNECTING)
            try:
                if sink is None:
                    sink = self._sink = self.make_sink()
                async with sink.connect() as uplink:
                    self.connects += 1
                    self._set_state(BridgeState.CONNECTED)
                    await self._resume(uplink)
                    failures = 0
                    await self._forward(uplink)
            except SinkError as exc:
                self._link_failed(exc)
            except BaseExceptionGroup as group:
                # The link died just as the bridge was cancelled (shutdown): the group holds Cancelled too,
                # and the sleep below raises it again, since our scope stays cancelled.
                _, others = group.split(trio.Cancelled)
                link_errors, bugs = others.split(SinkError) if others is not None else (None, None)
                if link_errors is not None:
                    first = link_errors.exceptions[0]
                    self._link_failed(first if isinstance(first, SinkError) else SinkError(str(first)))
                if bugs is not None:
                    self._internal_error(bugs)
            except Exception as exc:
                self._internal_error(exc)
            finally:
                self.outbox.unsent()
                self._waiting_commit = False
            self._set_state(BridgeState.DISCONNECTED)
            # Full jitter: a fleet of gateways coming back after a cloud outage does not reconnect in step.
            ceiling = min(config.backoff_max, config.backoff_initial * (2**failures))
            failures = min(failures + 1, 32)
            await trio.sleep(random.uniform(config.backoff_initial / 2, ceiling))

    def _link_failed(self, exc: SinkError) -> None:
        self.last_error = str(exc)
        log.warning("bridge %s: %s", self.name, exc)
        if exc.rejected_seq is not None:
            self._rejected_seq = min(exc.rejected_seq, self._rejected_seq or exc.rejected_seq)

    def _internal_error(self, exc: BaseException) -> None:
        """A bug in a sink must not take the broker down: log it, retry after the backoff."""
        self.last_error = f"internal error: {exc!r}"
        log.error("bridge %s failed", self.name, exc_info=exc)

    async def _resume(self, uplink: Uplink) -> None:
        outbox = self.outbox
        first, last = outbox.pending_range()
        in_log = await uplink.resume(first, last)
        if in_log >= outbox.next_seq:
            # The log holds ids this store has not issued yet: the store lost its tail (restored from an
            # old copy?). Continue numbering after the log so no new message passes for an old one.
            log.error(
                "bridge %s: the upstream log holds sequence %d of this store, beyond its own %d",
                self.name,
                in_log,
                outbox.next_seq - 1,
            )
            outbox.next_seq = in_log + 1
        skip_to = min(in_log, last)
        if self._rejected_seq is not None:
            if self._rejected_seq < first:
                self._rejected_seq = None  # forwarded since
            else:
                skip_to = min(skip_to, self._rejected_seq - 1)
        if skip_to >= first:
            skipped = outbox.forwarded(skip_to)
            self.skipped += skipped
            if skipped:
                log.info("bridge %s: %d messages were already upstream, not sent again", self.name, skipped)

    def _committed(self) -> int | None:
        return None if self.store is None else self.store.committed_seq

    async def _forward(self, uplink: Uplink) -> None:
        config = self.config
        outbox = self.outbox
        identity = self.identity
        limit = config.batch_window
        if config.rate:
            limit = max(1, min(limit, int(config.rate * RATE_BURST_S)))
        next_allowed = trio.current_time()
        while True:
            entries = outbox.take(limit, self._committed())
            if not entries:
                self._waiting_commit = True
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                self._waiting_commit = False
                continue
            if config.rate:
                now = trio.current_time()
                if next_allowed > now:
                    await trio.sleep_until(next_allowed)
                next_allowed = max(now, next_allowed) + len(entries) / config.rate
            now_wall = time.time()
            records = [
                Record(
                    e.seq,
                    identity.message_id(e.seq),
                    e.topic,
                    e.payload,
                    e.qos,
                    e.retain,
                    e.content_type,
                    None if e.expires_at is None else max(1, int(e.expires_at - now_wall + 0.999)),
                    e.user_properties,
                )
                for e in entries
                # [MQTT-3.3.2-5]: a message whose expiry passed before onward delivery began is deleted.
                if e.expires_at is None or e.expires_at > now_wall
            ]
            expired = len(entries) - len(records)
            self.expired += expired
            if records:
                await uplink.send(records)
            self.forwarded += outbox.forwarded(entries[-1].seq) - expired

    async def deliver(self, inbound: InboundMessage) -> None:
        """An in rule's message: publish it locally and return once it is committed (the sink then
        acknowledges it upstream)."""
        topic = self.topic_map.route_in(inbound.topic)
        if topic is None or not is_valid_topic_name(topic) or topic.startswith("$"):
            log.debug("bridge %s: no in rule for %r, dropped", self.name, inbound.topic)
            return
        message = Message(topic, inbound.payload, inbound.qos, inbound.retain, publisher_id=self.publisher_id)
        batch = self._publish(message)
        self.received += 1
        if batch:
            await self._wait_committed(batch)

"""$SYS: the broker's own retained topics (Mosquitto's names), republished every [sys] interval."""

from __future__ import annotations

import logging
import time

import trio

from edgebus import __version__
from edgebus.bridge.runner import Bridge
from edgebus.core.message import Message
from edgebus.core.stats import Stats
from edgebus.server.fanout import Fanout
from edgebus.store import Store

log = logging.getLogger("edgebus.server.sys_topics")


class SysTopics:
    def __init__(
        self, fanout: Fanout, bridges: list[Bridge], store: Store | None, stats: Stats, interval: float
    ) -> None:
        self.fanout = fanout
        self.interval = interval  # seconds between publications; 0: none
        self._interval_changed = trio.Event()
        self.bridges = bridges
        self.store = store
        self.stats = stats
        self.started_at = time.monotonic()

    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_at

    def values(self) -> dict[str, str]:
        """The $SYS topics and their current values."""
        stats = self.stats
        sessions = self.fanout.sessions
        connected = sum(1 for s in sessions.values() if s.connection is not None)
        queued = sum(len(s.outbox) for s in sessions.values())
        values = {
            "$SYS/broker/version": f"edgebus {__version__}",
            "$SYS/broker/uptime": f"{int(time.monotonic() - self.started_at)} seconds",
            "$SYS/broker/clients/connected": str(connected),
            "$SYS/broker/clients/total": str(len(sessions)),
            "$SYS/broker/clients/disconnected": str(len(sessions) - connected),
            "$SYS/broker/connections/total": str(stats.clients_total),
            "$SYS/broker/messages/received": str(stats.messages_received),
            "$SYS/broker/messages/sent": str(stats.messages_sent),
            "$SYS/broker/messages/queued": str(queued),
            "$SYS/broker/messages/dropped": str(stats.messages_dropped),
            "$SYS/broker/messages/expired": str(stats.messages_expired),
            "$SYS/broker/bytes/received": str(stats.bytes_received),
            "$SYS/broker/bytes/sent": str(stats.bytes_sent),
            "$SYS/broker/retained messages/count": str(len(self.fanout.retained)),
            "$SYS/broker/subscriptions/count": str(self.fanout.router.subscription_count),
            "$SYS/broker/store/bytes": str(self.store.size_bytes() if self.store is not None else 0),
        }
        if self.bridges:
            wall = time.time()
            for bridge in self.bridges:
                values.update(bridge.sys_values(wall))
        return values

    def publish(self) -> None:
        for topic, value in self.values().items():
            self.fanout.publish(Message(topic, value.encode(), 0, True), None)

    def set_interval(self, interval: float) -> None:
        """A reload changed [sys] interval: takes effect now (the current wait ends)."""
        if interval != self.interval:
            self.interval = interval
            self._interval_changed.set()
            self._interval_changed = trio.Event()

    async def publish_forever(self) -> None:
        while True:
            changed = self._interval_changed
            if self.interval <= 0:
                await changed.wait()
                continue
            try:
                self.publish()
            except Exception:
                log.exception("publishing $SYS failed")
            with trio.move_on_after(self.interval):
                await changed.wait()

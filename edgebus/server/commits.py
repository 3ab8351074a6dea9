"""What waits for the store: replies held until their batch is on disk, the bridges' in-rule messages,
and the store's byte budget, checked as commits go by."""

from __future__ import annotations

import logging

import trio

from edgebus.bridge.runner import Bridge
from edgebus.core.outbox import OverflowPolicy
from edgebus.core.output import ConnectionOutput
from edgebus.server.fanout import Fanout
from edgebus.store import Store

log = logging.getLogger("edgebus.server.commits")

#: How often (at most) the store's size is compared with [storage] max_bytes.
STORE_SIZE_CHECK_S = 0.5


class Commits:
    """Called by the store's committer after each commit (`on_commit`)."""

    def __init__(
        self, store: Store, bridges: list[Bridge], fanout: Fanout, budget: int, overflow: OverflowPolicy
    ) -> None:
        self.store = store
        self.bridges = bridges
        self.fanout = fanout
        self.budget = budget
        self.overflow = overflow
        self.holding: set[ConnectionOutput] = set()  # connections with replies waiting for a commit
        self._waiters: list[tuple[int, trio.Event]] = []
        self._next_size_check = 0.0

    def on_commit(self, seq: int) -> None:
        """Batch ``seq`` is on disk: the replies that waited for it go out."""
        holding = self.holding
        if holding:
            for conn in list(holding):
                if not conn.release(seq):
                    holding.discard(conn)
        if self.bridges:
            for bridge in self.bridges:
                bridge.on_commit(seq)
            waiters = self._waiters
            if waiters:
                self._waiters = [(batch, event) for batch, event in waiters if batch > seq]
                for batch, event in waiters:
                    if batch <= seq:
                        event.set()
        now = trio.current_time()
        if now >= self._next_size_check:
            self._next_size_check = now + STORE_SIZE_CHECK_S
            self._check_store_size()

    async def wait_committed(self, batch: int) -> None:
        """Return once store batch ``batch`` is on disk."""
        if self.store.committed_seq >= batch:
            return
        event = trio.Event()
        self._waiters.append((batch, event))
        await event.wait()

    def _check_store_size(self) -> None:
        budget = self.budget
        if not budget:
            return
        size = self.store.size_bytes()
        full = size >= budget
        fanout = self.fanout
        if full != fanout.store_full:
            fanout.store_full = full
            if full:
                log.warning(
                    "store at %d bytes, over its budget of %d: new QoS 1/2 messages for persistent "
                    "sessions are %s until it shrinks",
                    size,
                    budget,
                    "refused" if self.overflow == "refuse" else "dropped",
                )
            else:
                log.warning("store back under its budget (%d of %d bytes)", size, budget)

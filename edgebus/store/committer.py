"""The store's trio side: operations gather into numbered batches, each committed whole by one writer thread.

The event loop appends operations (through `journal`) without waiting; the commit task hands
everything gathered so far to the writer thread as ONE transaction, so throughput grows with load
(many messages, one fsync), and while that commit runs the next batch gathers. Whatever must not
outrun the disk (a PUBACK, a PUBREC, ...) waits until `committed_seq` reaches the batch that holds
its changes.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, cast

import trio

from edgebus.config import Durability
from edgebus.core.stats import COMMIT_BUCKETS_S, Histogram
from edgebus.store.journal import StoreJournal
from edgebus.store.ops import LazyRecords, Op, cancel_out
from edgebus.store.sqlite import Database, StoredState

P = ParamSpec("P")

#: Makes an operation from its type and fields without the NamedTuple's Python-level ``__new__``:
#: half the cost of ``kind(*fields)``, on every row of the durable publish path (bench/journal_speed.py).
#: `Store.append`'s ParamSpec has mypy check the fields against the type's, as a call would.
_make = cast("Callable[[Callable[..., Op], tuple[Any, ...]], Op]", tuple.__new__)


#: The longest the changes nothing waits for (`record_delivery_gone` and the like) gather before
#: their commit, when no change that something waits for comes. A drain's acknowledgements then go to
#: disk in a few large commits rather than one per writer round: every commit rewrites the pages it
#: touches, and a faster writer had made the commits (and so the bytes written a message) smaller. A
#: crash loses at most this much of them: those QoS 1 messages are delivered again, as QoS 1 allows,
#: and a completed QoS 2 flow gets its PUBREL again; nothing a QoS 2 flow or an acknowledgement waits
#: for is lazy.
LAZY_COMMIT_S = 0.02


class Store:
    """The durable store. Call `load` once (in a thread) before anything else; run `commit_forever`
    in the broker's nursery; write through `journal` from the event loop."""

    def __init__(self, data_dir: str | os.PathLike[str], durability: Durability = "fsync") -> None:
        self.database = Database(data_dir, durability)
        self.journal = StoreJournal(self)
        self._pending: list[Op] = []
        self._lazy = LazyRecords()
        self._urgent = False  # the pending batch holds something that is waited for (`append`)
        self._idle = False  # the committer waits for a first change
        #: Sequence number of the batch now gathering; `committed_seq` is the last one on disk.
        self.pending_seq = 1
        self.committed_seq = 0
        self._wakeup: trio.Event | None = None
        #: The row ids to come (`load` continues them after the highest stored), read with next().
        self.message_ids: Iterator[int] = itertools.count(1)
        self.delivery_seqs: Iterator[int] = itertools.count(1)
        #: How long each transaction took in the writer thread (two clock reads per commit, not per message).
        self.commit_seconds = Histogram(COMMIT_BUCKETS_S)

    # --- the event loop's side -------------------------------------------------------------------

    def append(self, kind: Callable[P, Op], /, *fields: P.args, **named: P.kwargs) -> int:
        """Queue one change: the operation ``kind`` (an `edgebus.store.ops` type) with these fields.
        Returns the batch number it will be committed in."""
        self._pending.append(_make(kind, fields) if not named else kind(*fields, **named))
        self._urgent = True
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.set()
        return self.pending_seq

    # Changes nothing waits for: committed with the next change something waits for, or LAZY_COMMIT_S
    # after the first of them at the latest.

    def record_sent_qos1(self, seq: int, packet_id: int) -> None:
        """Stored QoS 1 delivery ``seq`` went out under ``packet_id``."""
        self._start_lazy_clock()
        self._lazy.sent_seqs.append(seq)
        self._lazy.sent_ids.append(packet_id)

    def record_delivery_gone(self, seq: int) -> None:
        """Stored delivery ``seq`` is finished."""
        self._start_lazy_clock()
        self._lazy.gone.append(seq)

    def record_message_gone(self, message_id: int) -> None:
        """Stored message ``message_id`` is used by no stored delivery any more."""
        self._start_lazy_clock()
        self._lazy.messages_gone.append(message_id)

    def _start_lazy_clock(self) -> None:
        if self._idle:
            self._idle = False
            assert self._wakeup is not None
            self._wakeup.set()

    def size_bytes(self) -> int:
        """The store's size on disk: the database and its write-ahead log."""
        return self.database.size_bytes()

    async def commit_forever(self, on_commit: Callable[[int], None]) -> None:
        """Commit whatever has gathered, one transaction at a time, in the writer thread; after
        each, tell ``on_commit`` the batch number now on disk."""
        limiter = trio.CapacityLimiter(1)  # one writer thread, ever
        while True:
            if not self._pending and not self._lazy:
                self._wakeup = trio.Event()
                self._idle = True
                await self._wakeup.wait()
                self._idle = False
                self._wakeup = None
            if not self._urgent:  # only lazy changes so far: gather, until one is waited for
                self._wakeup = trio.Event()
                with trio.move_on_after(LAZY_COMMIT_S):
                    await self._wakeup.wait()
                self._wakeup = None
            await self.commit_now(limiter, on_commit)

    async def commit_now(
        self, limiter: trio.CapacityLimiter | None = None, on_commit: Callable[[int], None] | None = None
    ) -> None:
        lazy = self._lazy
        batch = cancel_out(self._pending, lazy)
        self._pending = []
        self._lazy = LazyRecords()
        self._urgent = False
        seq = self.pending_seq
        self.pending_seq = seq + 1
        if batch or lazy:  # else everything cancelled out: nothing to write, no thread hop, no wait
            # Not cancellable: a commit half-applied is rolled back by sqlite, but the broker must
            # learn the outcome before it acknowledges anything.
            started = time.perf_counter()
            await trio.to_thread.run_sync(
                self.database.apply, batch, lazy, limiter=limiter, abandon_on_cancel=False
            )
            self.commit_seconds.observe(time.perf_counter() - started)
        self.committed_seq = seq
        if on_commit is not None:
            on_commit(seq)

    # --- before and after the event loop ---------------------------------------------------------

    def load(self) -> StoredState:
        """Open the database and read everything back (blocking: run it in a thread); row ids
        continue after the highest stored."""
        state = self.database.load()
        self.message_ids = itertools.count(state.next_message_id)
        self.delivery_seqs = itertools.count(state.next_delivery_seq)
        return state

    def close(self, clean: bool = False) -> None:
        self.database.close(clean)

    def finish(self) -> None:
        """Apply what is still pending (at shutdown, from a thread or after the loop) and close."""
        lazy = self._lazy
        batch = cancel_out(self._pending, lazy)
        self._pending = []
        self._lazy = LazyRecords()
        if (batch or lazy) and self.database.is_open:
            self.database.apply(batch, lazy)
        self.database.close(clean=True)

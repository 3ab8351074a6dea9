"""The store's trio side: operations gather into numbered batches, each committed whole by one writer thread.

The event loop appends operations (`Store.op`) without waiting; the commit task hands
everything gathered so far to the writer thread as ONE transaction, so throughput grows with load
(many messages, one fsync), and while that commit runs the next batch gathers. Whatever must not
outrun the disk (a PUBACK, a PUBREC, ...) waits until `committed_seq` reaches the batch that holds
its changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import trio

from edgebus.store.ops import Op, _cancel_out
from edgebus.store.sqlite import Database, Durability, StoredState


class Store:
    """The durable store. Call `load` once (in a thread) before anything else; run `commit_forever`
    in the broker's nursery; append operations with `op` from the event loop."""

    def __init__(self, data_dir: str | os.PathLike[str], durability: Durability = "fsync") -> None:
        self.database = Database(data_dir, durability)
        self._pending: list[Op] = []
        #: Sequence number of the batch now gathering; `committed_seq` is the last one on disk.
        self.pending_seq = 1
        self.committed_seq = 0
        self._wakeup: trio.Event | None = None
        self.next_message_id = 1
        self.next_delivery_seq = 1

    # --- the event loop's side -------------------------------------------------------------------

    def op(self, *operation: Any) -> int:
        """Queue one change; returns the batch number it will be committed in."""
        self._pending.append(operation)
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.set()
        return self.pending_seq

    def new_message_id(self) -> int:
        mid = self.next_message_id
        self.next_message_id = mid + 1
        return mid

    def new_delivery_seq(self) -> int:
        seq = self.next_delivery_seq
        self.next_delivery_seq = seq + 1
        return seq

    def size_bytes(self) -> int:
        """The store's size on disk: the database and its write-ahead log."""
        return self.database.size_bytes()

    async def commit_forever(self, on_commit: Callable[[int], None]) -> None:
        """Commit whatever has gathered, one transaction at a time, in the writer thread; after
        each, tell ``on_commit`` the batch number now on disk."""
        limiter = trio.CapacityLimiter(1)  # one writer thread, ever
        while True:
            if not self._pending:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                self._wakeup = None
            await self.commit_now(limiter, on_commit)

    async def commit_now(
        self, limiter: trio.CapacityLimiter | None = None, on_commit: Callable[[int], None] | None = None
    ) -> None:
        batch = _cancel_out(self._pending)
        self._pending = []
        seq = self.pending_seq
        self.pending_seq = seq + 1
        if batch:  # else everything cancelled out: nothing to write, no thread hop, no wait
            # Not cancellable: a commit half-applied is rolled back by sqlite, but the broker must
            # learn the outcome before it acknowledges anything.
            await trio.to_thread.run_sync(
                self.database.apply, batch, limiter=limiter, abandon_on_cancel=False
            )
        self.committed_seq = seq
        if on_commit is not None:
            on_commit(seq)

    # --- before and after the event loop ---------------------------------------------------------

    def load(self) -> StoredState:
        """Open the database and read everything back (blocking: run it in a thread); row ids
        continue after the highest stored."""
        state = self.database.load()
        self.next_message_id = state.next_message_id
        self.next_delivery_seq = state.next_delivery_seq
        return state

    def close(self, clean: bool = False) -> None:
        self.database.close(clean)

    def finish(self) -> None:
        """Apply what is still pending (at shutdown, from a thread or after the loop) and close."""
        batch = _cancel_out(self._pending)
        self._pending = []
        if batch and self.database.is_open:
            self.database.apply(batch)
        self.database.close(clean=True)

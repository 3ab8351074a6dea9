"""Timing script (not a test): microseconds per durable delivery on the event loop's side of the store.

Each delivery is journaled as on the durable publish path: queued (message + delivery rows), sent (its
state), finished (delivery and message gone), through `StoreJournal` without committing; then
`cancel_out` runs over the whole batch, as the committer does before writing, and the batch is freed
(as after a commit). Nothing touches a disk. Times are CPU time (time.process_time): the machine
may be shared, and waiting for a core is not the journal's cost.

    python -m bench.journal_speed [--deliveries 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

from edgebus.core.message import Message
from edgebus.core.outbox import Delivery, Outbox
from edgebus.core.session import Session
from edgebus.store.committer import Store
from edgebus.store.journal import StoreJournal
from edgebus.store.ops import LazyRecords, cancel_out


def one_run(count: int, finish: bool) -> tuple[float, float, float, int]:
    """(journaling, cancel_out, freeing seconds, ops left after cancel_out) for ``count`` deliveries."""
    with tempfile.TemporaryDirectory() as data_dir:
        store = Store(data_dir)  # never loaded: no database is opened
        journal = StoreJournal(store)
        session = Session("bench-subscriber", Outbox(count + 1, 1 << 40, "refuse"))
        deliveries = [
            Delivery(Message(f"sensors/{i % 100}/temp", b"21.5" * 8, 1, False), 1, False, (i % 3,))
            for i in range(count)
        ]
        gc.collect()
        gc.disable()  # the broker's garbage collector runs too, but not in step with this loop
        try:
            start = time.process_time()
            for packet_id, delivery in enumerate(deliveries, 1):
                journal.delivery_queued(session, delivery)
                journal.delivery_sent(session, delivery, packet_id)
                if finish:
                    journal.delivery_finished(session, delivery)
            journaled = time.process_time()
            lazy = store._lazy
            left = cancel_out(store._pending, lazy)
            cancelled = time.process_time()
            kept = len(left) + len(lazy.sent_seqs) + len(lazy.gone) + len(lazy.messages_gone)
            del left, lazy
            store._pending = []
            store._lazy = LazyRecords()
            freed = time.process_time()
        finally:
            gc.enable()
        return journaled - start, cancelled - journaled, freed - cancelled, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    count = args.deliveries
    for finish, label in ((True, "queued+sent+finished"), (False, "queued+sent (offline)")):
        runs = [one_run(count, finish) for _ in range(args.repeat)]
        journal_us, cancel_us, free_us = (min(r[i] for r in runs) / count * 1e6 for i in range(3))
        total_us = min(sum(r[:3]) for r in runs) / count * 1e6
        print(
            f"{label:22s} {count} deliveries, best of {args.repeat}: journal {journal_us:.3f}"
            f" + cancel_out {cancel_us:.3f} + free {free_us:.3f} = {total_us:.3f} us per delivery"
            f" ({runs[0][3]} ops kept)"
        )


if __name__ == "__main__":
    main()

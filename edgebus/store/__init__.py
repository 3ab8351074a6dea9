"""Durable state in sqlite3 (WAL): a journal of typed changes, applied in group commits by one thread.

The broker's memory is the working state; the store is its journal. `journal` turns what happens
(a delivery queued, a retained message set, a bridge's message forwarded, ...) into the typed
operations of `ops`, each knowing its SQL; `committer` gathers them into numbered batches and hands
each, as one transaction, to the writer thread (`sqlite`, on the tables of `schema`); whatever must
not outrun the disk waits until its batch is committed. At startup `sqlite` reads everything back and
`restore` rebuilds the in-memory objects from it.
"""

from edgebus.store.committer import Store
from edgebus.store.journal import StoreJournal
from edgebus.store.restore import Restored, RestoredWill, rebuild
from edgebus.store.sqlite import DB_NAME, OutboxRow, StoredState

__all__ = [
    "DB_NAME",
    "OutboxRow",
    "Restored",
    "RestoredWill",
    "Store",
    "StoreJournal",
    "StoredState",
    "rebuild",
]

"""Durable state in sqlite3 (WAL): a journal of changes, applied in group commits by one thread.

The broker's memory is the working state; the store is its journal. `journal` turns protocol progress
into the operations of `ops`; `committer` gathers them into numbered batches and hands each, as one
transaction, to the writer thread (`sqlite`, on the tables of `schema`); whatever must not outrun the
disk waits until its batch is committed. At startup `sqlite` reads everything back.
"""

from edgebus.store.committer import Store
from edgebus.store.sqlite import DB_NAME, OutboxRow, StoredSession, StoredState

__all__ = ["DB_NAME", "OutboxRow", "Store", "StoredSession", "StoredState"]

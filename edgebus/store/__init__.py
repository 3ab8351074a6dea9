"""Durable state in sqlite3 (WAL): a journal of changes, applied in group commits by one thread.

The broker's memory is the working state; the store is its journal. The event loop appends
operations (`Store.op`) without waiting; the commit task hands everything gathered so far to one
writer thread as ONE transaction, so throughput grows with load (many messages, one fsync), and
while that commit runs the next batch gathers. Each batch has a sequence number: whatever must
not outrun the disk (a PUBACK, a PUBREC, ...) waits until `committed_seq` reaches the batch that
holds its changes. A delivery inserted and deleted within one batch never touches the disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from edgebus.config import Durability

log = logging.getLogger("edgebus.store")
DB_NAME = "edgebus.db"
SCHEMA_VERSION = 3

#: Operations, as tuples whose first item names them (see `_APPLY` for the SQL of each).
Op = tuple[Any, ...]

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    protocol_level INTEGER NOT NULL,
    expiry_interval INTEGER NOT NULL,
    disconnected_at REAL             -- wall-clock time the client went away, NULL while connected
);
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    topic_filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    retain_handling INTEGER NOT NULL,
    subscription_id INTEGER,
    PRIMARY KEY (client_id, topic_filter)
) WITHOUT ROWID;
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties BLOB,                 -- MQTT 5 property block as on the wire, NULL if none
    expires_at REAL,                 -- wall clock, NULL for never
    publisher TEXT
);
CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY,         -- global order: restores each session's queue order
    client_id TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    subscription_ids TEXT NOT NULL,  -- comma-separated
    packet_id INTEGER,               -- NULL while queued
    state INTEGER NOT NULL           -- 0 queued, 1 await PUBACK, 2 await PUBREC, 3 await PUBCOMP
);
CREATE TABLE inbound_qos2 (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties BLOB,
    expires_at REAL
);
CREATE TABLE wills (
    client_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties BLOB,
    protocol_level INTEGER NOT NULL,
    fire_at REAL NOT NULL            -- wall clock
);
"""

# Version 2: the bridges' outboxes (issue 6). `epoch` names this store in forwarded message ids: a new
# store (or a wiped data directory) starts a new epoch, so its sequence numbers never pass for old ones.
_SCHEMA_V2 = """
CREATE TABLE bridge_outbox (
    bridge TEXT NOT NULL,
    seq INTEGER NOT NULL,            -- per bridge, strictly increasing, never reused
    topic TEXT NOT NULL,             -- the remote topic or subject
    payload BLOB NOT NULL,           -- as forwarded (after any transform)
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    content_type TEXT,
    queued_at REAL NOT NULL,         -- wall clock
    PRIMARY KEY (bridge, seq)
) WITHOUT ROWID;
CREATE TABLE bridge_cursor (
    bridge TEXT PRIMARY KEY,
    forwarded_seq INTEGER NOT NULL   -- everything up to here is in the upstream log
);
INSERT OR IGNORE INTO meta VALUES ('epoch', lower(hex(randomblob(4))))
"""

# Version 3: a bridged message's expiry (wall clock, NULL for never) [MQTT-3.3.2-5].
_SCHEMA_V3 = "ALTER TABLE bridge_outbox ADD COLUMN expires_at REAL"

#: Schema migrations: MIGRATIONS[n] takes a database from version n to n + 1.
MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3}

_APPLY: dict[str, str] = {
    "session": "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
    "session_away": "UPDATE sessions SET disconnected_at = ? WHERE client_id = ?",
    "sub": "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?, ?)",
    "unsub": "DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?",
    "msg": "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "msg_gone": "DELETE FROM messages WHERE id = ?",
    "dlv": "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, NULL, 0)",
    "dlv_state": "UPDATE deliveries SET packet_id = ?, state = ? WHERE seq = ?",
    "dlv_gone": "DELETE FROM deliveries WHERE seq = ?",
    "in2": "INSERT OR REPLACE INTO inbound_qos2 VALUES (?, ?)",
    "in2_gone": "DELETE FROM inbound_qos2 WHERE client_id = ? AND packet_id = ?",
    "retain": "INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?)",
    "unretain": "DELETE FROM retained WHERE topic = ?",
    "will": "INSERT OR REPLACE INTO wills VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "will_gone": "DELETE FROM wills WHERE client_id = ?",
    "bridge_in": "INSERT INTO bridge_outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "bridge_drop": "DELETE FROM bridge_outbox WHERE bridge = ? AND seq = ?",
}
# ("bridge_done", bridge, seq): everything up to seq is in the upstream log.
_BRIDGE_DONE = (
    "DELETE FROM bridge_outbox WHERE bridge = ? AND seq <= ?",
    "INSERT OR REPLACE INTO bridge_cursor VALUES (?, ?)",
)
_SESSION_GONE = (
    "DELETE FROM subscriptions WHERE client_id = ?",
    "DELETE FROM deliveries WHERE client_id = ?",
    "DELETE FROM inbound_qos2 WHERE client_id = ?",
    "DELETE FROM sessions WHERE client_id = ?",
)


#: A bridge outbox row: seq, topic, payload, qos, retain, content_type, queued_at, expires_at.
OutboxRow = tuple[int, str, bytes, int, bool, str | None, float, float | None]


@dataclass(slots=True)
class StoredSession:
    client_id: str
    protocol_level: int
    expiry_interval: int
    disconnected_at: float | None
    subscriptions: list[tuple[str, int, bool, bool, int, int | None]] = field(default_factory=list)
    # (seq, message_id, qos, retain, subscription_ids, packet_id, state), in seq order
    deliveries: list[tuple[int, int, int, bool, tuple[int, ...], int | None, int]] = field(
        default_factory=list
    )
    inbound_qos2: list[int] = field(default_factory=list)


@dataclass(slots=True)
class StoredMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes | None
    expires_at: float | None
    publisher: str | None


@dataclass(slots=True)
class StoredState:
    """Everything the store held at startup."""

    sessions: dict[str, StoredSession] = field(default_factory=dict)
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    retained: list[tuple[str, bytes, int, bytes | None, float | None]] = field(default_factory=list)
    wills: list[tuple[str, str, bytes, int, bool, bytes | None, int, float]] = field(default_factory=list)
    # Per bridge: its outbox rows (seq, topic, payload, qos, retain, content_type, queued_at, expires_at)
    # in order, and the last sequence known to be forwarded.
    bridge_outboxes: dict[str, list[OutboxRow]] = field(default_factory=dict)
    bridge_cursors: dict[str, int] = field(default_factory=dict)
    epoch: str = ""
    next_message_id: int = 1
    next_delivery_seq: int = 1
    recovered_from: str | None = None  # set when the files were damaged and moved aside


def _cancel_out(batch: list[Op]) -> list[Op]:
    """Drop the deliveries (and messages) created and finished within one batch: a message its
    subscriber acknowledged before the commit never touches the disk."""
    born_dlv = {op[1] for op in batch if op[0] == "dlv"}
    if not born_dlv:
        return batch
    dead_dlv = {op[1] for op in batch if op[0] == "dlv_gone"} & born_dlv
    if not dead_dlv:
        return batch
    born_msg = {op[1] for op in batch if op[0] == "msg"}
    dead_msg = {op[1] for op in batch if op[0] == "msg_gone"} & born_msg
    kept: list[Op] = []
    for op in batch:
        kind = op[0]
        if kind in ("dlv", "dlv_gone") and op[1] in dead_dlv:
            continue
        if kind == "dlv_state" and op[3] in dead_dlv:
            continue
        if kind in ("msg", "msg_gone") and op[1] in dead_msg:
            continue
        kept.append(op)
    return kept


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Store:
    """The journal. Call `load` once (in a thread) before anything else; run `commit_forever` in
    the broker's nursery; append operations with `op` from the event loop."""

    def __init__(self, data_dir: str | os.PathLike[str], durability: Durability = "fsync") -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.durability: Durability = durability
        self._db: sqlite3.Connection | None = None
        self._pending: list[Op] = []
        #: Sequence number of the batch now gathering; `committed_seq` is the last one on disk.
        self.pending_seq = 1
        self.committed_seq = 0
        self._wakeup: trio.Event | None = None
        self.next_message_id = 1
        self.next_delivery_seq = 1
        self.commits = 0
        self.ops_written = 0

    # --- the event loop's side -------------------------------------------------------------------

    def op(self, *operation: Any) -> int:
        """Queue one change; returns the batch number it will be committed in."""
        self._pending.append(operation)
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.set()
        return self.pending_seq

    def size_bytes(self) -> int:
        """The store's size on disk: the database and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += self.path.with_name(DB_NAME + suffix).stat().st_size
            except OSError:
                pass
        return total

    def new_message_id(self) -> int:
        mid = self.next_message_id
        self.next_message_id = mid + 1
        return mid

    def new_delivery_seq(self) -> int:
        seq = self.next_delivery_seq
        self.next_delivery_seq = seq + 1
        return seq

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
            await trio.to_thread.run_sync(self._apply, batch, limiter=limiter, abandon_on_cancel=False)
        self.committed_seq = seq
        if on_commit is not None:
            on_commit(seq)

    # --- the writer thread's side ----------------------------------------------------------------

    def _apply(self, batch: list[Op]) -> None:
        db = self._db
        assert db is not None
        with _transaction(db):  # the whole batch: one transaction, one fsync
            for op in batch:
                if op[0] == "session_gone":
                    for sql in _SESSION_GONE:
                        db.execute(sql, (op[1],))
                elif op[0] == "bridge_done":
                    for sql in _BRIDGE_DONE:
                        db.execute(sql, op[1:])
                else:
                    db.execute(_APPLY[op[0]], op[1:])
        self.commits += 1
        self.ops_written += len(batch)

    # --- opening, loading, closing ---------------------------------------------------------------

    def load(self) -> StoredState:
        """Open (creating or migrating) the database and read everything back. A damaged database
        is moved aside and whatever can be read from it is carried over; the broker always starts."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        recovered_from: str | None = None
        try:
            state = self._open_and_read()
        except sqlite3.DatabaseError as exc:
            log.error(
                "store %s is damaged (%s): moving it aside and recovering what can be read", self.path, exc
            )
            self.close()
            recovered_from = self._move_aside()
            self._open(create=True)
            self._salvage(Path(recovered_from))
            state = self._read()
        state.recovered_from = recovered_from
        self.next_message_id = state.next_message_id
        self.next_delivery_seq = state.next_delivery_seq
        return state

    @property
    def running_marker(self) -> Path:
        """Exists while a broker has the store open: found at startup, the last stop was a crash."""
        return self.path.with_name(DB_NAME + ".open")

    def _open_and_read(self) -> StoredState:
        wal = self.path.with_name(DB_NAME + "-wal")
        if self.running_marker.exists() and self.path.exists() and not wal.exists():
            # sqlite keeps the WAL after a crash; gone, it took the commits since the last checkpoint.
            log.warning(
                "store %s: the write-ahead log is missing after an unclean stop; "
                "changes committed since the last checkpoint are lost",
                self.path,
            )
        self._open(create=True)
        db = self._db
        assert db is not None
        result = db.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {result[0] if result else 'no answer'}")
        state = self._read()
        self.running_marker.touch()
        return state

    def _open(self, create: bool) -> None:
        # Autocommit mode: every transaction is an explicit BEGIN ... COMMIT (`_transaction`).
        # check_same_thread=False: the writer runs in trio's worker threads, one at a time.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # fsync: every commit is fsynced before it returns; os: written to the OS, no fsync.
            db.execute("PRAGMA synchronous=" + ("FULL" if self.durability == "fsync" else "OFF"))
            db.execute("PRAGMA foreign_keys=OFF")
            self._db = db
            self._migrate()
        except BaseException:
            db.close()
            self._db = None
            raise

    def _migrate(self) -> None:
        db = self._db
        assert db is not None
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        version = 0
        if has_meta:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this edgebus ({SCHEMA_VERSION})"
            )
        while version < SCHEMA_VERSION:
            with _transaction(db):  # a migration applies whole or not at all (DDL included)
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                version += 1
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),))
            log.info("store %s: schema at version %d", self.path, version)

    def _read(self) -> StoredState:
        db = self._db
        assert db is not None
        state = StoredState()
        for client_id, level, expiry, away in db.execute("SELECT * FROM sessions"):
            state.sessions[client_id] = StoredSession(client_id, level, expiry, away)
        for row in db.execute("SELECT * FROM subscriptions"):
            stored = state.sessions.get(row[0])
            if stored is not None:
                stored.subscriptions.append((row[1], row[2], bool(row[3]), bool(row[4]), row[5], row[6]))
        for mid, topic, payload, qos, retain, props, expires_at, publisher in db.execute(
            "SELECT * FROM messages"
        ):
            state.messages[mid] = StoredMessage(
                topic, payload, qos, bool(retain), props, expires_at, publisher
            )
        for seq, cid, mid, qos, retain, sub_ids, pid, dstate in db.execute(
            "SELECT * FROM deliveries ORDER BY seq"
        ):
            stored = state.sessions.get(cid)
            if stored is None or mid not in state.messages:
                continue
            ids = tuple(int(x) for x in sub_ids.split(",") if x)
            stored.deliveries.append((seq, mid, qos, bool(retain), ids, pid, dstate))
        for cid, pid in db.execute("SELECT * FROM inbound_qos2"):
            stored = state.sessions.get(cid)
            if stored is not None:
                stored.inbound_qos2.append(pid)
        state.retained = list(db.execute("SELECT * FROM retained"))
        state.wills = [
            (r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7]) for r in db.execute("SELECT * FROM wills")
        ]
        for bridge, seq, topic, payload, qos, retain, content_type, queued_at, expires_at in db.execute(
            "SELECT * FROM bridge_outbox ORDER BY bridge, seq"
        ):
            state.bridge_outboxes.setdefault(bridge, []).append(
                (seq, topic, payload, qos, bool(retain), content_type, queued_at, expires_at)
            )
        state.bridge_cursors = dict(db.execute("SELECT * FROM bridge_cursor"))
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        state.epoch = row[0] if row else ""
        max_mid = db.execute("SELECT MAX(id) FROM messages").fetchone()[0] or 0
        max_seq = db.execute("SELECT MAX(seq) FROM deliveries").fetchone()[0] or 0
        state.next_message_id = max_mid + 1
        state.next_delivery_seq = max_seq + 1
        return state

    def _move_aside(self) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{DB_NAME}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(DB_NAME + suffix)
            if src.exists():
                src.rename(aside.with_name(aside.name + suffix))
        return str(aside)

    def _salvage(self, damaged: Path) -> None:
        """Copy every row that can still be read from a damaged database, table by table."""
        db = self._db
        assert db is not None
        try:
            old = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            log.error("store: nothing recoverable from %s: %s", damaged, exc)
            return
        try:
            try:  # keep the epoch: the salvaged outbox rows keep the ids the upstream may already hold
                row = old.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
                if row is not None:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (row[0],))
            except sqlite3.Error as exc:
                log.error("store: the epoch of %s is unreadable (%s): a new one starts", damaged, exc)
            for table in (
                "sessions",
                "subscriptions",
                "messages",
                "deliveries",
                "inbound_qos2",
                "retained",
                "wills",
                "bridge_outbox",
                "bridge_cursor",
            ):
                copied = 0
                try:
                    rows: Iterable[tuple[Any, ...]] = old.execute(f"SELECT * FROM {table}")
                    with _transaction(db):
                        for row in rows:
                            marks = ", ".join("?" * len(row))
                            db.execute(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", row)
                            copied += 1
                except sqlite3.Error as exc:
                    log.error("store: table %s: recovered %d rows, then: %s", table, copied, exc)
                    continue
                log.warning("store: table %s: recovered %d rows", table, copied)
        finally:
            old.close()

    def close(self, clean: bool = False) -> None:
        db = self._db
        if db is None:
            return
        self._db = None
        try:
            if clean:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.running_marker.unlink(missing_ok=True)
        except sqlite3.Error as exc:
            log.error("store: closing %s: %s", self.path, exc)
        finally:
            db.close()

    def finish(self) -> None:
        """Apply what is still pending (at shutdown, from a thread or after the loop) and close."""
        batch = _cancel_out(self._pending)
        self._pending = []
        if batch and self._db is not None:
            self._apply(batch)
        self.close(clean=True)

"""The store's writer-thread side: the sqlite3 file opened, migrated, read back, written and closed.

Everything here blocks; it runs in trio's worker threads, one at a time (`edgebus.store.committer`
sees to that), or before and after the event loop. A database that cannot be read is moved aside and
whatever can still be read from it is carried over: the broker always starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgebus.config import Durability
from edgebus.protocol.enums import PacketType
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import UserProperties
from edgebus.protocol.properties import read_properties
from edgebus.store.ops import LazyRecords, Op, executions, lazy_executions
from edgebus.store.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger("edgebus.store")

DB_NAME = "edgebus.db"

#: The page size of a new store. A durable commit appends whole pages to the write-ahead log (the last
#: leaf of each table it adds to, their parents, the header page) however little it adds: with ~40
#: small messages a commit, 4 KiB pages wrote ~1,190 B per message queued for an offline session and
#: later delivered, 1 KiB pages ~690 B (README, "Storage"). 512 B pages write a little less again,
#: but overflow WITHOUT ROWID rows of over ~100 B (a bridge outbox row) into extra pages. A store
#: created with another page size keeps it (changing it takes a VACUUM).
PAGE_SIZE = 1024

#: The write-ahead log is copied into the database (checkpointed) when it reaches this size, whatever
#: the page size: 4 MiB, as sqlite's default 1,000 pages of 4 KiB. A message queued and delivered
#: between two checkpoints has its pages copied once, not twice.
CHECKPOINT_BYTES = 4 * 1024 * 1024

_SESSION_COLUMNS = "client_id, protocol_level, expiry_interval, disconnected_at"

#: A bridge outbox row: seq, topic, payload, qos, retain, content_type, queued_at, expires_at,
#: user_properties.
OutboxRow = tuple[int, str, bytes, int, bool, str | None, float, float | None, UserProperties]


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
    # Per bridge: its outbox rows (seq, topic, payload, qos, retain, content_type, queued_at, expires_at,
    # user_properties) in order, and the last sequence known to be forwarded.
    bridge_outboxes: dict[str, list[OutboxRow]] = field(default_factory=dict)
    bridge_cursors: dict[str, int] = field(default_factory=dict)
    epoch: str = ""
    next_message_id: int = 1
    next_delivery_seq: int = 1
    recovered_from: str | None = None  # set when the files were damaged and moved aside


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Database:
    """The store's database file. `load` opens (creating or migrating) it and reads it back; `apply`
    writes a batch; `close` ends it. One thread at a time."""

    def __init__(self, data_dir: str | os.PathLike[str], durability: Durability = "fsync") -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.durability: Durability = durability
        self._db: sqlite3.Connection | None = None
        self.commits = 0
        self.ops_written = 0

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def size_bytes(self) -> int:
        """The store's size on disk: the database and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += self.path.with_name(DB_NAME + suffix).stat().st_size
            except OSError:
                pass
        return total

    def apply(self, batch: list[Op], lazy: LazyRecords | None = None) -> None:
        """Write ``batch``, then ``lazy``, as one transaction: one fsync (with durability "fsync") for all."""
        db = self._db
        assert db is not None
        with _transaction(db):
            for statement, rows in executions(batch):
                db.executemany(statement, rows)
            if lazy is not None:
                for statement, rows in lazy_executions(lazy):
                    db.executemany(statement, rows)
        self.commits += 1
        self.ops_written += len(batch)

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
            # Only takes effect on a new (empty) file: in WAL mode an existing page size stays.
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
            # fsync: every commit is fsynced before it returns; os: written to the OS, no fsync.
            db.execute("PRAGMA synchronous=" + ("FULL" if self.durability == "fsync" else "OFF"))
            db.execute("PRAGMA foreign_keys=OFF")
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA wal_autocheckpoint={max(1, CHECKPOINT_BYTES // page_size)}")
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
        created = version == 0
        while version < SCHEMA_VERSION:
            with _transaction(db):  # a migration applies whole or not at all (DDL included)
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                version += 1
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),))
            if not created:
                log.info("store %s: migrated to schema version %d", self.path, version)
        if created:
            log.info("store %s: created (schema version %d)", self.path, version)

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
            "SELECT d.seq, s.client_id, d.message_id, d.qos, d.retain, d.subscription_ids, d.packet_id,"
            " d.state FROM deliveries d JOIN sessions s ON s.rowid = d.session ORDER BY d.seq"
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
        for row in db.execute("SELECT * FROM bridge_outbox ORDER BY bridge, seq"):
            bridge, seq, topic, payload, qos, retain, content_type, queued_at, expires_at, props = row
            user_properties = _user_properties(props)
            state.bridge_outboxes.setdefault(bridge, []).append(
                (seq, topic, payload, qos, bool(retain), content_type, queued_at, expires_at, user_properties)
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
                # A session keeps its rowid: its deliveries refer to it.
                columns = "rowid, *" if table == "sessions" else "*"
                try:
                    rows: sqlite3.Cursor = old.execute(f"SELECT {columns} FROM {table}")
                    # Named columns: a damaged store of an older schema lacks the columns added since
                    # (e.g. bridge_outbox.user_properties), which then stay NULL.
                    names = ", ".join(column[0] for column in rows.description)
                    into = f"{table} ({names})"
                    if table == "sessions":
                        into = f"{table} (rowid, {_SESSION_COLUMNS})"
                    with _transaction(db):
                        for row in rows:
                            marks = ", ".join("?" * len(row))
                            db.execute(f"INSERT OR IGNORE INTO {into} VALUES ({marks})", row)
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


def _user_properties(block: bytes | None) -> UserProperties:
    """An outbox row's User Properties from their stored property block (NULL: none)."""
    if not block:
        return ()
    try:
        return read_properties(block, 0, len(block), PacketType.PUBLISH)[0].user_properties
    except ProtocolError as exc:  # a row sqlite's checks passed but whose block is not one of ours
        log.error("store: an outbox row's user properties are unreadable (%s): forwarded without them", exc)
        return ()

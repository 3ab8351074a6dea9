"""What the store writes per durable message (issue 12: at most 512 B of disk per 64-byte message, for
an online and an offline subscriber alike).

The disk figure itself comes from the benchmark (`python -m bench.run --only durable-q1,drain-q1`,
/proc/PID/io write_bytes), which depends on the file system and on how many messages each commit
carries. What the store decides, and what is checked here exactly, is the write-ahead log it appends:
sqlite writes whole pages, so the page size sets what a commit of a few small messages costs, and each
byte of a row is written about four times (log, checkpoint, and both again when it is delivered).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from edgebus.core.message import Message
from edgebus.core.outbox import Delivery, Outbox
from edgebus.core.session import Session
from edgebus.store import DB_NAME, Store
from edgebus.store.ops import DeliveryQueued, MessageSaved
from edgebus.store.sqlite import Database

MESSAGES = 2000
QUEUED_PER_COMMIT = 40  # what the benchmark's 4 publishers x 20 in flight give, at one commit in flight
DRAINED_PER_COMMIT = 500
WAL_HEADER = 32
FRAME_HEADER = 24


def _page_size(path: Path) -> int:
    """The page size in the database file's header (big-endian at offset 16; 1 means 65,536)."""
    size = int.from_bytes(path.read_bytes()[16:18], "big")
    return 65536 if size == 1 else size


def _wal_frames(path: Path, page_size: int) -> int:
    wal = path.with_name(DB_NAME + "-wal")
    return (wal.stat().st_size - WAL_HEADER) // (FRAME_HEADER + page_size)


async def test_an_offline_message_appends_under_370_bytes_of_log_queued_and_drained(tmp_path: Path) -> None:
    # 2,000 64-byte QoS 1 messages from four publishers queued for a persistent session that is away,
    # 40 a commit, then sent, acknowledged and gone, 500 a commit (all through the journal, as the
    # broker does): fewer frames than a checkpoint's worth, so the log file holds every frame. With
    # 4 KiB pages this was 742 B of log per message; 1 KiB pages recording the publisher too, 444;
    # then naming the session by its client id in each delivery row, 388; now 356.
    store = Store(tmp_path)
    await trio.to_thread.run_sync(store.load)
    journal = store.journal
    session = Session("dashboard-7", Outbox(MESSAGES + 1, 1 << 30, "refuse"))
    journal.track(session)
    try:
        page_size = _page_size(store.database.path)
        start = _wal_frames(store.database.path, page_size)
        payload = bytes(range(64))
        deliveries = []
        for n in range(MESSAGES):
            message = Message(
                "plant/line-4/temp", payload, 1, False, publisher_id=f"line-4-sensor-{n % 4:06}"
            )
            deliveries.append(delivery := Delivery(message, 1, False, ()))
            journal.delivery_queued(session, delivery)
            if len(deliveries) % QUEUED_PER_COMMIT == 0:
                await store.commit_now()
        queued = _wal_frames(store.database.path, page_size)
        for n, delivery in enumerate(deliveries, 1):
            journal.delivery_sent(session, delivery, n)
            journal.delivery_finished(session, delivery)
            if n % DRAINED_PER_COMMIT == 0:
                await store.commit_now()
        drained = _wal_frames(store.database.path, page_size)
    finally:
        store.finish()
    frame = FRAME_HEADER + page_size
    per_message = (drained - start) * frame / MESSAGES
    assert per_message <= 370, (
        f"{per_message:.0f} B of log per message: {(queued - start) * frame / MESSAGES:.0f} queued, "
        f"{(drained - queued) * frame / MESSAGES:.0f} drained"
    )


def test_a_store_made_with_4_kib_pages_keeps_them_and_its_data(tmp_path: Path) -> None:
    # Changing an existing store's page size would take a VACUUM (a copy of the whole file): an older
    # store opens as it is.
    path = tmp_path / DB_NAME
    old = sqlite3.connect(path)
    old.execute("PRAGMA page_size=4096")
    old.execute("PRAGMA journal_mode=WAL")
    old.close()
    database = Database(tmp_path)
    database.load()
    try:
        database.apply(
            [MessageSaved(1, "t", b"x", 1, False, None, None, None), DeliveryQueued(1, "c", 1, 1, False, "")]
        )
    finally:
        database.close(clean=True)
    assert _page_size(path) == 4096
    database = Database(tmp_path)
    state = database.load()
    try:
        assert state.messages[1].payload == b"x"
    finally:
        database.close(clean=True)

"""A damaged store never stops the broker: it logs what happened, moves the damaged files aside,
recovers what it can (or starts empty) and serves (issue 3, "Damaged store")."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from edgebus.protocol import MQTT_5, Publish
from edgebus.store import DB_NAME, Store
from edgebus.store.ops import (
    BridgeQueued,
    DeliveryQueued,
    MessageSaved,
    RetainedSet,
    SessionGone,
    SessionSaved,
    SubscriptionSaved,
)
from edgebus.store.schema import MIGRATIONS
from edgebus.store.sqlite import Database
from tests.clients import PEER, RawClient, Sub
from tests.conftest import StartBroker

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's durable store")


def _store_with_retained(data_dir: Path, topics: list[str], crash_copy: Path | None = None) -> None:
    """Commit retained messages; with ``crash_copy``, also copy the files as a crash leaves them
    (database, WAL and the "open" marker, taken while the store is still open)."""
    store = Store(data_dir)
    store.load()
    for topic in topics:
        store.append(RetainedSet, topic, b"v-" + topic.encode(), 1, None, None)
    if crash_copy is not None:
        store.database.apply(store._pending)
        store._pending = []
        crash_copy.mkdir()
        for path in data_dir.iterdir():
            shutil.copy(path, crash_copy / path.name)
    store.finish()


async def _retained_topics(host: str, port: int) -> set[str]:
    reader = await RawClient.connect(host, port, MQTT_5)
    await reader.mqtt_connect("reader")
    await reader.subscribe(Sub("#", 1))
    topics: set[str] = set()
    try:
        while True:
            packet = await reader.receive_packet(timeout=0.5)
            if isinstance(packet, Publish):
                topics.add(packet.topic)
    except AssertionError:  # no more packets
        pass
    await reader.aclose()
    return topics


async def _serves(host: str, port: int) -> None:
    client = await RawClient.connect(host, port, MQTT_5)
    assert (await client.mqtt_connect("still-serving")).reason_code == 0
    await client.aclose()


async def test_garbage_database_is_moved_aside_and_the_broker_starts(
    start_broker: StartBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / DB_NAME).write_bytes(b"this is not a database" * 200)
    with caplog.at_level(logging.ERROR, logger="edgebus.store"):
        broker = await start_broker(data_dir=data_dir)
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert list(data_dir.glob(f"{DB_NAME}.damaged-*")), "the damaged file is kept for inspection"
    await _serves(broker.host, broker.port)
    assert await _retained_topics(broker.host, broker.port) == set()


async def test_truncated_database_recovers_what_it_can(
    start_broker: StartBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    _store_with_retained(data_dir, [f"sensors/{i}" for i in range(2000)])
    db = data_dir / DB_NAME
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="edgebus.store"):
        broker = await start_broker(data_dir=data_dir)
    assert any("damaged" in r.getMessage() for r in caplog.records)
    await _serves(broker.host, broker.port)
    # Whatever rows could still be read came back; the broker did not refuse to start.
    recovered = await _retained_topics(broker.host, broker.port)
    assert recovered <= {f"sensors/{i}" for i in range(2000)}


async def test_missing_wal_after_an_unclean_stop_is_reported_and_tolerated(
    start_broker: StartBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _store_with_retained(tmp_path / "data", ["kept/1"])  # checkpointed into the main file
    data_dir = tmp_path / "crashed"
    _store_with_retained(tmp_path / "data", ["in-wal/1"], crash_copy=data_dir)  # only in the WAL
    wal = data_dir / f"{DB_NAME}-wal"
    assert wal.exists()
    wal.unlink()
    with caplog.at_level(logging.WARNING, logger="edgebus.store"):
        broker = await start_broker(data_dir=data_dir)
    assert any("write-ahead log is missing" in r.getMessage() for r in caplog.records)
    await _serves(broker.host, broker.port)
    assert "kept/1" in await _retained_topics(broker.host, broker.port)


async def test_unreadable_rows_are_dropped_and_the_rest_restored(
    start_broker: StartBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 3, bad input: "a client that reconnects with a session the store cannot read" gets a
    # defined, logged outcome (no session: Session Present 0) and everyone else is served.
    data_dir = tmp_path / "data"
    store = Store(data_dir)
    store.load()
    store.append(SessionSaved, "good", MQTT_5, 3600)
    store.append(SubscriptionSaved, "good", "ok/#", 1, False, False, 0, None)
    store.append(SessionSaved, "bad", MQTT_5, 3600)
    store.append(SubscriptionSaved, "bad", "a/#/b", 1, False, False, 0, None)  # not a valid filter
    store.append(RetainedSet, "garbled", b"x", 1, b"\x05\xff\xff\xff\xff\xff", None)  # not a property block
    store.append(RetainedSet, "fine", b"y", 1, None, None)
    store.finish()
    with caplog.at_level(logging.ERROR, logger="edgebus.store"):  # edgebus.store.restore drops them
        broker = await start_broker(data_dir=data_dir)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "session 'bad' is unreadable" in messages
    assert "retained message on 'garbled' is unreadable" in messages
    good = await RawClient.connect(broker.host, broker.port, MQTT_5)
    assert (await good.mqtt_connect("good", clean_start=False)).session_present
    bad = await RawClient.connect(broker.host, broker.port, MQTT_5)
    assert not (await bad.mqtt_connect("bad", clean_start=False)).session_present
    assert await _retained_topics(broker.host, broker.port) == {"fine"}
    for client in (good, bad):
        await client.aclose()


def test_salvaged_sessions_keep_their_queues(tmp_path: Path) -> None:
    # A delivery names its session by the session row's rowid (schema 4): the rows carried over from a
    # damaged store keep their rowids, or a queue would end up with no session, or with another's.
    damaged = Database(tmp_path / "damaged")
    damaged.load()
    damaged.apply(
        [
            SessionSaved("left", MQTT_5, 60),
            SessionSaved("stays", MQTT_5, 60),
            MessageSaved(1, "a/b", b"x", 1, False, None, None, None),
            DeliveryQueued(1, "stays", 1, 1, False, ""),
            SessionGone("left"),  # "stays" keeps rowid 2; copied without it, it would get 1
        ]
    )
    damaged.close(clean=True)
    fresh = Database(tmp_path / "fresh")
    fresh.data_dir.mkdir()
    fresh._open(create=True)
    try:
        fresh._salvage(damaged.path)
        state = fresh._read()
    finally:
        fresh.close(clean=True)
    assert list(state.sessions) == ["stays"]
    assert state.sessions["stays"].deliveries == [(1, 1, 1, False, (), None, 0)]


def test_salvage_from_an_older_schema_keeps_the_outbox(tmp_path: Path) -> None:
    # A store damaged before it could be migrated is of an older schema: its outbox rows lack the columns
    # added since (schema 5: user_properties), and are carried over with those left NULL.
    old = tmp_path / "damaged.db"
    db = sqlite3.connect(old)
    for step in range(4):
        for statement in MIGRATIONS[step].split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("INSERT INTO bridge_outbox VALUES ('cloud', 3, 'gw/t', x'01', 1, 0, NULL, 1.5, NULL)")
    db.commit()
    db.close()
    fresh = Database(tmp_path / "fresh")
    fresh.data_dir.mkdir()
    fresh._open(create=True)
    try:
        fresh._salvage(old)
        state = fresh._read()
    finally:
        fresh.close(clean=True)
    assert state.bridge_outboxes == {"cloud": [(3, "gw/t", b"\x01", 1, False, None, 1.5, None, ())]}


def test_unreadable_user_properties_are_logged_and_the_message_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A user-properties block that is not one (sqlite's checks cannot see inside a BLOB): the message is
    # still forwarded, without them, and the log says so.
    database = Database(tmp_path / "data")
    database.load()
    database.apply([BridgeQueued("cloud", 1, "gw/t", b"x", 1, False, None, 1.0, None, b"\x05\xff\xff")])
    database.close(clean=True)
    with caplog.at_level(logging.ERROR, logger="edgebus.store"):
        state = Database(tmp_path / "data").load()
    assert state.bridge_outboxes == {"cloud": [(1, "gw/t", b"x", 1, False, None, 1.0, None, ())]}
    assert "user properties are unreadable" in " ".join(r.getMessage() for r in caplog.records)

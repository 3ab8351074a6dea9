"""Schema migrations: a store written by an older edgebus opens in this one with its data intact."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from edgebus.store import DB_NAME, Store
from edgebus.store.ops import DeliveryQueued, MessageSaved, SessionSaved
from edgebus.store.schema import MIGRATIONS, SCHEMA_VERSION


def _old_store(directory: Path, version: int) -> Path:
    """A database at schema ``version``, built by the migrations up to it (as that edgebus left it)."""
    directory.mkdir()
    path = directory / DB_NAME
    db = sqlite3.connect(path)
    for step in range(version):
        for statement in MIGRATIONS[step].split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),))
    db.commit()
    db.close()
    return path


def test_a_version_1_store_gains_the_bridge_tables_and_an_epoch(tmp_path: Path) -> None:
    path = _old_store(tmp_path / "data", 1)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO sessions VALUES ('dev-1', 5, 3600, NULL)")
    db.commit()
    db.close()
    store = Store(tmp_path / "data")
    state = store.load()
    try:
        assert list(state.sessions) == ["dev-1"]
        assert len(state.epoch) == 8 and int(state.epoch, 16) >= 0
        assert state.bridge_outboxes == {} and state.bridge_cursors == {}
    finally:
        store.close(clean=True)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    db.close()


def test_a_version_2_outbox_row_keeps_its_data_and_never_expires(tmp_path: Path) -> None:
    path = _old_store(tmp_path / "data", 2)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO bridge_outbox VALUES ('cloud', 7, 'gw/t', x'01', 2, 0, NULL, 1.5)")
    db.execute("INSERT INTO bridge_cursor VALUES ('cloud', 6)")
    epoch = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
    db.commit()
    db.close()
    store = Store(tmp_path / "data")
    state = store.load()
    store.close(clean=True)
    assert state.bridge_outboxes == {"cloud": [(7, "gw/t", b"\x01", 2, False, None, 1.5, None, ())]}
    assert state.bridge_cursors == {"cloud": 6}
    assert state.epoch == epoch  # the epoch survives: ids already upstream stay ours


def test_a_version_3_queue_keeps_its_deliveries_named_by_session_row(tmp_path: Path) -> None:
    # Version 4 names a delivery's session by the session row's rowid instead of its client id; a
    # queued and an in-flight delivery come back in order, one left without a session is dropped.
    path = _old_store(tmp_path / "data", 3)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO sessions VALUES ('other', 4, 60, NULL)")
    db.execute("INSERT INTO sessions VALUES ('dev-1', 5, 3600, 12.5)")
    db.execute("INSERT INTO messages VALUES (1, 'a/b', x'01', 1, 0, NULL, NULL, 'pub')")
    db.execute("INSERT INTO messages VALUES (2, 'a/c', x'02', 2, 1, NULL, NULL, NULL)")
    db.execute("INSERT INTO deliveries VALUES (4, 'dev-1', 2, 2, 1, '3,7', NULL, 0)")
    db.execute("INSERT INTO deliveries VALUES (3, 'dev-1', 1, 1, 0, '', 9, 1)")
    db.execute("INSERT INTO deliveries VALUES (5, 'gone', 1, 1, 0, '', NULL, 0)")
    db.commit()
    db.close()
    store = Store(tmp_path / "data")
    state = store.load()
    try:
        assert state.sessions["dev-1"].deliveries == [
            (3, 1, 1, False, (), 9, 1),
            (4, 2, 2, True, (3, 7), None, 0),
        ]
        assert state.sessions["other"].deliveries == []
        assert state.next_delivery_seq == 6
        # Written from now on by session row too, and gone with its session.
        store.journal.session_gone_by_id("dev-1")
        store.finish()
    finally:
        store.close()
    store = Store(tmp_path / "data")
    state = store.load()
    store.close(clean=True)
    assert list(state.sessions) == ["other"]


def test_a_version_4_outbox_gains_user_properties_kept_in_order(tmp_path: Path) -> None:
    # Version 5 adds bridge_outbox.user_properties (issue 13): a row of version 4 has none; a row written
    # now keeps its MQTT 5 User Properties in order, a repeated name twice [MQTT-3.3.2-18], stored as
    # their property block on the wire (0x26, name, value; NULL for none).
    path = _old_store(tmp_path / "data", 4)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO bridge_outbox VALUES ('cloud', 7, 'gw/t', x'01', 1, 0, 'text/plain', 1.5, NULL)")
    db.commit()
    db.close()
    pairs = (("unit", "°C"), ("tag", "a"), ("tag", "b"))
    store = Store(tmp_path / "data")
    state = store.load()
    try:
        (row,) = state.bridge_outboxes["cloud"]
        assert row == (7, "gw/t", b"\x01", 1, False, "text/plain", 1.5, None, ())
        store.journal.bridge_queued("cloud", 8, "gw/u", b"\x02", 1, True, None, 2.5, None, pairs)
        store.journal.bridge_queued("cloud", 9, "gw/v", b"\x03", 1, False, None, 3.5, None, ())
        store.finish()
    finally:
        store.close()
    db = sqlite3.connect(path)
    blocks = [row[0] for row in db.execute("SELECT user_properties FROM bridge_outbox ORDER BY seq")]
    db.close()
    body = b"\x26\x00\x04unit\x00\x03" + "°C".encode() + b"\x26\x00\x03tag\x00\x01a\x26\x00\x03tag\x00\x01b"
    assert blocks == [None, bytes([len(body)]) + body, None]
    store = Store(tmp_path / "data")
    state = store.load()
    store.close(clean=True)
    assert [row[0] for row in state.bridge_outboxes["cloud"]] == [7, 8, 9]
    assert [row[8] for row in state.bridge_outboxes["cloud"]] == [(), pairs, ()]


def test_a_session_saved_again_keeps_its_queue(tmp_path: Path) -> None:
    # A client that reconnects saves its session again (a new protocol level or expiry): its queued
    # deliveries, which name the session row, stay with it [MQTT-3.1.2-4].
    store = Store(tmp_path)
    store.load()
    store.append(SessionSaved, "dev-1", 4, 3600)
    store.append(MessageSaved, 1, "a/b", b"x", 1, False, None, None, None)
    store.append(DeliveryQueued, 1, "dev-1", 1, 1, False, "")
    store.finish()
    store = Store(tmp_path)
    store.load()
    store.append(SessionSaved, "dev-1", 5, 7200)
    store.finish()
    store = Store(tmp_path)
    state = store.load()
    store.close(clean=True)
    assert state.sessions["dev-1"].expiry_interval == 7200
    assert state.sessions["dev-1"].deliveries == [(1, 1, 1, False, (), None, 0)]


def test_a_new_store_says_created_and_an_old_one_says_migrated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A fresh data directory is not a migration: one "created" line, no "migrated" lines.
    caplog.set_level(logging.INFO, logger="edgebus.store")
    fresh = Store(tmp_path / "fresh")
    fresh.load()
    fresh.close(clean=True)
    lines = [record.getMessage() for record in caplog.records]
    assert [line for line in lines if ": created (" in line] == [
        f"store {tmp_path / 'fresh' / DB_NAME}: created (schema version {SCHEMA_VERSION})"
    ]
    assert not [line for line in lines if ": migrated to" in line]
    caplog.clear()
    _old_store(tmp_path / "old", 1)
    old = Store(tmp_path / "old")
    old.load()
    old.close(clean=True)
    lines = [record.getMessage() for record in caplog.records]
    assert [line for line in lines if ": migrated to" in line] == [
        f"store {tmp_path / 'old' / DB_NAME}: migrated to schema version {version}"
        for version in range(2, SCHEMA_VERSION + 1)
    ]
    assert not [line for line in lines if ": created (" in line]

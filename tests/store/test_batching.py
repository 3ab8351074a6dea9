"""How a batch reaches the database: the changes nothing waits for are gathered as LazyRecords, `cancel_out`
drops what a later change of the batch makes moot, and `executions` groups the rest into one `executemany`
per kind, the lazy records last. Both must leave the database exactly as
running every operation's statements one by one would: checked on real sqlite files, table by table."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
import trio

from edgebus.store import committer
from edgebus.store.committer import Store
from edgebus.store.ops import (
    STATEMENTS,
    BridgeForwarded,
    BridgeQueued,
    DeliveryGone,
    DeliveryQueued,
    DeliveryState,
    LazyRecords,
    MessageGone,
    MessageSaved,
    Op,
    SessionAway,
    SessionGone,
    SessionSaved,
    SubscriptionRemoved,
    SubscriptionSaved,
    cancel_out,
    key_ranges,
    lazy_executions,
)
from edgebus.store.sqlite import Database

TABLES = (
    "sessions",
    "subscriptions",
    "messages",
    "deliveries",
    "inbound_qos2",
    "bridge_outbox",
    "bridge_cursor",
)


def one_by_one(db: sqlite3.Connection, batch: list[Op]) -> None:
    """The reference: every operation's statements, in batch order, one `execute` each."""
    db.execute("BEGIN")
    for op in batch:
        for sql in STATEMENTS[type(op)]:
            db.execute(sql, op)
    db.execute("COMMIT")


def contents(db: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {table: sorted(db.execute(f"SELECT * FROM {table}"), key=repr) for table in TABLES}


def open_database(path: Path) -> Database:
    database = Database(path)
    database.load()
    return database


def lifecycles(rng: random.Random, first_mid: int, first_seq: int, count: int) -> list[list[Op]]:
    """Each message's own operations in the order the broker makes them: saved, its deliveries queued,
    sent (state 1 or 2 by QoS), a QoS 2 one perhaps PUBREC'd (state 3), finished, and the message gone
    once its last delivery is."""
    lives: list[list[Op]] = []
    seq = first_seq
    for mid in range(first_mid, first_mid + count):
        life: list[Op] = [MessageSaved(mid, f"t/{mid}", b"p%d" % mid, 1, False, None, None, None)]
        finished = 0
        targets = rng.sample(["a", "b"], rng.randint(1, 2))
        for client in targets:
            qos = rng.choice((1, 2))
            life.append(DeliveryQueued(seq, client, mid, qos, False, ""))
            if rng.random() < 0.8:
                life.append(DeliveryState(seq, rng.randint(1, 65535), qos))
                if qos == 2 and rng.random() < 0.3:
                    life.append(DeliveryState(seq, 7, 3))
                if rng.random() < 0.7:
                    life.append(DeliveryGone(seq))
                    finished += 1
            seq += 1
        if finished == len(targets):
            life.append(MessageGone(mid))
        lives.append(life)
    return lives


def journaled(batch: list[Op]) -> tuple[list[Op], LazyRecords]:
    """``batch`` as the journal makes it: what nothing waits for (a QoS 1 delivery's state, a delivery or
    a message gone) as LazyRecords, the rest as operations."""
    ops: list[Op] = []
    lazy = LazyRecords()
    for op in batch:
        if isinstance(op, DeliveryState) and op.state == 1:
            lazy.sent_seqs.append(op.seq)
            lazy.sent_ids.append(op.packet_id)
        elif isinstance(op, DeliveryGone):
            lazy.gone.append(op.seq)
        elif isinstance(op, MessageGone):
            lazy.messages_gone.append(op.message_id)
        else:
            ops.append(op)
    return ops, lazy


def prepared(batch: list[Op], cancelled: bool) -> tuple[list[Op], LazyRecords]:
    ops, lazy = journaled(batch)
    return (cancel_out(ops, lazy) if cancelled else ops), lazy


def merged(rng: random.Random, lives: list[list[Op]], others: list[Op]) -> list[Op]:
    """Interleave the lifecycles (each keeps its own order) and sprinkle the other operations in."""
    cursors = [0] * len(lives)
    batch: list[Op] = []
    pending_others = list(others)
    while any(cursor < len(life) for cursor, life in zip(cursors, lives, strict=True)):
        if pending_others and rng.random() < 0.1:
            batch.append(pending_others.pop(0))
            continue
        live = [i for i, life in enumerate(lives) if cursors[i] < len(life)]
        i = rng.choice(live)
        batch.append(lives[i][cursors[i]])
        cursors[i] += 1
    return batch + pending_others


@pytest.mark.parametrize("cancelled", [True, False], ids=["cancel_out", "grouping-alone"])
@pytest.mark.parametrize("seed", range(6))
def test_grouped_batches_write_what_one_by_one_writes(tmp_path: Path, seed: int, cancelled: bool) -> None:
    rng = random.Random(seed)
    grouped = open_database(tmp_path / "grouped")
    reference = open_database(tmp_path / "reference")
    ref_db = reference._db
    assert ref_db is not None and grouped._db is not None
    # Batch 1: sessions, and deliveries whose later steps come in batch 2 (rows that exist already).
    first: list[Op] = [
        SessionSaved("a", 4, 60),
        SessionSaved("b", 5, 0),
        SubscriptionSaved("a", "t/#", 1, False, False, 0, None),
    ]
    lives = lifecycles(rng, 1, 1, 30)
    first += [op for life in lives for op in life[:2]]
    later = [life[2:] for life in lives]
    grouped.apply(*prepared(first, cancelled))
    one_by_one(ref_db, first)
    # Batch 2: the rest of those lives, new ones interleaved, and other kinds in between (a session
    # that goes and comes back, subscriptions, a bridge outbox) that end the lifecycle stretches.
    others: list[Op] = [
        BridgeQueued("up", 1, "x", b"1", 1, False, None, 1.0, None, None),
        SessionAway("a", 5.0),
        BridgeQueued("up", 2, "x", b"2", 1, False, None, 1.0, None, None),
        SubscriptionRemoved("a", "t/#"),
        SessionGone("b"),
        BridgeForwarded("up", 1),
        SessionSaved("b", 5, 0),
        SubscriptionSaved("a", "t/#", 2, False, False, 0, 7),
        BridgeQueued("up", 3, "x", b"3", 1, False, None, 1.0, None, None),
    ]
    second = merged(rng, later + lifecycles(rng, 100, 1000, 40), others)
    grouped.apply(*prepared(second, cancelled))
    one_by_one(ref_db, second)
    assert contents(grouped._db) == contents(ref_db)
    grouped.close()
    reference.close()


def test_a_drain_batch_is_a_few_statements() -> None:
    """The batch a drain makes (per acknowledged message: its delivery and its message gone, row by row,
    and the state of the next ones sent) runs as one statement per kind, its deletes by key ranges."""
    batch: list[Op] = []
    for seq in [*range(1, 51), *range(52, 101)]:  # 51 is still in flight
        batch += [DeliveryState(seq + 100, 1, 1), DeliveryGone(seq), MessageGone(seq + 1000)]
    ops, lazy = journaled(batch)
    assert cancel_out(ops, lazy) == []
    steps = [(sql.split()[0], list(rows)) for sql, rows in lazy_executions(lazy)]
    assert steps == [
        ("UPDATE", [(seq + 100, 1) for seq in [*range(1, 51), *range(52, 101)]]),
        ("DELETE", [(1, 50), (52, 100)]),
        ("DELETE", [(1001, 1050), (1052, 1100)]),
    ]


def test_key_ranges() -> None:
    assert key_ranges([7]) == [(7, 7)]
    assert key_ranges([5, 3, 4, 9, 10, 12, 4]) == [(3, 5), (9, 10), (12, 12)]


def test_the_state_of_a_delivery_finished_in_the_same_batch_is_not_written() -> None:
    ops, lazy = journaled(
        [
            DeliveryState(5, 9, 1),
            DeliveryState(6, 10, 1),
            DeliveryState(7, 11, 2),
            DeliveryGone(5),
            DeliveryGone(7),
        ]
    )
    assert cancel_out(ops, lazy) == [] and (lazy.sent_seqs, lazy.sent_ids, lazy.gone) == ([6], [10], [5, 7])


def _message_ids(store: Store) -> list[int]:
    with sqlite3.connect(store.database.path) as reader:  # another connection: sees what is committed
        return [row[0] for row in reader.execute("SELECT id FROM messages ORDER BY id")]


async def test_records_nobody_waits_for_ride_with_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change nothing waits for (record_message_gone and the like) makes no commit of its own at once: it
    goes with the next change that something waits for, or after LAZY_COMMIT_S. What waits is never
    delayed."""
    monkeypatch.setattr(committer, "LAZY_COMMIT_S", 60.0)
    store = Store(tmp_path)
    await trio.to_thread.run_sync(store.load)

    commit_seen = trio.Event()

    def on_commit(seq: int) -> None:
        nonlocal commit_seen
        commit_seen.set()
        commit_seen = trio.Event()

    async def committed(batch: int) -> None:
        with trio.fail_after(10):  # far below 60 s: an urgent change is not held by the lazy clock
            while store.committed_seq < batch:
                await commit_seen.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.commit_forever, on_commit)
        await committed(store.append(MessageSaved, 1, "t", b"p", 1, False, None, None, None))
        await committed(store.append(MessageSaved, 2, "t", b"p", 1, False, None, None, None))
        store.record_message_gone(1)
        before = store.committed_seq
        await trio.sleep(0.3)
        assert store.committed_seq == before and _message_ids(store) == [1, 2]  # still gathering
        await committed(store.append(SessionSaved, "a", 4, 60))  # waited for: commits now, with it
        assert _message_ids(store) == [2]
        monkeypatch.setattr(committer, "LAZY_COMMIT_S", 0.05)
        store.record_message_gone(2)
        await committed(store.committed_seq + 1)  # alone, it goes after LAZY_COMMIT_S
        assert _message_ids(store) == []
        nursery.cancel_scope.cancel()
    store.finish()

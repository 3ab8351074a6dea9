"""The store's operations: one immutable record per kind of change, each with its own SQL.

The event loop builds them (through `edgebus.store.journal`), the committer gathers them into
batches, and the writer thread runs each kind's statements over its operations (`executions`)
inside the batch's one transaction. They are
NamedTuples rather than frozen dataclasses: one is built for every row the durable publish path
writes, and a NamedTuple costs about a third as much to build (0.27 against 0.73 us for six fields,
measured on Python 3.11); being a tuple, each is also the parameter sequence of its own SQL
(fields in statement order, or numbered parameters where the key comes first). Flags are bools:
sqlite3 binds them as the INTEGER 0 or 1 the columns hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import compress
from typing import NamedTuple, TypeVar, cast

_Kind = TypeVar("_Kind", bound=type)

#: Each kind of operation's SQL, run in this order for each operation (its fields are the parameters).
STATEMENTS: dict[type, tuple[str, ...]] = {}


def statements(*sql: str) -> Callable[[_Kind], _Kind]:
    """Register the SQL of the operation kind this decorates."""

    def register(kind: _Kind) -> _Kind:
        STATEMENTS[kind] = sql
        return kind

    return register


# --- sessions and subscriptions ---------------------------------------------------------------------


# disconnected_at NULL: saved on CONNECT, or on a DISCONNECT that changes the expiry (the
# connection's loss then records the time with SessionAway). An upsert, not a replace: the
# row keeps its rowid, which its deliveries refer to.
@statements(
    "INSERT INTO sessions VALUES (?1, ?2, ?3, NULL) ON CONFLICT (client_id) DO UPDATE"
    " SET protocol_level = ?2, expiry_interval = ?3, disconnected_at = NULL"
)
class SessionSaved(NamedTuple):
    client_id: str
    protocol_level: int
    expiry_interval: int


@statements("UPDATE sessions SET disconnected_at = ?2 WHERE client_id = ?1")
class SessionAway(NamedTuple):
    client_id: str
    disconnected_at: float  # wall clock


@statements(
    "DELETE FROM subscriptions WHERE client_id = ?",
    "DELETE FROM deliveries WHERE session = (SELECT rowid FROM sessions WHERE client_id = ?)",
    "DELETE FROM inbound_qos2 WHERE client_id = ?",
    "DELETE FROM sessions WHERE client_id = ?",
)
class SessionGone(NamedTuple):
    """The session ended: it goes with everything it held."""

    client_id: str


@statements("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?, ?)")
class SubscriptionSaved(NamedTuple):
    client_id: str
    topic_filter: str
    qos: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int
    subscription_id: int | None


@statements("DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?")
class SubscriptionRemoved(NamedTuple):
    client_id: str
    topic_filter: str


# --- messages and their deliveries --------------------------------------------------------------------


@statements("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
class MessageSaved(NamedTuple):
    message_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes | None  # the MQTT 5 property block as on the wire
    expires_at: float | None  # wall clock
    publisher: str | None  # NULL since issue 12: No Local is decided before a message is queued


@statements("DELETE FROM messages WHERE id = ?")
class MessageGone(NamedTuple):
    message_id: int


# The session by its rowid: a few bytes instead of the client id, in every queued row.
@statements(
    "INSERT INTO deliveries VALUES (?1, (SELECT rowid FROM sessions WHERE client_id = ?2),"
    " ?3, ?4, ?5, ?6, NULL, 0)"
)
class DeliveryQueued(NamedTuple):
    seq: int
    client_id: str
    message_id: int
    qos: int
    retain: bool
    subscription_ids: str  # comma-separated


@statements("UPDATE deliveries SET packet_id = ?2, state = ?3 WHERE seq = ?1")
class DeliveryState(NamedTuple):
    seq: int
    packet_id: int
    state: int  # 1 await PUBACK, 2 await PUBREC, 3 await PUBCOMP


@statements("DELETE FROM deliveries WHERE seq = ?")
class DeliveryGone(NamedTuple):
    seq: int


@statements("INSERT OR REPLACE INTO inbound_qos2 VALUES (?, ?)")
class InboundReceived(NamedTuple):
    """An inbound QoS 2 packet id PUBREC'd, awaiting PUBREL."""

    client_id: str
    packet_id: int


@statements("DELETE FROM inbound_qos2 WHERE client_id = ? AND packet_id = ?")
class InboundReleased(NamedTuple):
    client_id: str
    packet_id: int


# --- retained messages and delayed wills ----------------------------------------------------------------


@statements("INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?)")
class RetainedSet(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    properties: bytes | None
    expires_at: float | None  # wall clock


@statements("DELETE FROM retained WHERE topic = ?")
class RetainedCleared(NamedTuple):
    topic: str


@statements("INSERT OR REPLACE INTO wills VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
class WillSaved(NamedTuple):
    client_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes | None
    protocol_level: int
    fire_at: float  # wall clock


@statements("DELETE FROM wills WHERE client_id = ?")
class WillGone(NamedTuple):
    client_id: str


# --- the bridges' outboxes ------------------------------------------------------------------------------


@statements("INSERT INTO bridge_outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
class BridgeQueued(NamedTuple):
    bridge: str
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None
    queued_at: float  # wall clock
    expires_at: float | None  # wall clock
    user_properties: bytes | None  # MQTT 5 property block of the User Properties, NULL if none


@statements("DELETE FROM bridge_outbox WHERE bridge = ? AND seq = ?")
class BridgeDropped(NamedTuple):
    bridge: str
    seq: int


@statements(
    "DELETE FROM bridge_outbox WHERE bridge = ? AND seq <= ?",
    "INSERT OR REPLACE INTO bridge_cursor VALUES (?, ?)",
)
class BridgeForwarded(NamedTuple):
    """Everything up to ``seq`` is in the upstream log."""

    bridge: str
    seq: int


Op = (
    SessionSaved
    | SessionAway
    | SessionGone
    | SubscriptionSaved
    | SubscriptionRemoved
    | MessageSaved
    | MessageGone
    | DeliveryQueued
    | DeliveryState
    | DeliveryGone
    | InboundReceived
    | InboundReleased
    | RetainedSet
    | RetainedCleared
    | WillSaved
    | WillGone
    | BridgeQueued
    | BridgeDropped
    | BridgeForwarded
)


class LazyRecords:
    """The changes nothing waits for, gathered for the next commit as plain ints rather than an
    operation object each (`edgebus.store.committer.Store.record_delivery_gone` and the like): a drain
    makes up to three a message, and objects that live until a lazy commit survive the garbage
    collector's young generations and set off its full passes (measured: one of ~20 ms in each
    10,000-message drain). The writer applies them after the batch's operations: each comes after
    everything else about its key (a delivery is sent after it is queued, gone after it is sent), and
    what may follow it (a session's end) deletes the same rows anyway."""

    __slots__ = ("gone", "messages_gone", "sent_ids", "sent_seqs")

    def __init__(self) -> None:
        self.sent_seqs: list[int] = []  # QoS 1 deliveries sent (state 1), with their packet ids
        self.sent_ids: list[int] = []
        self.gone: list[int] = []  # deliveries finished, by seq
        self.messages_gone: list[int] = []  # messages no delivery uses any more, by id

    def __bool__(self) -> bool:
        return bool(self.sent_seqs or self.gone or self.messages_gone)


def cancel_out(batch: list[Op], lazy: LazyRecords) -> list[Op]:
    """Drop what a later change of the same batch makes moot: the deliveries (and messages) created and
    finished within it (a message its subscriber acknowledged before the commit never touches the disk),
    and the state of a delivery finished within it (its row is deleted anyway: in a drain the state and
    the acknowledgement of most deliveries fall into one batch). Returns the batch; ``lazy`` is
    filtered in place."""
    if not lazy.gone:
        return batch
    gone = set(lazy.gone)
    dead = {op[0] for op in batch if type(op) is DeliveryQueued} & gone
    if dead:  # born and finished in this batch: neither row is written
        dead_msg = {op[0] for op in batch if type(op) is MessageSaved} & set(lazy.messages_gone)
        lazy.gone = [seq for seq in lazy.gone if seq not in dead]
        if dead_msg:
            lazy.messages_gone = [mid for mid in lazy.messages_gone if mid not in dead_msg]
            batch = [op for op in batch if type(op) is not MessageSaved or op[0] not in dead_msg]
        batch = [op for op in batch if type(op) is not DeliveryQueued or op[0] not in dead]
    if lazy.sent_seqs:
        keep = [seq not in gone for seq in lazy.sent_seqs]
        lazy.sent_seqs = list(compress(lazy.sent_seqs, keep))
        lazy.sent_ids = list(compress(lazy.sent_ids, keep))
    # The key is the first field of a DeliveryState: the delivery seq (a QoS 2 state here).
    return [op for op in batch if type(op) is not DeliveryState or op[0] not in gone]


#: The kinds that write messages and deliveries, in the order of one message's life. Operations on
#: different keys commute, and for one key they come in this order (ids and seqs are never reused), so
#: a stretch of these kinds can run grouped by kind in this order: one `executemany` per kind, not one
#: `execute` per row (a drain interleaves DeliveryGone and MessageGone row by row).
_LIFECYCLE = (MessageSaved, DeliveryQueued, DeliveryState, DeliveryGone, MessageGone)
_LIFECYCLE_PLACE: dict[type, int] = {kind: place for place, kind in enumerate(_LIFECYCLE)}

#: Deletes by key that run as one statement per run of consecutive keys: a drain acknowledges
#: deliveries (and so finishes messages) in the order they were queued, and deleting a range costs
#: sqlite about half as much as deleting its rows one by one (measured: 2 against 4 us a message).
_RANGE_DELETES: dict[type, str] = {
    DeliveryGone: "DELETE FROM deliveries WHERE seq BETWEEN ? AND ?",
    MessageGone: "DELETE FROM messages WHERE id BETWEEN ? AND ?",
}

#: What `executemany` runs: a statement and its parameter rows (operations, or key ranges).
Execution = tuple[str, Sequence[Sequence[object]]]


def key_ranges(keys: Iterable[int]) -> list[tuple[int, int]]:
    """``keys`` (at least one) as (first, last) runs of consecutive integers, in order."""
    ordered = sorted(set(keys))
    ranges: list[tuple[int, int]] = []
    first = last = ordered[0]
    for key in ordered[1:]:
        if key != last + 1:
            ranges.append((first, last))
            first = key
        last = key
    ranges.append((first, last))
    return ranges


def _grouped(kind: type, ops: list[Op]) -> list[Execution]:
    range_delete = _RANGE_DELETES.get(kind)
    if range_delete is not None:
        # The key of both kinds is their first field, an int.
        return [(range_delete, key_ranges(op[0] for op in cast("list[DeliveryGone | MessageGone]", ops)))]
    return [(sql, ops) for sql in STATEMENTS[kind]]


_SENT_QOS1 = "UPDATE deliveries SET packet_id = ?2, state = 1 WHERE seq = ?1"


def lazy_executions(lazy: LazyRecords) -> list[Execution]:
    """``lazy`` as (statement, parameter rows) pairs for `executemany`, to run after the batch's."""
    steps: list[Execution] = []
    if lazy.sent_seqs:
        steps.append((_SENT_QOS1, list(zip(lazy.sent_seqs, lazy.sent_ids, strict=True))))
    if lazy.gone:
        steps.append((_RANGE_DELETES[DeliveryGone], key_ranges(lazy.gone)))
    if lazy.messages_gone:
        steps.append((_RANGE_DELETES[MessageGone], key_ranges(lazy.messages_gone)))
    return steps


def executions(batch: list[Op]) -> list[Execution]:
    """``batch`` as (statement, parameter rows) pairs for `executemany`, in an order with the same
    outcome as running each operation's statements one after the other: consecutive operations of one
    kind together, a stretch of message and delivery kinds grouped by kind (`_LIFECYCLE`), and their
    deletes by ranges of keys (`_RANGE_DELETES`)."""
    steps: list[Execution] = []
    groups: list[list[Op]] | None = None  # a stretch of lifecycle kinds, by place in _LIFECYCLE
    run: list[Op] = []  # consecutive operations of another kind
    run_kind: type | None = None
    for op in batch:
        kind = type(op)
        place = _LIFECYCLE_PLACE.get(kind)
        if place is not None:
            if run:
                steps += _grouped(type(run[0]), run)
                run, run_kind = [], None
            if groups is None:
                groups = [[] for _ in _LIFECYCLE]
            groups[place].append(op)
            continue
        if groups is not None:
            for ops in groups:
                if ops:
                    steps += _grouped(type(ops[0]), ops)
            groups = None
        if kind is not run_kind:
            if run:
                steps += _grouped(type(run[0]), run)
            run, run_kind = [], kind
        run.append(op)
    if groups is not None:
        for ops in groups:
            if ops:
                steps += _grouped(type(ops[0]), ops)
    if run:
        steps += _grouped(type(run[0]), run)
    return steps

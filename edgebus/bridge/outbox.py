"""A bridge's outbox: messages waiting for the upstream, in order, within a budget, journaled to the store.

Pure bookkeeping, no I/O: memory holds the working copy (the runner reads it, no database reads), the
store holds the journal (rows written in the same commit as the message's local fan-out, deleted when
the upstream has them). Sequence numbers are per bridge, strictly increasing and never reused, so
``(gateway, store epoch, seq)`` names a message for good.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from edgebus.protocol.packets import UserProperties
from edgebus.store import OutboxRow, Store

__all__ = ["Entry", "Outbox"]

#: What one entry costs in the byte budget besides its payload and topic: about its memory (the Entry,
#: the bytes object's header, the float; measured with tracemalloc at ~160 B), so the budget bounds RAM.
ENTRY_OVERHEAD_BYTES = 160
#: What each MQTT 5 user property costs besides its characters: its pair tuple, its slot in the entry's
#: tuple and its two str objects (sys.getsizeof: 8 + 56 + 2 x 49); the entry's tuple of them adds 40.
USER_PROPERTY_OVERHEAD_BYTES = 162
USER_PROPERTIES_OVERHEAD_BYTES = 40


def properties_size(content_type: str | None, user_properties: UserProperties) -> int:
    """What a message's content type and user properties cost in the outbox budget."""
    size = len(content_type) if content_type else 0
    if user_properties:
        size += USER_PROPERTIES_OVERHEAD_BYTES
        for name, value in user_properties:
            size += len(name) + len(value) + USER_PROPERTY_OVERHEAD_BYTES
    return size


@dataclass(slots=True)
class Entry:
    seq: int
    topic: str  # remote topic or subject
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None
    user_properties: UserProperties  # in order, names may repeat [MQTT-3.3.2-18]; the shared () when none
    queued_at: float  # wall clock
    expires_at: float | None  # wall clock; None: never [MQTT-3.3.2-5]
    batch: int  # the store batch that holds it (0: not stored); sent only once that batch is on disk

    @property
    def size(self) -> int:
        size = len(self.payload) + len(self.topic) + ENTRY_OVERHEAD_BYTES
        if self.content_type or self.user_properties:
            size += properties_size(self.content_type, self.user_properties)
        return size


class Outbox:
    """Entries in sequence order. The first `in_flight` entries are with the upstream (being sent);
    they are neither dropped nor sent again until `forwarded` or `unsent` says how that went."""

    def __init__(
        self,
        name: str,
        store: Store | None,
        max_messages: int,
        max_bytes: int,
        overflow: Literal["refuse", "drop-oldest"],
    ) -> None:
        self.name = name
        self.store = store
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.entries: deque[Entry] = deque()
        self.bytes = 0
        self.next_seq = 1
        self.forwarded_seq = 0  # everything up to here is in the upstream log
        self.in_flight = 0
        self.dropped = 0
        self.refused = 0

    def restore(self, rows: list[OutboxRow], forwarded_seq: int) -> None:
        """Load what the store held (rows in sequence order) at startup."""
        self.forwarded_seq = forwarded_seq
        for seq, topic, payload, qos, retain, content_type, queued_at, expires_at, user_properties in rows:
            if seq <= forwarded_seq:
                continue  # forwarded, its delete not yet applied when the store was read: gone
            entry = Entry(
                seq, topic, payload, qos, retain, content_type, user_properties, queued_at, expires_at, 0
            )
            self.entries.append(entry)
            self.bytes += entry.size
        last = self.entries[-1].seq if self.entries else 0
        self.next_seq = max(last, forwarded_seq) + 1

    def is_full(self) -> bool:
        return len(self.entries) >= self.max_messages or self.bytes >= self.max_bytes

    def append(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        content_type: str | None,
        now_wall: float,
        expires_at: float | None = None,
        user_properties: UserProperties = (),
    ) -> int | None:
        """Queue a message; returns the store batch it is written in (0 without a store), or None when
        the outbox is full and refuses it. Under drop-oldest the oldest entries not in flight make room."""
        if self.is_full():
            if self.overflow == "refuse" or len(self.entries) <= self.in_flight:
                self.refused += 1
                return None
            while self.is_full() and len(self.entries) > self.in_flight:
                self._drop(self.in_flight)
        seq = self.next_seq
        self.next_seq = seq + 1
        store = self.store
        batch = 0
        if store is not None:
            batch = store.journal.bridge_queued(
                self.name, seq, topic, payload, qos, retain, content_type, now_wall, expires_at,
                user_properties,
            )
        entry = Entry(
            seq, topic, payload, qos, retain, content_type, user_properties, now_wall, expires_at, batch
        )
        self.entries.append(entry)
        self.bytes += entry.size
        return batch

    def _drop(self, index: int) -> None:
        entry = self.entries[index]
        del self.entries[index]
        self.bytes -= entry.size
        self.dropped += 1
        if self.store is not None:
            self.store.journal.bridge_dropped(self.name, entry.seq)

    def pending_range(self) -> tuple[int, int]:
        """(first, last) sequence of the entries not yet forwarded; first > last when there are none."""
        if not self.entries:
            return self.next_seq, self.next_seq - 1
        return self.entries[0].seq, self.entries[-1].seq

    def take(self, limit: int, committed_batch: int | None) -> list[Entry]:
        """Up to ``limit`` entries after those in flight whose store batch is on disk (``committed_batch``;
        None: no store), now in flight."""
        taken: list[Entry] = []
        entries = self.entries
        index = self.in_flight
        end = min(len(entries), index + limit)
        while index < end:
            entry = entries[index]
            if committed_batch is not None and entry.batch > committed_batch:
                break
            taken.append(entry)
            index += 1
        self.in_flight = index
        return taken

    def has_sendable(self, committed_batch: int | None) -> bool:
        entries = self.entries
        if len(entries) <= self.in_flight:
            return False
        return committed_batch is None or entries[self.in_flight].batch <= committed_batch

    def unsent(self) -> None:
        """The batch in flight failed: its entries will be sent again, first."""
        self.in_flight = 0

    def forwarded(self, upto_seq: int) -> int:
        """Everything up to ``upto_seq`` is in the upstream log: forget it (one store operation).
        Returns how many entries that removed."""
        entries = self.entries
        removed = 0
        while entries and entries[0].seq <= upto_seq:
            self.bytes -= entries.popleft().size
            removed += 1
        self.in_flight = max(0, self.in_flight - removed)
        if upto_seq > self.forwarded_seq:
            self.forwarded_seq = upto_seq
            if self.store is not None:
                self.store.journal.bridge_forwarded(self.name, upto_seq)
        return removed

    def oldest_queued_at(self) -> float | None:
        return self.entries[0].queued_at if self.entries else None

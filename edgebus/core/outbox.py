"""A session's bounded queue of deliveries not yet written, with an explicit overflow policy."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Literal

from edgebus.core.message import Message
from edgebus.core.stats import Stats

OverflowPolicy = Literal["drop-oldest", "drop-newest", "refuse"]


class Delivery:
    """One message on its way to one subscriber: the granted QoS, the RETAIN flag to send and
    the subscription identifiers of the matching subscriptions [MQTT-3.3.4-3]."""

    __slots__ = ("message", "qos", "retain", "share_group", "store_seq", "subscription_ids")

    def __init__(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...] = (),
        share_group: object | None = None,
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.subscription_ids = subscription_ids
        # The shared-subscription group this delivery was picked for, so that it can be handed to
        # another member if this one goes away before acknowledging it (§4.8.2).
        self.share_group = share_group
        # Its row in the durable store (0: not stored).
        self.store_seq = 0


class Outbox:
    """FIFO of deliveries, bounded by a message count and a byte budget.

    When full, `offer` applies the policy: drop the oldest queued delivery, drop the new one, or
    refuse it (the caller answers a v5 publisher with 0x97 Quota exceeded). Every drop is counted.
    """

    __slots__ = ("_queue", "bytes", "dropped", "max_bytes", "max_messages", "on_discard", "policy", "stats")

    def __init__(
        self, max_messages: int, max_bytes: int, policy: OverflowPolicy, stats: Stats | None = None
    ) -> None:
        self.stats = stats if stats is not None else Stats()
        # Created on first use: an empty deque costs ~600 bytes, and most idle sessions never queue.
        self._queue: deque[Delivery] | None = None
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy: OverflowPolicy = policy
        self.bytes = 0
        self.dropped = 0
        # Told about every queued delivery the policy drops (the store forgets it).
        self.on_discard: Callable[[Delivery], None] | None = None

    def __len__(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __iter__(self) -> Iterator[Delivery]:
        return iter(self._queue or ())

    def offer(self, delivery: Delivery) -> bool:
        """Queue a delivery. Returns False if it was refused or dropped by the policy."""
        size = delivery.message.size
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self.max_messages or self.bytes + size > self.max_bytes:
            if self.policy == "drop-oldest" and size <= self.max_bytes:
                while queue and (len(queue) >= self.max_messages or self.bytes + size > self.max_bytes):
                    old = queue.popleft()
                    self.bytes -= old.message.size
                    self.dropped += 1
                    self.stats.messages_dropped += 1
                    if self.on_discard is not None:
                        self.on_discard(old)
            else:
                self.dropped += 1
                self.stats.messages_dropped += 1
                return False
        queue.append(delivery)
        self.bytes += size
        return True

    def restore(self, delivery: Delivery) -> None:
        """Append a delivery read back from the store (limits were applied when it was queued)."""
        if self._queue is None:
            self._queue = deque()
        self._queue.append(delivery)
        self.bytes += delivery.message.size

    def push_front(self, delivery: Delivery) -> None:
        """Put back a delivery that was taken but could not be sent yet (not subject to limits)."""
        if self._queue is None:
            self._queue = deque()
        self._queue.appendleft(delivery)
        self.bytes += delivery.message.size

    def pop(self) -> Delivery:
        assert self._queue is not None
        delivery = self._queue.popleft()
        self.bytes -= delivery.message.size
        return delivery

    def peek(self) -> Delivery:
        assert self._queue is not None
        return self._queue[0]

    def remove_if(self, predicate: Callable[[Delivery], bool]) -> list[Delivery]:
        """Remove and return every delivery for which ``predicate(delivery)`` is true."""
        if not self._queue:
            return []
        kept: deque[Delivery] = deque()
        removed: list[Delivery] = []
        for delivery in self._queue:
            (removed if predicate(delivery) else kept).append(delivery)
        self._queue = kept
        self.bytes = sum(d.message.size for d in kept)
        return removed

    def clear(self) -> None:
        self._queue = None
        self.bytes = 0

"""One task for every deadline the broker keeps (delayed wills, session expiry, close grace): a heap."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

log = logging.getLogger("edgebus.server.timers")


@dataclass(slots=True)
class Timer:
    deadline: float
    seq: int
    action: Callable[[], None]
    cancelled: bool = False

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class Timers:
    """Deadlines on the trio clock; `run` performs each action when its deadline passes, unless the
    timer was cancelled first. Scheduling is synchronous: no task per timer."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self._wakeup = trio.Event()

    def schedule(self, deadline: float, action: Callable[[], None]) -> Timer:
        timer = Timer(deadline, next(self._seq), action)
        heapq.heappush(self._heap, timer)
        if self._heap[0] is timer:
            self._wakeup.set()
        return timer

    async def run(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0].deadline <= now:
                timer = heapq.heappop(heap)
                if not timer.cancelled:
                    try:
                        timer.action()
                    except Exception:
                        log.exception("timer action failed")
            wakeup = self._wakeup
            with trio.move_on_at(heap[0].deadline if heap else math.inf):
                await wakeup.wait()
            if wakeup.is_set():
                self._wakeup = trio.Event()

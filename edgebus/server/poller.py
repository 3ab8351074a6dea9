"""One task reads every established plain-TCP connection: an epoll set of their sockets, waited on by a
single trio task, instead of a reader task parked per connection.

A parked trio task costs an idle connection about 2.5 KB (the task, its coroutine frames, trio's own
epoll bookkeeping); at 10,000 idle devices that is most of the broker's memory. The connection's first
packets (CONNECT, authentication) and anything that must wait (backpressure, a rate quota) still run in
a task of their own (edgebus.server.connection); a connection joins the poller once it is established
and has nothing to wait for, and leaves it when it must wait or is gone.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

#: Readiness events taken from the kernel per round; the rest come next round (level-triggered).
MAX_EVENTS = 256
#: While finishing (shutdown), how often the poller checks whether its last connection has gone.
FINISH_CHECK_S = 0.05


_Client = TypeVar("_Client")


class ReadPoller(Generic[_Client]):
    """``on_readable(client)`` is called (synchronously, from the poller task) for each registered client
    whose socket has something to read or has closed; it reads at most once per call, so one busy client
    cannot starve the others. Level-triggered: a socket with more to read is reported again next round.
    ``after_round()`` is called once after each round of reads (the broker writes what they produced)."""

    def __init__(self, on_readable: Callable[[_Client], None], after_round: Callable[[], None]) -> None:
        self._on_readable = on_readable
        self._after_round = after_round
        self._epoll = select.epoll()
        self._clients: dict[int, _Client] = {}
        self._finishing = False
        self._scope: trio.CancelScope | None = None  # the poller's service, which `finish` ends

    def __len__(self) -> int:
        return len(self._clients)

    def add(self, fd: int, client: _Client) -> None:
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._clients[fd] = client

    def remove(self, fd: int) -> None:
        """Stop reading socket ``fd``; call before it is closed (the number may be reused at once)."""
        if self._clients.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # already closed: the kernel dropped it from the set

    def finish(self) -> None:
        """Return from `run` once no client is left (shutdown: the last ones are draining)."""
        self._finishing = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        try:
            # One cancel scope for the whole service, not one per wait: `finish` ends it, and the
            # rounds go on under a deadline that rechecks whether the last client has gone.
            with trio.CancelScope() as self._scope:
                if not self._finishing:
                    await self._serve()
            self._scope = None
            while self._clients:
                with trio.move_on_after(FINISH_CHECK_S):
                    await self._serve()
        finally:
            self._epoll.close()

    async def _serve(self) -> None:
        epoll = self._epoll
        epoll_fd = epoll.fileno()
        clients = self._clients
        on_readable = self._on_readable
        after_round = self._after_round
        while True:
            for fd, _ in epoll.poll(0, MAX_EVENTS):
                client = clients.get(fd)
                if client is not None:
                    on_readable(client)
            # Write from this turn: a lone message costs one scheduler round, not a second one for
            # the flusher task (latency at 2,000 msg/s was mostly such rounds).
            after_round()
            # Let the other tasks run before the next round, as a reader task does after each read;
            # the wait returns in the next round if more is ready already (the set is level-triggered).
            await trio.lowlevel.wait_readable(epoll_fd)

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
    cannot starve the others. Level-triggered: a socket with more to read is reported again next round."""

    def __init__(self, on_readable: Callable[[_Client], None]) -> None:
        self._on_readable = on_readable
        self._epoll = select.epoll()
        self._clients: dict[int, _Client] = {}
        self._finishing = False
        self._wait_scope: trio.CancelScope | None = None  # the poller's wait, which `finish` ends

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
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def run(self) -> None:
        epoll = self._epoll
        clients = self._clients
        on_readable = self._on_readable
        try:
            while True:
                events = epoll.poll(0, MAX_EVENTS)
                if not events:
                    if self._finishing and not clients:
                        return
                    with trio.CancelScope() as self._wait_scope:
                        if self._finishing:
                            self._wait_scope.deadline = trio.current_time() + FINISH_CHECK_S
                        await trio.lowlevel.wait_readable(epoll.fileno())
                    self._wait_scope = None
                    continue
                for fd, _ in events:
                    client = clients.get(fd)
                    if client is not None:
                        on_readable(client)
                # Let the flusher and the other tasks run before the next round, as a reader task does
                # after each read.
                await trio.lowlevel.checkpoint()
        finally:
            epoll.close()

"""Plain TCP: listening sockets, the accept loop, and a lean trio Stream over a connected socket."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("edgebus.transport")

LISTEN_BACKLOG = 1024
#: errno values of accept() that mean "out of resources": back off instead of spinning.
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: errno values of accept() that concern only the connection being accepted.
_ACCEPT_TRANSIENT_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}


class TcpStream(trio.abc.Stream):
    """A trio Stream over a non-blocking socket, with as few frames as a wait can have: a ClientStream
    (edgebus.transport.stream).

    trio's SocketStream goes through several wrapper coroutines and context managers per call;
    an idle MQTT connection spends its life parked in `receive_some`, so every frame there costs
    memory per connection. This one waits with `wait_readable` / `wait_writable` directly.
    """

    __slots__ = ("_closed", "_sock", "on_close", "remote")

    def __init__(self, sock: socket.socket, remote: str) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # MQTT packets are small
        except OSError:
            pass
        self._sock = sock
        self._closed = False
        self.remote = remote
        # Called once, when the socket is closed: a listener counts its open connections with it
        # (a connection outlives the task that accepted it: edgebus.server.poller).
        self.on_close: Callable[[], None] | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            try:
                data = sock.recv(max_bytes or 65536)
            except BlockingIOError:
                # Wait below, not here: inside the except block the exception and its traceback
                # would stay alive for as long as the connection is idle (~600 B per connection).
                data = None
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            if data is None:
                await trio.lowlevel.wait_readable(sock)
                continue
            # Still give other tasks a turn (every async call is a checkpoint, so a flooding client
            # cannot starve the rest), shielded so that bytes already read are never lost.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv_nowait(self, max_bytes: int) -> bytes | None:
        """What the socket has now, without waiting: None if nothing, b"" at end of stream. For a reader
        that learned from its own epoll that the socket is readable (edgebus.server.poller)."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        try:
            return self._sock.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        view = memoryview(data)
        total = len(view)
        sent = 0
        waited = False
        while sent < total:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            try:
                sent += sock.send(view[sent:])
                continue
            except BlockingIOError:
                pass  # wait outside the except block (see receive_some)
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            await trio.lowlevel.wait_writable(sock)
            waited = True
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, data: bytes) -> int:
        """Send what the socket takes now, without waiting; returns the number of bytes sent."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    def force_close(self) -> None:
        """Close now, from sync code: tasks waiting on this socket get ClosedResourceError."""
        if self._closed:
            return
        self._closed = True
        try:
            trio.lowlevel.notify_closing(self._sock)
        except RuntimeError:
            pass  # not inside trio (e.g. at interpreter exit)
        self._sock.close()
        if self.on_close is not None:
            self.on_close()

    def shutdown_write(self) -> None:
        """FIN after the bytes sent; reads go on (see ClientStream.close_write)."""
        if self._closed:
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone already

    async def close_write(self) -> None:
        self.shutdown_write()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.force_close()
        await trio.lowlevel.checkpoint()


def open_listening_sockets(host: str | None, port: int) -> list[socket.socket]:
    """Bind every address ``host`` resolves to (all interfaces for None / "" / "*"), like
    trio.open_tcp_listeners but returning plain non-blocking sockets."""
    bind_host = None if host in (None, "", "*") else host
    infos = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, type_, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve_tcp(
    listener: socket.socket,
    handler: Callable[[TcpStream], Awaitable[None]],
    handler_nursery: trio.Nursery,
) -> None:
    """Accept connections until cancelled, each handled by ``handler`` in ``handler_nursery``."""
    try:
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:  # accept the whole backlog before waiting again
                try:
                    sock, address = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                        log.error("accept: %s; pausing 100 ms", exc)
                        await trio.sleep(0.1)
                        break
                    if exc.errno in _ACCEPT_TRANSIENT_ERRORS:
                        continue
                    raise
                remote = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
                handler_nursery.start_soon(handler, TcpStream(sock, remote))
    finally:
        try:
            trio.lowlevel.notify_closing(listener)
        except RuntimeError:
            pass
        listener.close()

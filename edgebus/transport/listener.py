"""Extra listeners ([[listener]]: tcp, tls, ws, wss, and the HTTP API's http, https): each one's sockets,
how its connections are wrapped (TLS, WebSocket), its TLS context and its connection count."""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import trio

from edgebus.config import Config, ListenerConfig
from edgebus.transport.stream import ClientStream
from edgebus.transport.tcp import TcpStream, open_listening_sockets, serve_tcp
from edgebus.transport.tls import TlsStream, server_context

log = logging.getLogger("edgebus.transport")

StreamHandler = Callable[[ClientStream], Awaitable[None]]
#: Listener types whose connections are TLS.
TLS_TYPES = ("tls", "wss", "https")
#: Listener types that serve the HTTP API rather than MQTT.
HTTP_TYPES = ("http", "https")


def make_ssl_context(config: ListenerConfig) -> ssl.SSLContext:
    """The server-side TLS context of a tls / wss listener. Raises OSError / ssl.SSLError / ValueError."""
    if not config.certfile or not config.keyfile:
        raise ValueError(f"a {config.type} listener needs certfile and keyfile")
    return server_context(
        config.certfile,
        config.keyfile,
        cafile=config.cafile,
        require_certificate=config.require_certificate,
        min_tls_version=config.min_tls_version,
    )


def listener_problems(config: Config) -> list[str]:
    """What would stop the [[listener]] entries from starting (missing or unreadable TLS files)."""
    problems: list[str] = []
    for index, listener in enumerate(config.listener):
        where = f"listener[{index}] ({listener.type} {listener.bind_address})"
        if listener.type in TLS_TYPES:
            try:
                make_ssl_context(listener)
            except (OSError, ssl.SSLError, ValueError) as error:
                problems.append(f"{where}: {error}")
            if listener.type == "https" and listener.use_identity_as_username:
                problems.append(f"{where}: use_identity_as_username is for MQTT listeners")
        elif listener.type == "http" and (listener.cafile or listener.require_certificate):
            problems.append(f"{where}: cafile and require_certificate need https")
        elif listener.cafile or listener.require_certificate or listener.use_identity_as_username:
            problems.append(
                f"{where}: cafile, require_certificate and use_identity_as_username need tls or wss"
            )
    return problems


class Listener:
    """One [[listener]]: its sockets, how a new TCP connection is wrapped (TLS, WebSocket), and how many
    connections it has open."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        self.ssl_context = make_ssl_context(config) if config.type in TLS_TYPES else None
        self.sockets: list[socket.socket] = []
        self.connections = 0
        self.refused = 0

    def open(self) -> None:
        address = self.config.bind_address
        self.sockets = open_listening_sockets(address.host, address.port)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(str(name[0]), int(name[1])) for name in (sock.getsockname() for sock in self.sockets)]

    def wrap(self, stream: TcpStream) -> ClientStream:
        config = self.config
        inner: ClientStream = stream
        if self.ssl_context is not None:
            inner = TlsStream(stream, self.ssl_context, config.use_identity_as_username)
        if config.type in ("ws", "wss"):
            # Imported on the first WebSocket connection: wsproto and h11 cost ~0.4 MB a gateway without
            # a WebSocket listener never needs.
            from edgebus.transport.websocket import WebSocketStream

            return WebSocketStream(inner, config.path)
        return inner

    async def serve(self, handler: StreamHandler, handler_nursery: trio.Nursery) -> None:
        """Accept on every socket until cancelled."""
        accept = functools.partial(self._handle, handler)
        async with trio.open_nursery() as accepting:
            for sock in self.sockets:
                accepting.start_soon(serve_tcp, sock, accept, handler_nursery)

    async def _handle(self, handler: StreamHandler, stream: TcpStream) -> None:
        limit = self.config.max_connections
        if limit and self.connections >= limit:
            self.refused += 1
            log.debug(
                "%s: listener %s is full (%d connections)", stream.remote, self.config.bind_address, limit
            )
            stream.force_close()
            return
        # Counted until the socket closes, not until the handler returns: an established connection
        # is read by the broker's poller after its task has ended.
        self.connections += 1
        stream.on_close = self._closed_one
        try:
            await handler(self.wrap(stream))
        except BaseException:
            stream.force_close()
            raise

    def _closed_one(self) -> None:
        self.connections -= 1

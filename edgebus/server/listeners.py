"""The sockets the broker accepts on, as a set a reload can change: server.listen's TCP addresses and each
[[listener]], each accepting in its own cancel scope. Stopping one stops accepting; the MQTT connections it
accepted stay open (they run in the broker's connection nursery, not here). An http / https listener's
connections are served by its own HTTP server (`edgebus.http`), in this set's nursery (shutdown does not
wait on idle keep-alives), and end with their listener: none keeps rules (admins, tokens) it no longer has."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from edgebus.config import Config, ListenAddress, ListenerConfig
from edgebus.http.view import ListenerInfo
from edgebus.transport.listener import HTTP_TYPES, Listener, StreamHandler, make_ssl_context

if TYPE_CHECKING:
    from edgebus.http.server import HttpServer
    from edgebus.http.service import HttpService

log = logging.getLogger("edgebus.server.listeners")

#: A listener's identity: a server.listen address, or a whole [[listener]] table (any change is a new one).
ListenerKey = tuple[str, ListenAddress | ListenerConfig]


def listener_keys(config: Config) -> Iterator[ListenerKey]:
    """server.listen first, then [[listener]], in configuration order."""
    for address in config.server.listen:
        yield ("listen", address)
    for listener in config.listener:
        yield ("listener", listener)


def describe(key: ListenerKey) -> str:
    _, what = key
    if isinstance(what, ListenerConfig):
        return f"listener {what.type} {what.bind_address}"
    return f"server.listen {what}"


def _make(key: ListenerKey) -> Listener:
    """May raise OSError / ssl.SSLError / ValueError (TLS files)."""
    _, what = key
    return Listener(what if isinstance(what, ListenerConfig) else ListenerConfig(type="tcp", address=what))


@dataclass
class _Accepting:
    listener: Listener
    http: HttpServer | None = None  # an http / https listener's server
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class ListenerPlan:
    """A reload's listeners: the new ones built (TLS contexts loaded, not bound), the keys to stop, and the
    TLS contexts re-read for the unchanged TLS listeners (certificate rotation)."""

    order: list[ListenerKey]
    added: dict[ListenerKey, _Accepting]
    removed: list[ListenerKey]
    new_contexts: dict[ListenerKey, ssl.SSLContext]
    new_tokens: dict[ListenerKey, dict[bytes, str] | None]


class ListenerSet:
    def __init__(self, http_service: Callable[[], HttpService]) -> None:
        self._http_service = http_service  # made on first use: most gateways have no http listener
        self.running: dict[ListenerKey, _Accepting] = {}
        self._nursery: trio.Nursery | None = None
        self._handler: StreamHandler | None = None
        self._handler_nursery: trio.Nursery | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every bound address, server.listen first."""
        return [address for accepting in self.running.values() for address in accepting.listener.addresses]

    @property
    def listener_addresses(self) -> list[list[tuple[str, int]]]:
        """The bound addresses of each [[listener]], in configuration order."""
        return [a.listener.addresses for key, a in self.running.items() if key[0] == "listener"]

    def info(self) -> list[ListenerInfo]:
        """Each running listener's bound addresses with its open and refused connections (on the first of
        its addresses: a listener counts them together)."""
        found: list[ListenerInfo] = []
        for accepting in self.running.values():
            listener = accepting.listener
            refused = listener.refused + (accepting.http.refused_connections if accepting.http else 0)
            for index, (host, port) in enumerate(listener.addresses):
                address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                counts = (listener.connections, refused) if index == 0 else (0, 0)
                found.append(ListenerInfo(listener.config.type, address, *counts))
        return found

    def _make(self, key: ListenerKey) -> _Accepting:
        """May raise OSError / ssl.SSLError / ValueError (TLS files, an http listener's token file)."""
        listener = _make(key)
        if listener.config.type not in HTTP_TYPES:
            return _Accepting(listener)
        return _Accepting(listener, self._http_service().server_for(listener.config))

    def _stopped(self, accepting: _Accepting) -> None:
        accepting.listener.close()
        if accepting.http is not None:
            self._http_service().retire(accepting.http)

    def open(self, config: Config) -> None:
        """Bind everything at start; on failure close what was opened and raise."""
        try:
            for key in listener_keys(config):
                accepting = self.running[key] = self._make(key)
                accepting.listener.open()
        except BaseException:
            for accepting in self.running.values():
                self._stopped(accepting)
            self.running.clear()
            raise

    async def serve(self, handler: StreamHandler, handler_nursery: trio.Nursery) -> None:
        """Accept on every listener until cancelled; connections start in ``handler_nursery``."""
        self._handler = handler
        self._handler_nursery = handler_nursery
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for accepting in self.running.values():
                    nursery.start_soon(self._accept, accepting)
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def _accept(self, accepting: _Accepting) -> None:
        assert self._handler is not None and self._handler_nursery is not None
        try:
            with accepting.scope:
                if accepting.http is None:
                    await accepting.listener.serve(self._handler, self._handler_nursery)
                else:
                    assert self._nursery is not None
                    await accepting.listener.serve(accepting.http.serve_connection, self._nursery)
        finally:
            self._stopped(accepting)
            accepting.done.set()

    def plan(self, config: Config) -> ListenerPlan:
        """Build the listeners ``config`` adds; raises OSError / ssl.SSLError / ValueError for TLS or token
        files that cannot be used (nothing has changed then)."""
        order = list(listener_keys(config))
        added: dict[ListenerKey, _Accepting] = {}
        try:
            for key in order:
                if key not in self.running:
                    added[key] = self._make(key)
        except BaseException:
            for accepting in added.values():
                self._stopped(accepting)
            raise
        tokens = {
            key: self._http_service().read_tokens(accepting.http)
            for key, accepting in self.running.items()
            if key in order and accepting.http is not None
        }
        removed = [key for key in self.running if key not in order]
        contexts = {
            key: make_ssl_context(key[1])
            for key, accepting in self.running.items()
            if key in order
            and accepting.listener.ssl_context is not None
            and isinstance(key[1], ListenerConfig)
        }
        return ListenerPlan(order, added, removed, contexts, tokens)

    def discard(self, plan: ListenerPlan) -> None:
        """A refused reload's plan: the listeners it built (unbound) are dropped."""
        for accepting in plan.added.values():
            self._stopped(accepting)

    async def apply(self, plan: ListenerPlan) -> tuple[list[str], list[str]]:
        """Stop the removed listeners (first: a changed one may reuse its address), then bind and start the
        added ones. Returns (changes, errors): a listener that cannot bind is an error, the rest applies."""
        changes: list[str] = []
        errors: list[str] = []
        for key, context in plan.new_contexts.items():
            self.running[key].listener.ssl_context = context  # new connections use the re-read files
        for key, tokens in plan.new_tokens.items():
            http = self.running[key].http
            assert http is not None
            self._http_service().set_tokens(http, tokens)
        stopping = [(key, self.running.pop(key)) for key in plan.removed]
        for _, accepting in stopping:
            accepting.scope.cancel()
        for key, accepting in stopping:
            if self._nursery is not None:
                await accepting.done.wait()
            self._stopped(accepting)
            changes.append(f"{describe(key)}: removed")
        for key, accepting in plan.added.items():
            try:
                accepting.listener.open()
            except OSError as exc:
                self._stopped(accepting)
                errors.append(f"{describe(key)}: {exc}")
                log.error("reload: %s cannot listen: %s", describe(key), exc)
                continue
            self.running[key] = accepting
            if self._nursery is not None:
                self._nursery.start_soon(self._accept, accepting)
            changes.append(f"{describe(key)}: added")
        # Configuration order, as `listener_addresses` promises.
        self.running = {key: self.running[key] for key in plan.order if key in self.running}
        return changes, errors

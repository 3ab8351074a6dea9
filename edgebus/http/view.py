"""What the HTTP side reads of the broker and may ask of it, as a protocol (the broker imports this
package, so this package does not import the broker)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edgebus.config import Config
from edgebus.core.session import Session
from edgebus.core.stats import Stats
from edgebus.server.bridges import BridgeSet
from edgebus.server.connection import Connections
from edgebus.server.fanout import Fanout
from edgebus.server.reload import ReloadReport
from edgebus.server.sessions import Sessions
from edgebus.store import Store


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    """One listener as /metrics and the API show it."""

    type: str  # tcp (server.listen), tls, ws, wss, http, https
    address: str  # HOST:PORT as bound
    connections: int
    refused: int  # refused for the listener's max_connections


class BrokerView(Protocol):
    """The parts of `edgebus.server.broker.Broker` the HTTP listener uses."""

    @property
    def config(self) -> Config: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def sessions(self) -> dict[str, Session]: ...
    @property
    def bridge_set(self) -> BridgeSet: ...
    @property
    def store(self) -> Store | None: ...
    @property
    def fanout(self) -> Fanout: ...
    @property
    def connections(self) -> Connections: ...
    @property
    def session_manager(self) -> Sessions: ...

    def sys_values(self) -> dict[str, str]: ...
    def listener_info(self) -> list[ListenerInfo]: ...
    def uptime_seconds(self) -> float: ...
    async def reload_from_file(self) -> ReloadReport: ...
    def password_entries(self) -> dict[str, str] | None: ...

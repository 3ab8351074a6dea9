"""The composition root: builds the broker's parts from the config, starts and stops them, and turns
what a connection decoded into calls on the part that owns it."""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import ValuesView

import trio

from edgebus import __version__
from edgebus.bridge.runner import Bridge
from edgebus.bridge.sinks import sink_class
from edgebus.config import Config
from edgebus.core.connect import (
    ConnectRefused,
    ServerFeatures,
    answer_violation,
    decide_connect,
    within_client_maximum,
)
from edgebus.core.message import Message
from edgebus.core.router import RetainedIndex, Router
from edgebus.core.server import Connection
from edgebus.core.server_events import (
    ConnectionLimits,
    ConnectReceived,
    DisconnectReceived,
    MessageReceived,
    ProtocolViolation,
    SubscribeReceived,
    UnsubscribeReceived,
)
from edgebus.core.session import Session, SubscriptionOptions
from edgebus.core.stats import Stats
from edgebus.http.server import HttpServer
from edgebus.http.service import HttpService
from edgebus.http.view import ListenerInfo
from edgebus.protocol.enums import ReasonCode
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import Connect
from edgebus.server.admission import Admission
from edgebus.server.commits import Commits
from edgebus.server.connection import ClientConnection, Connections
from edgebus.server.fanout import Fanout
from edgebus.server.sessions import Sessions
from edgebus.server.subscriptions import Subscriptions
from edgebus.server.sys_topics import SysTopics
from edgebus.server.timers import Timers
from edgebus.store import OutboxRow, Store
from edgebus.transport.listener import HTTP_TYPES, Listener
from edgebus.transport.stream import ClientStream
from edgebus.transport.tcp import open_listening_sockets, serve_tcp

log = logging.getLogger("edgebus.server.broker")

#: How long shutdown waits for connections to take their DISCONNECT before cutting them.
SHUTDOWN_GRACE_S = 3.0


class Broker:
    """An MQTT 3.1.1 and 5.0 broker. ``await nursery.start(broker.serve)`` returns the bound
    addresses; `shutdown` ends it gracefully."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config = config or Config()
        mqtt = config.mqtt
        self.limits = ConnectionLimits(
            max_packet_size=mqtt.max_packet_size,
            receive_maximum=mqtt.receive_maximum,
            max_inflight=mqtt.max_inflight,
            topic_alias_maximum=mqtt.topic_alias_maximum,
            max_qos=mqtt.max_qos,
            retain_available=mqtt.retain_available,
        )
        self.features = ServerFeatures(
            max_keep_alive=mqtt.max_keep_alive,
            max_session_expiry_interval=mqtt.max_session_expiry_interval,
            wildcard_subscriptions=mqtt.wildcard_subscriptions,
            subscription_identifiers=mqtt.subscription_identifiers,
            shared_subscriptions=mqtt.shared_subscriptions,
        )
        self.stats = stats = Stats()
        durability = config.storage.durability
        # No store at all with durability "memory": nothing is written, nothing survives a restart.
        self.store = store = None if durability == "memory" else Store(config.server.data_dir, durability)
        self.journal = journal = None if store is None else store.journal
        self.sessions: dict[str, Session] = {}
        self.addresses: list[tuple[str, int]] = []
        self.timers = timers = Timers()
        self.admission = admission = Admission(config, self.sessions)
        # Upstream bridges: each gets every routed message (`Bridge.offer`) and runs in the root nursery.
        gateway_id = config.server.gateway_id or socket.gethostname()
        self.bridges = [
            Bridge(
                bridge,
                gateway_id,
                store,
                self._publish_from_bridge,
                self._wait_committed,
                self._publish_state,
                sink_class(bridge.kind),
            )
            for bridge in config.bridge
        ]
        router: Router[SubscriptionOptions] = Router()
        retained: RetainedIndex[Message] = RetainedIndex()
        self.fanout = fanout = Fanout(
            self.sessions,
            router,
            retained,
            self.bridges,
            journal,
            admission,
            config.queue.overflow,
            stats,
        )
        self.connections = connections = Connections(
            self.limits,
            stats,
            timers,
            config.limits.connect_timeout,
            self._handle_events,
            self._after_read,
            self._connection_lost,
        )
        self.session_manager = Sessions(
            config, self.limits, self.features, fanout, connections, timers, journal, stats
        )
        self.subscriptions = Subscriptions(mqtt.max_qos, self.features, fanout, admission, journal)
        self.sys_topics = SysTopics(fanout, self.bridges, store, stats)
        self.commits = (
            None
            if store is None
            else Commits(store, self.bridges, fanout, config.storage.max_bytes, config.queue.overflow)
        )
        self._shutdown_requested = trio.Event()
        self._listen_scope = trio.CancelScope()
        self._extra_listeners: list[Listener] = []
        # The HTTP API, metrics and status page, when a [[listener]] has type http / https.
        self.http = HttpService(self) if any(lc.type in HTTP_TYPES for lc in config.listener) else None
        self._http_servers: dict[Listener, HttpServer] = {}
        self._main_addresses = 0  # how many of `addresses` are server.listen's

    # --- what tests and operators look at ---------------------------------------------------------

    @property
    def clients(self) -> ValuesView[ClientConnection]:
        """The open connections."""
        return self.connections.clients.values()

    @property
    def store_full(self) -> bool:
        """Whether the store reached [storage] max_bytes."""
        return self.fanout.store_full

    @property
    def refused_connections(self) -> int:
        return self.admission.refused_connections

    @property
    def listener_addresses(self) -> list[list[tuple[str, int]]]:
        """The bound addresses of each [[listener]], in configuration order."""
        return [listener.addresses for listener in self._extra_listeners]

    def reload_security(self) -> None:
        """Reread the password and ACL files (SIGHUP); see `Admission.reload_security`."""
        self.admission.reload_security()

    def sys_values(self) -> dict[str, str]:
        """The $SYS topics and their current values."""
        return self.sys_topics.values()

    def uptime_seconds(self) -> float:
        return self.sys_topics.uptime_seconds()

    def password_entries(self) -> dict[str, str] | None:
        """The password file's entries as last read (at start, SIGHUP); None without a password file."""
        auth = self.admission.auth
        return auth.passwords if auth is not None else None

    def listener_info(self) -> list[ListenerInfo]:
        """Each listener's open connections: server.listen's sockets together, then every [[listener]]."""
        extra_mqtt = 0
        found: list[ListenerInfo] = []
        for listener in self._extra_listeners:
            kind = listener.config.type
            server = self._http_servers.get(listener)
            refused = listener.refused + (server.refused_connections if server is not None else 0)
            for host, port in listener.addresses:
                found.append(ListenerInfo(kind, _address(host, port), listener.connections, refused))
            if kind not in HTTP_TYPES:
                extra_mqtt += listener.connections
        # server.listen sockets share one count (the first shows it): MQTT connections not on a [[listener]]
        main_count = len(self.connections.clients) - extra_mqtt
        main = [
            ListenerInfo("tcp", _address(host, port), main_count if index == 0 else 0, 0)
            for index, (host, port) in enumerate(self.addresses[: self._main_addresses])
        ]
        return main + found

    # --- lifecycle -------------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners: list[socket.socket] = []
        try:
            for address in self.config.server.listen:
                listeners.extend(open_listening_sockets(address.host, address.port))
        except BaseException:
            for listener in listeners:
                listener.close()
            raise
        self.addresses = [_sockname(listener) for listener in listeners]
        self._main_addresses = len(self.addresses)
        if self.store is not None:
            try:
                state = await trio.to_thread.run_sync(self.store.load)
            except BaseException:
                for listener in listeners:
                    listener.close()
                raise
            self.session_manager.restore(state)
            self._restore_bridges(state.bridge_outboxes, state.bridge_cursors, state.epoch)
        else:
            # Nothing survives a restart: every run is a new epoch.
            self._restore_bridges({}, {}, secrets.token_hex(4))
        self._open_extra_listeners(listeners)
        log.info("edgebus %s listening on %s", __version__, ", ".join(f"{h}:{p}" for h, p in self.addresses))
        connections = self.connections
        try:
            async with trio.open_nursery() as root:
                root.start_soon(self.timers.run)
                root.start_soon(connections.sweep_forever)
                if self.store is not None and self.commits is not None:
                    root.start_soon(self.store.commit_forever, self.commits.on_commit)
                if self.config.sys.interval > 0:
                    root.start_soon(self.sys_topics.publish_forever, self.config.sys.interval)
                for bridge in self.bridges:
                    root.start_soon(bridge.run)
                if self.http is not None:
                    root.start_soon(self.http.sample_forever)
                root.start_soon(connections.flush_forever)
                async with trio.open_nursery() as tasks:
                    connections.start_writers_in(tasks)  # the connections' tasks end with this nursery
                    tasks.start_soon(self._accept, listeners, tasks)
                    task_status.started(self.addresses)
                    await self._shutdown_requested.wait()
                    log.info("shutting down: closing %d connections", len(connections.clients))
                    self._listen_scope.cancel()
                    for client in list(connections.clients.values()):
                        client.close(ReasonCode.SERVER_SHUTTING_DOWN)  # [MQTT-3.14.2-1] 0x8B
                    tasks.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S
                connections.stop_writers()
                root.cancel_scope.cancel()
        finally:
            # Cancelled from outside, or connections that outlived the grace time: close them.
            connections.stop_writers()
            connections.force_close_all()
            if self.store is not None:
                # What was journaled but not yet committed (nothing acknowledged waits on it).
                self.store.finish()
        log.info("edgebus stopped")

    def shutdown(self) -> None:
        """Stop accepting, send v5 clients DISCONNECT 0x8B, close every connection, and return
        from `serve`."""
        self._shutdown_requested.set()

    def _restore_bridges(
        self, outboxes: dict[str, list[OutboxRow]], cursors: dict[str, int], epoch: str
    ) -> None:
        configured = {bridge.name for bridge in self.bridges}
        for bridge in self.bridges:
            bridge.restore(outboxes.get(bridge.name, []), cursors.get(bridge.name, 0), epoch)
        for name, rows in outboxes.items():
            if name not in configured:
                log.warning(
                    "store: the outbox of bridge %r holds %d messages but no such bridge is configured: "
                    "kept until it is configured again",
                    name,
                    len(rows),
                )

    def _open_extra_listeners(self, listeners: list[socket.socket]) -> None:
        """Bind the [[listener]] entries (TLS contexts are built here, so a bad certificate stops the
        start); on failure close everything opened so far, `listeners` included."""
        extra: list[Listener] = []
        try:
            for listener_config in self.config.listener:
                listener = Listener(listener_config)
                extra.append(listener)
                if self.http is not None and listener_config.type in HTTP_TYPES:
                    self._http_servers[listener] = self.http.server_for(listener_config)
                listener.open()
        except BaseException:
            for listener in extra:
                listener.close()
            for sock in listeners:
                sock.close()
            raise
        self._extra_listeners = extra
        for listener in extra:
            self.addresses.extend(listener.addresses)

    async def _accept(self, listeners: list[socket.socket], nursery: trio.Nursery) -> None:
        with self._listen_scope:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(serve_tcp, listener, self._serve_stream, nursery)
                for extra in self._extra_listeners:
                    http = self._http_servers.get(extra)
                    if http is not None:
                        # HTTP connections end with the accepting: shutdown does not wait on idle keep-alives.
                        accepting.start_soon(extra.serve, http.serve_connection, accepting)
                    else:
                        accepting.start_soon(extra.serve, self._serve_stream, nursery)

    async def _serve_stream(self, stream: ClientStream) -> None:
        """The reader task of one connection."""
        connections = self.connections
        if self.admission.over_connection_limit(len(connections.clients)):
            cap = self.config.limits.max_connections
            log.debug("%s: refused, %d connections open ([limits] max_connections)", stream.remote, cap)
            stream.force_close()
            return
        conn = Connection(self.limits, self.stats)
        if self.commits is not None and self.store is not None:
            conn.on_hold = self.commits.holding.add
            conn.committed_seq = self.store.committed_seq
        await connections.serve(conn, stream, self.admission.new_quota(trio.current_time()))

    # --- what a connection decoded ----------------------------------------------------------------

    def _handle_events(self, client: ClientConnection) -> None:
        """Hop 2 to hop 3 of the publish path: each event of the connection machine to its owner."""
        conn = client.conn
        now = trio.current_time()
        fanout = self.fanout
        while True:
            event = conn.next_event(now)
            if event is None:
                return
            if isinstance(event, MessageReceived):
                message = event.message
                wait = 0
                if self.admission.screening_publish and (
                    refused := self.admission.screen_publish(client, message.topic)
                ):
                    reason = refused
                else:
                    reason, wait = fanout.publish(message, conn.session)
                if message.qos:
                    # Acknowledged once everything this message wrote to the store is on disk.
                    conn.acknowledge(message.qos, event.packet_id, reason, wait)
            elif isinstance(event, SubscribeReceived):
                self.subscriptions.subscribe(client, event.subscribe)
            elif isinstance(event, UnsubscribeReceived):
                self.subscriptions.unsubscribe(client, event.unsubscribe)
            elif isinstance(event, ConnectReceived):
                self._on_connect(client, event.connect)
            elif isinstance(event, DisconnectReceived):
                self.session_manager.disconnect(client, event.disconnect)
                client.close()
            elif isinstance(event, ProtocolViolation):
                self._on_violation(client, event.error)

    def _on_connect(self, client: ClientConnection, connect: Connect) -> None:
        admission = self.admission
        if admission.auth is not None and not client.admitted and not admission.admit(client, connect):
            return  # the reader finishes the admission (`_after_read`)
        decision = decide_connect(connect, self.features, _new_client_id)
        decision = within_client_maximum(connect, decision, self.limits, self.features)
        if isinstance(decision, ConnectRefused):
            if decision.connack is not None:
                client.conn.reject(decision.connack)
            client.close()
            return
        self.session_manager.connect(client, connect, decision)
        admission.remember_user(client)

    async def _after_read(self, client: ClientConnection, received: int) -> None:
        """What a read may have to wait for before the next: a CONNECT's authentication, the rate quota.
        Only this connection's reader waits; the event loop goes on."""
        if client.pending_connect is not None:
            connect = await self.admission.finish(client)
            if connect is not None:
                self._on_connect(client, connect)
                self._handle_events(client)  # the packets that came behind the CONNECT
            elif not client.closing:
                client.close()  # refused: the CONNACK is queued
        await self.admission.throttle(client, received)

    def _on_violation(self, client: ClientConnection, error: ProtocolError) -> None:
        conn = client.conn
        log.info(
            "client %s: %s (0x%02X), closing",
            conn.client_id or client.stream.remote,
            error.message,
            error.reason_code,
        )
        refused = answer_violation(error, conn.session is not None, conn.decoder.protocol_level)
        if refused is not None and refused.connack is not None:
            conn.reject(refused.connack)
            client.close()
            return
        client.close(error.reason_code, error.message)

    def _connection_lost(self, client: ClientConnection) -> None:
        self.session_manager.connection_lost(client)

    # --- bridges -----------------------------------------------------------------------------------

    def _publish_from_bridge(self, message: Message) -> int:
        """Route a message an in rule brought; returns the store batch to wait for (0: none)."""
        return self.fanout.publish(message, None)[1]

    async def _wait_committed(self, batch: int) -> None:
        if self.commits is not None:
            await self.commits.wait_committed(batch)

    def _publish_state(self, topic: str, value: str) -> None:
        self.fanout.publish(Message(topic, value.encode(), 0, True), None)


def _new_client_id() -> str:
    return "edgebus-" + secrets.token_hex(8)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sockname(listener: socket.socket) -> tuple[str, int]:
    name = listener.getsockname()
    return (str(name[0]), int(name[1]))

"""The composition root: builds the broker's parts from the config, starts and stops them, and turns
what a connection decoded into calls on the part that owns it."""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
from collections.abc import Callable, ValuesView
from typing import TYPE_CHECKING

import trio

from edgebus import __version__
from edgebus.auth import AclError, PasswordFileError
from edgebus.bridge.runner import Bridge
from edgebus.bridge.sinks import sink_class
from edgebus.config import BridgeConfig, Config, MqttConfig
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
from edgebus.http.view import ListenerInfo
from edgebus.protocol.enums import ReasonCode
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import Connect
from edgebus.server import keepalive
from edgebus.server.admission import Admission
from edgebus.server.bridges import BridgeSet
from edgebus.server.commits import Commits
from edgebus.server.config_file import reread
from edgebus.server.connection import ClientConnection, Connections
from edgebus.server.fanout import Fanout
from edgebus.server.listeners import ListenerSet
from edgebus.server.reload import ReloadRefused, ReloadReport, changed_keys, running_config
from edgebus.server.sessions import Sessions
from edgebus.server.subscriptions import Subscriptions
from edgebus.server.sys_topics import SysTopics
from edgebus.server.timers import Timers
from edgebus.store import Store
from edgebus.transport.stream import ClientStream

if TYPE_CHECKING:
    from edgebus.http.service import HttpService

log = logging.getLogger("edgebus.server.broker")

#: How long shutdown waits for connections to take their DISCONNECT before cutting them.
SHUTDOWN_GRACE_S = 3.0


class Broker:
    """An MQTT 3.1.1 and 5.0 broker. ``await nursery.start(broker.serve)`` returns the bound
    addresses; `shutdown` ends it gracefully."""

    def __init__(
        self, config: Config | None = None, read_config: Callable[[], Config] | None = None
    ) -> None:
        self.config = config = config or Config()
        #: What a reload applies (SIGHUP, the HTTP API): the command line's reader of the config file, or
        #: the file the running configuration came from (`reread`). Raises ConfigError / StartupProblems.
        self.read_config = read_config or (lambda: reread(self.config))
        self._owns_logging = read_config is not None  # `edgebus serve`: server.log_level is the process's
        mqtt = config.mqtt
        self.limits = _connection_limits(mqtt)
        self.features = _server_features(mqtt)
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
        self.bridge_set = BridgeSet(self._make_bridge, config.bridge, store)
        self.bridges = (
            self.bridge_set.active
        )  # shared with fanout, commits and $SYS; a reload changes it in place
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
        self.sys_topics = SysTopics(fanout, self.bridges, store, stats, config.sys.interval)
        self.commits = (
            None
            if store is None
            else Commits(store, self.bridges, fanout, config.storage.max_bytes, config.queue.overflow)
        )
        self._shutdown_requested = trio.Event()
        self._listen_scope = trio.CancelScope()
        # The API, metrics and status page of http / https listeners: made with the first of them, so a
        # gateway without one never imports edgebus.http (~1.5 MB of RSS).
        self.http: HttpService | None = None
        self._root: trio.Nursery | None = None
        self.listener_set = ListenerSet(self.http_service)
        self._reload_lock = trio.Lock()

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
        return self.listener_set.listener_addresses

    def reload_security(self) -> None:
        """Reread the password and ACL files; see `Admission.reload_security`."""
        self.admission.reload_security()

    async def reload_config(self, new_config: Config) -> ReloadReport:
        """Run on ``new_config`` from now on (SIGHUP, the HTTP API's reload): ``new_config`` is a loaded,
        valid configuration (`edgebus.config.load_config`). Every open connection stays.

        Applied: [security] (password and ACL files re-read), [limits], [mqtt] and [queue] (new connections
        and new messages meet them), [storage] max_bytes, [sys] interval, listeners (server.listen and
        [[listener]]: a removed one stops accepting, its connections stay; TLS files re-read) and bridges
        (added, removed or changed, by name; outbox rows are never lost: a changed bridge keeps its outbox,
        a removed one's is kept for a bridge of that name configured later). Not applied, listed in the
        report's ``needs_restart``: server.data_dir, server.gateway_id, storage.durability. server.log_level
        is the caller's (the process's logging). Raises ReloadRefused, with nothing changed, when a
        password, ACL, TLS or token file cannot be used or a bridge cannot be built (a missing package)."""
        async with self._reload_lock:
            config, needs_restart = running_config(self.config, new_config)
            report = ReloadReport(new_config.source, changed_keys(self.config, config), needs_restart)
            # Everything that can fail, before anything changes.
            try:
                listener_plan = self.listener_set.plan(config)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ReloadRefused([f"listener: {exc}"]) from None
            try:
                bridge_plan = self.bridge_set.plan(config.bridge)
                self.admission.reload_security(config)
            except RuntimeError as exc:
                self.listener_set.discard(listener_plan)
                raise ReloadRefused([f"bridge: {exc}"]) from None
            except (PasswordFileError, AclError) as exc:
                self.listener_set.discard(listener_plan)
                raise ReloadRefused([str(exc)]) from None
            self.config = config
            self._apply_settings(config)
            await self.bridge_set.apply(bridge_plan)
            changes, errors = await self.listener_set.apply(listener_plan)
            self.addresses = self.listener_set.addresses
            report.changed += bridge_plan.changes + changes
            report.errors += errors
            return report

    async def reload_from_file(self) -> ReloadReport:
        """`reload_config` with the configuration file re-read and checked as at start (`read_config`):
        what SIGHUP and the HTTP API's reload do (under `edgebus serve`, server.log_level too). Raises
        ConfigError (file:line) or StartupProblems when the file cannot be used, ReloadRefused as
        `reload_config`; nothing has changed then."""
        report = await self.reload_config(self.read_config())
        if self._owns_logging:
            logging.getLogger().setLevel(self.config.server.log_level.upper())
        return report

    def _apply_settings(self, config: Config) -> None:
        """[mqtt], [queue], [limits], [storage] max_bytes and [sys]: to the parts that hold them. Each open
        connection keeps the limits its CONNACK announced; queues keep what they hold."""
        self.limits = _connection_limits(config.mqtt)
        self.features = _server_features(config.mqtt)
        session_manager = self.session_manager
        session_manager.config = config
        session_manager.limits = self.limits
        session_manager.features = self.features
        self.subscriptions.max_qos = config.mqtt.max_qos
        self.subscriptions.features = self.features
        self.connections.connect_timeout = config.limits.connect_timeout
        queue = config.queue
        self.fanout.overflow = queue.overflow
        for session in self.sessions.values():
            outbox = session.outbox
            outbox.max_messages, outbox.max_bytes, outbox.policy = (
                queue.max_messages,
                queue.max_bytes,
                queue.overflow,
            )
        if self.commits is not None:
            self.commits.budget = config.storage.max_bytes
            self.commits.overflow = queue.overflow
        self.sys_topics.set_interval(config.sys.interval)

    def sys_values(self) -> dict[str, str]:
        """The $SYS topics and their current values."""
        return self.sys_topics.values()

    def uptime_seconds(self) -> float:
        return self.sys_topics.uptime_seconds()

    def password_entries(self) -> dict[str, str] | None:
        """The password file's entries as last read (at start, SIGHUP); None without a password file."""
        auth = self.admission.auth
        return auth.passwords if auth is not None else None

    def http_service(self) -> HttpService:
        """The service behind every http / https listener, made with the first of them."""
        if self.http is None:
            from edgebus.http.service import HttpService

            self.http = HttpService(self)
            if self._root is not None:  # added by a reload: its throughput history starts now
                self._root.start_soon(self.http.sample_forever)
        return self.http

    def listener_info(self) -> list[ListenerInfo]:
        """Each running listener's open and refused connections, server.listen first."""
        return self.listener_set.info()

    # --- lifecycle -------------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # TLS contexts are built here too, so a bad certificate stops the start.
        self.listener_set.open(self.config)
        if self.store is not None:
            try:
                state = await trio.to_thread.run_sync(self.store.load)
            except BaseException:
                for accepting in self.listener_set.running.values():
                    accepting.listener.close()
                raise
            self.session_manager.restore(state)
            self.bridge_set.restore(state.bridge_outboxes, state.bridge_cursors, state.epoch)
        else:
            # Nothing survives a restart: every run is a new epoch.
            self.bridge_set.restore({}, {}, secrets.token_hex(4))
        self.addresses = self.listener_set.addresses
        log.info("edgebus %s listening on %s", __version__, ", ".join(f"{h}:{p}" for h, p in self.addresses))
        connections = self.connections
        try:
            async with trio.open_nursery() as root:
                root.start_soon(self.timers.run)
                root.start_soon(keepalive.sweep_forever, connections)
                if self.store is not None and self.commits is not None:
                    root.start_soon(self.store.commit_forever, self.commits.on_commit)
                root.start_soon(self.sys_topics.publish_forever)
                self.bridge_set.start_all(root)
                self._root = root
                if self.http is not None:
                    root.start_soon(self.http.sample_forever)
                root.start_soon(connections.flush_forever)
                async with trio.open_nursery() as tasks:
                    connections.start_writers_in(tasks)  # the connections' tasks end with this nursery
                    tasks.start_soon(connections.poll_forever)
                    tasks.start_soon(self._accept, tasks)
                    task_status.started(self.addresses)
                    await self._shutdown_requested.wait()
                    log.info("shutting down: closing %d connections", len(connections.clients))
                    self._listen_scope.cancel()
                    for client in list(connections.clients.values()):
                        client.close(ReasonCode.SERVER_SHUTTING_DOWN)  # [MQTT-3.14.2-1] 0x8B
                    connections.stop_polling()  # it ends once its connections have drained
                    tasks.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S
                connections.stop_writers()
                root.cancel_scope.cancel()
        finally:
            self._root = None
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

    async def _accept(self, nursery: trio.Nursery) -> None:
        with self._listen_scope:
            await self.listener_set.serve(self._serve_stream, nursery)

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
                settles = False
                if self.admission.screening_publish and (
                    refused := self.admission.screen_publish(client, message.topic)
                ):
                    reason = refused
                else:
                    reason, wait, settles = fanout.publish(message, conn.session)
                if message.qos:
                    # Acknowledged once everything this message wrote to the store is on disk, or
                    # (QoS 1) once the stored deliveries it wrote alone are all finished.
                    conn.acknowledge(
                        message.qos, event.packet_id, reason, wait, message if settles and wait else None
                    )
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
        decision = within_client_maximum(connect, decision, client.conn.limits, self.features)
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

    def _make_bridge(self, config: BridgeConfig) -> Bridge:
        gateway_id = self.config.server.gateway_id or socket.gethostname()
        return Bridge(
            config,
            gateway_id,
            self.store,
            self._publish_from_bridge,
            self._wait_committed,
            self._publish_state,
            sink_class(config.kind),
        )

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


def _connection_limits(mqtt: MqttConfig) -> ConnectionLimits:
    return ConnectionLimits(
        max_packet_size=mqtt.max_packet_size,
        receive_maximum=mqtt.receive_maximum,
        max_inflight=mqtt.max_inflight,
        topic_alias_maximum=mqtt.topic_alias_maximum,
        max_qos=mqtt.max_qos,
        retain_available=mqtt.retain_available,
    )


def _server_features(mqtt: MqttConfig) -> ServerFeatures:
    return ServerFeatures(
        max_keep_alive=mqtt.max_keep_alive,
        max_session_expiry_interval=mqtt.max_session_expiry_interval,
        wildcard_subscriptions=mqtt.wildcard_subscriptions,
        subscription_identifiers=mqtt.subscription_identifiers,
        shared_subscriptions=mqtt.shared_subscriptions,
    )

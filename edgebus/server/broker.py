"""The trio core: listeners, one reader and one writer task per connection, routing, timers, $SYS."""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from edgebus import __version__
from edgebus.auth import (
    Access,
    Acl,
    Authenticator,
    FailureTracker,
    NeedsHash,
    Verdict,
    read_acl_file,
    read_password_file,
)
from edgebus.bridge.runner import NOT_ROUTED, Bridge
from edgebus.config import Config
from edgebus.core.flows import FlowState
from edgebus.core.limits import RateQuota
from edgebus.core.message import Message, forwarded_properties
from edgebus.core.outbox import Delivery, Outbox
from edgebus.core.router import RetainedIndex, Router, SharedGroup
from edgebus.core.server import Connection, ConnectionState
from edgebus.core.server_events import (
    ConnectionLimits,
    ConnectReceived,
    DisconnectReceived,
    MessageReceived,
    ProtocolViolation,
    SubscribeReceived,
    UnsubscribeReceived,
)
from edgebus.core.session import SESSION_NEVER_EXPIRES, Inflight, Session, SubscriptionOptions
from edgebus.core.stats import Stats
from edgebus.core.topics import is_valid_topic_filter, is_valid_topic_name, parse_shared
from edgebus.protocol.encoder import encode
from edgebus.protocol.enums import MQTT_5, ConnectReturnCode, PacketType, ReasonCode, RetainHandling
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Properties,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)
from edgebus.protocol.properties import read_properties
from edgebus.store import Store, StoredSession, StoredState
from edgebus.store.journal import StoreJournal, property_block, wall_time
from edgebus.transport.listener import ClientStream, Listener, peer_identity
from edgebus.transport.tcp import open_listening_sockets, serve_tcp

log = logging.getLogger("edgebus.server.broker")

#: Bytes asked of one read. Small on purpose: a read's packets are routed before anything else
#: runs, so with 4 publishers reading 64 KiB each a round ingested ~3,000 messages while a
#: subscriber's queue holds 1,000, and fan-in dropped half (80k msg/s delivered); 8 KiB
#: interleaves ingest with the flusher and delivered 152k msg/s with no loss (bench fanin-q0).
RECEIVE_BYTES = 8192
#: Password hashes computed at once in worker threads (PBKDF2 takes ~50-100 ms each).
HASHING_THREADS = 2
#: Most remembered read-ACL decisions (client, topic) before the memo is cleared.
READ_ACL_MEMO_ENTRIES = 65536
#: How long a closing connection may take to flush its last packets (e.g. a DISCONNECT).
CLOSE_FLUSH_TIMEOUT_S = 2.0
#: How often keep-alive deadlines are checked.
KEEP_ALIVE_SWEEP_S = 0.5
#: Most bytes one connection is given per flush round (a reconnect with a long queue must not
#: build one huge buffer nor hold up the others).
FLUSH_BATCH_BYTES = 256 * 1024
#: How often (at most) the store's size is compared with [storage] max_bytes.
STORE_SIZE_CHECK_S = 0.5
#: How long shutdown waits for connections to take their DISCONNECT before cutting them.
SHUTDOWN_GRACE_S = 3.0


class ClientConnection:
    """The trio side of one connection: its stream, how its output gets written, its lifecycle.

    The reader task lives as long as the connection. Output is written by the broker's flusher
    task with one non-blocking send per connection per scheduler round; only when a socket is
    backed up does the connection get a writer task of its own, which ends once it has drained.
    So at any moment exactly one party writes to a stream (no lock), an idle connection costs one
    task, and fan-out to many subscribers costs one task switch per round, not one per subscriber.
    Keep-alive is one sweep over all connections; a close that cannot flush in time closes the
    socket, which wakes any task waiting on it.
    """

    __slots__ = (
        "_broker",
        "admitted",
        "closing",
        "conn",
        "dirty",
        "last_read",
        "opened",
        "pending",
        "pending_connect",
        "quota",
        "stream",
        "username",
        "will",
        "writer_running",
    )

    def __init__(self, broker: Broker, conn: Connection, stream: ClientStream, now: float) -> None:
        self._broker = broker
        self.opened = now  # the CONNECT deadline counts from here, however slowly bytes trickle in
        # Security (issue 4): the authenticated user name, a CONNECT waiting for its verdict (password
        # hashing, failure delay), and the read quota; all unused when [security]/[limits] are off.
        self.admitted = False
        self.username: str | None = None
        self.pending_connect: tuple[Connect, Verdict | NeedsHash, str | None] | None = None
        self.quota = broker.new_quota(now)
        self.conn = conn
        self.stream = stream
        self.last_read = now
        self.writer_running = False  # a writer task owns the stream's output
        self.dirty = False  # queued for the flusher's next round
        self.pending = b""  # bytes a partial send left for the writer task
        self.closing = False
        # The Will Message to publish if this connection ends without a normal DISCONNECT.
        self.will: Will | None = None
        conn.wake = self.wake

    def wake(self) -> None:
        """There is output: queue this connection for the flusher (no allocation, no lock)."""
        if not self.dirty and not self.writer_running:
            self.dirty = True
            self._broker._mark_dirty(self)


@dataclass(slots=True)
class _Timer:
    deadline: float
    seq: int
    action: Callable[[], None]
    cancelled: bool = False

    def __lt__(self, other: _Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


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
        self.stats = Stats()
        durability = config.storage.durability
        # No store at all with durability "memory": nothing is written, nothing survives a restart.
        self.store = None if durability == "memory" else Store(config.server.data_dir, durability)
        self.journal = None if self.store is None else StoreJournal(self.store)
        self._holding: set[Connection] = set()  # connections with replies waiting for a commit
        self.router: Router[SubscriptionOptions] = Router()
        self.retained: RetainedIndex[Message] = RetainedIndex()
        self.sessions: dict[str, Session] = {}
        self.clients: set[ClientConnection] = set()
        self.addresses: list[tuple[str, int]] = []
        self.started_at = time.monotonic()
        self._timers: list[_Timer] = []
        self._timer_seq = itertools.count()
        self._timer_wakeup = trio.Event()
        self._session_expiry: dict[str, _Timer] = {}
        self._delayed_wills: dict[str, tuple[_Timer, Will, int]] = {}
        self._shutdown_requested = trio.Event()
        self._commit_wait = 0  # the store batch the message being routed was written in
        self.store_full = False  # the store reached [storage] max_bytes
        self._next_size_check = 0.0
        self._listen_scope = trio.CancelScope()
        self._connections: trio.Nursery
        self._connections_open = False
        self._dirty: list[ClientConnection] = []
        self._parked_flusher: trio.lowlevel.Task | None = None
        # Security and limits (issue 4). Each is None / False when not configured, so that the
        # PUBLISH path pays one attribute check.
        self.auth: Authenticator | None = None
        self.acl: Acl | None = None
        self._screening_publish = False
        self._screening_subscribe = False
        self._usernames: dict[str, str | None] = {}  # client id -> user name, for read checks
        self._read_memo: dict[tuple[str, str], bool] = {}
        sec = config.security
        self._auth_failures = FailureTracker(sec.auth_failure_delay, sec.auth_failure_delay_max)
        self._hash_limiter = trio.CapacityLimiter(HASHING_THREADS)
        self._extra_listeners: list[Listener] = []
        self.refused_connections = 0
        self.reload_security()
        # Upstream bridges (issue 6): each gets every routed message (`Bridge.offer`) and runs in the root
        # nursery. Commit waiters: (store batch, event) of in-rule messages waiting to be on disk.
        gateway_id = config.server.gateway_id or socket.gethostname()
        self.bridges = [
            Bridge(
                bridge,
                gateway_id,
                self.store,
                self._publish_from_bridge,
                self.wait_committed,
                self._publish_state,
            )
            for bridge in config.bridge
        ]
        self._commit_waiters: list[tuple[int, trio.Event]] = []

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
        if self.store is not None:
            try:
                state = await trio.to_thread.run_sync(self.store.load)
            except BaseException:
                for listener in listeners:
                    listener.close()
                raise
            self._restore(state)
        else:
            epoch = secrets.token_hex(4)  # nothing survives a restart: every run is a new epoch
            for bridge in self.bridges:
                bridge.restore([], 0, epoch)
        self._open_extra_listeners(listeners)
        log.info("edgebus %s listening on %s", __version__, ", ".join(f"{h}:{p}" for h, p in self.addresses))
        try:
            async with trio.open_nursery() as root:
                root.start_soon(self._run_timers)
                root.start_soon(self._sweep_connections)
                root.start_soon(self._flush_forever)
                if self.store is not None:
                    root.start_soon(self.store.commit_forever, self._on_commit)
                if self.config.sys.interval > 0:
                    root.start_soon(self._publish_sys_forever, self.config.sys.interval)
                for bridge in self.bridges:
                    root.start_soon(bridge.run)
                async with trio.open_nursery() as connections:
                    self._connections = connections
                    self._connections_open = True
                    connections.start_soon(self._accept, listeners, connections)
                    task_status.started(self.addresses)
                    await self._shutdown_requested.wait()
                    log.info("shutting down: closing %d connections", len(self.clients))
                    self._listen_scope.cancel()
                    for client in list(self.clients):
                        self._close(client, ReasonCode.SERVER_SHUTTING_DOWN)  # [MQTT-3.14.2-1] 0x8B
                    connections.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S
                self._connections_open = False
                root.cancel_scope.cancel()
        finally:
            # Cancelled from outside, or connections that outlived the grace time: close them.
            self._connections_open = False
            for client in list(self.clients):
                client.stream.force_close()
            self.clients.clear()
            if self.store is not None:
                # What was journaled but not yet committed (nothing acknowledged waits on it).
                self.store.finish()
        log.info("edgebus stopped")

    def shutdown(self) -> None:
        """Stop accepting, send v5 clients DISCONNECT 0x8B, close every connection, and return
        from `serve`."""
        self._shutdown_requested.set()

    async def _accept(self, listeners: list[socket.socket], nursery: trio.Nursery) -> None:
        with self._listen_scope:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(serve_tcp, listener, self._serve_stream, nursery)
                for extra in self._extra_listeners:
                    accepting.start_soon(extra.serve, self._serve_stream, nursery)

    # --- one connection ----------------------------------------------------------------------------

    async def _serve_stream(self, stream: ClientStream) -> None:
        """The reader task of one connection."""
        if self._over_connection_limit(stream):
            return
        conn = Connection(self.limits, self.stats)
        conn.on_hold = self._holding.add
        if self.store is not None:
            conn.committed_seq = self.store.committed_seq
        client = ClientConnection(self, conn, stream, trio.current_time())
        self.clients.add(client)
        try:
            await self._read_loop(client)
        except Exception:
            log.exception("connection %s (%s) failed", stream.remote, client.conn.client_id)
        finally:
            self._close(client)

    async def _read_loop(self, client: ClientConnection) -> None:
        conn = client.conn
        stream = client.stream
        stats = self.stats
        while not client.closing:
            try:
                data = await stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            client.last_read = trio.current_time()
            stats.bytes_received += len(data)
            conn.receive_data(data if isinstance(data, bytes) else bytes(data))
            self._handle_events(client)
            if not data:
                return
            if client.pending_connect is not None or client.quota is not None:
                await self._after_read(client, len(data))  # authentication, rate quota

    def _mark_dirty(self, client: ClientConnection) -> None:
        self._dirty.append(client)
        task = self._parked_flusher
        if task is not None:
            self._parked_flusher = None
            trio.lowlevel.reschedule(task)

    def _abort_flusher_park(self, _: object) -> trio.lowlevel.Abort:
        self._parked_flusher = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _flush_forever(self) -> None:
        """Write every connection that has output: one `send` per connection per round, with
        everything it has ready [ARCHITECTURE hop 5]. A socket that cannot take it all gets a
        writer task for the rest."""
        while True:
            if not self._dirty:
                self._parked_flusher = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort_flusher_park)
            dirty, self._dirty = self._dirty, []
            now = trio.current_time()
            for client in dirty:
                client.dirty = False
                if client.writer_running:
                    continue
                if client.closing:
                    self._start_writer(client)  # flushes the last packets, then closes
                    continue
                try:
                    self._flush_one(client, now)
                except Exception:
                    # One connection's failure must not stop the writing for all the others.
                    log.exception("flushing %s (%s) failed", client.stream.remote, client.conn.client_id)
                    self._close(client)
            # Let readers run before the next round, so that it carries what they routed.
            await trio.lowlevel.checkpoint()

    def _flush_one(self, client: ClientConnection, now: float) -> None:
        conn = client.conn
        chunks = conn.take_output(now, FLUSH_BATCH_BYTES)
        if not chunks:
            return
        data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
        self.stats.bytes_sent += len(data)
        try:
            sent = client.stream.send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._close(client)
            return
        if sent < len(data):
            client.pending = data[sent:]
            self._start_writer(client)
        elif conn.has_output():
            client.wake()  # more than one batch: next round, after the others

    def _start_writer(self, client: ClientConnection) -> None:
        client.writer_running = True
        if self._connections_open:
            self._connections.start_soon(self._write_loop, client)
        else:
            client.stream.force_close()

    async def _write_loop(self, client: ClientConnection) -> None:
        """A connection's own writer, while its socket is backed up or it is closing."""
        conn = client.conn
        stream = client.stream
        stats = self.stats
        try:
            if client.pending:
                data, client.pending = client.pending, b""
                await stream.send_all(data)
            while True:
                chunks = conn.take_output(trio.current_time(), FLUSH_BATCH_BYTES)
                if chunks:
                    data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
                    stats.bytes_sent += len(data)
                    await stream.send_all(data)
                elif client.closing:
                    break
                else:
                    client.writer_running = False  # drained: the flusher takes over again
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("writer of %s (%s) failed", stream.remote, conn.client_id)
        client.writer_running = False
        self._close(client)
        self.clients.discard(client)
        stream.force_close()  # wakes the reader if it still waits

    def _close(
        self, client: ClientConnection, reason_code: ReasonCode | None = None, reason: str = ""
    ) -> None:
        """End a connection: a DISCONNECT with the reason code first on v5 [MQTT-4.13.2-1], the
        writer flushes what is queued, and the session is detached (will, expiry) exactly once."""
        if client.closing:
            return
        conn = client.conn
        if reason_code is not None and conn.protocol_level == MQTT_5 and conn.session is not None:
            # Only after a CONNACK: before it, the answer is a CONNACK with the reason code.
            props = Properties(reason_string=reason) if reason else Properties()
            conn.send(Disconnect(reason_code, props))
        conn.close()
        client.closing = True
        client.wake()
        # A peer that does not read must not hold the connection open: cut it after a grace time.
        self._schedule(trio.current_time() + CLOSE_FLUSH_TIMEOUT_S, client.stream.force_close)
        try:
            self._connection_lost(client)
        except Exception:
            log.exception("cleanup of %s failed", conn.client_id)

    async def _sweep_connections(self) -> None:
        """Close connections that sent nothing for 1.5 x Keep Alive [MQTT-3.1.2-24] (0x8D on v5),
        or no CONNECT within [limits] connect_timeout. One pass over all connections, twice a second."""
        connect_timeout = self.config.limits.connect_timeout
        while True:
            await trio.sleep(KEEP_ALIVE_SWEEP_S)
            now = trio.current_time()
            for client in list(self.clients):
                conn = client.conn
                if client.closing:
                    continue
                if conn.state is ConnectionState.AWAIT_CONNECT:
                    if now - client.opened > connect_timeout:  # slowloris: counted from the open
                        log.info("%s: no CONNECT within %g s", client.stream.remote, connect_timeout)
                        self._close(client)
                    continue
                timeout = conn.keep_alive_timeout
                if timeout is not None and now - client.last_read > timeout:
                    log.info("client %s: keep-alive timeout", conn.client_id)
                    self._close(client, ReasonCode.KEEP_ALIVE_TIMEOUT)

    def _handle_events(self, client: ClientConnection) -> None:
        conn = client.conn
        now = trio.current_time()
        while True:
            event = conn.next_event(now)
            if event is None:
                return
            if isinstance(event, MessageReceived):
                message = event.message
                self._commit_wait = 0
                if self._screening_publish:  # ACL, topic limits, message quota
                    reason = self._screened_publish(client, message)
                else:
                    reason = self.publish(message, client.conn.session)
                if message.qos:
                    # Acknowledged once everything this message wrote to the store is on disk.
                    conn.acknowledge(message.qos, event.packet_id, reason, self._commit_wait)
            elif isinstance(event, SubscribeReceived):
                self._on_subscribe(client, event.subscribe)
            elif isinstance(event, UnsubscribeReceived):
                self._on_unsubscribe(client, event.unsubscribe)
            elif isinstance(event, ConnectReceived):
                self._on_connect(client, event.connect)
            elif isinstance(event, DisconnectReceived):
                self._on_disconnect(client, event.disconnect)
            elif isinstance(event, ProtocolViolation):
                self._on_violation(client, event.error)

    def _on_violation(self, client: ClientConnection, error: ProtocolError) -> None:
        conn = client.conn
        log.info(
            "client %s: %s (0x%02X), closing",
            conn.client_id or client.stream.remote,
            error.message,
            error.reason_code,
        )
        if error.reason_code is ReasonCode.UNSUPPORTED_PROTOCOL_VERSION and conn.session is None:
            # [MQTT-3.1.2-2]: answer CONNACK 0x01 (3.1.1) and close; a v5-or-later level gets 0x84.
            level = conn.decoder.protocol_level or 4
            if level >= MQTT_5:
                conn.reject(encode(ConnAck(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION), MQTT_5))
            else:
                conn.reject(encode(ConnAck(False, ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION), 4))
            self._close(client)
            return
        if conn.session is None and conn.decoder.protocol_level == MQTT_5:
            # A bad packet before the CONNACK: a v5 client is told why in a CONNACK [MQTT-4.13.1-1].
            conn.reject(encode(ConnAck(False, error.reason_code), MQTT_5))
            self._close(client)
            return
        self._close(client, error.reason_code, error.message)

    # --- CONNECT ------------------------------------------------------------------------------------

    def _on_connect(self, client: ClientConnection, connect: Connect) -> None:
        if self.auth is not None and not client.admitted:
            self._admit(client, connect)  # comes back here once the client is authenticated
            return
        conn = client.conn
        level = connect.protocol_level
        props = connect.properties
        cfg = self.config.mqtt
        v5 = level == MQTT_5
        if v5 and props.authentication_method is not None:
            # No enhanced authentication method is configured [MQTT-4.12.0-1]: 0x8C.
            conn.reject(encode(ConnAck(False, ReasonCode.BAD_AUTHENTICATION_METHOD), level))
            self._close(client)
            return
        will = connect.will
        if will is not None and not is_valid_topic_name(will.topic):
            # Wildcards (or nothing) in the Will Topic: not a Topic Name [MQTT-4.7.1-1], [MQTT-4.7.3-1].
            if v5:
                conn.reject(encode(ConnAck(False, ReasonCode.TOPIC_NAME_INVALID), level))
            self._close(client)
            return
        client_id = connect.client_id
        assigned: str | None = None
        if not client_id:
            if not v5 and not connect.clean_start:
                # [MQTT-3.1.3-8]: a zero-length id needs Clean Session 1 on 3.1.1; else 0x02.
                conn.reject(encode(ConnAck(False, ConnectReturnCode.IDENTIFIER_REJECTED), level))
                self._close(client)
                return
            client_id = "edgebus-" + secrets.token_hex(8)  # [MQTT-3.1.3-6]
            if v5:
                assigned = client_id  # [MQTT-3.2.2-16]
        if v5:
            expiry = min(props.session_expiry_interval or 0, cfg.max_session_expiry_interval)
        else:
            expiry = 0 if connect.clean_start else SESSION_NEVER_EXPIRES
        now = trio.current_time()
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            self._take_over(session, connect.clean_start)
        # A will delayed from an earlier connection of this client id: a new connection before
        # the delay passes cancels it [MQTT-3.1.3-9], unless Clean Start ends the session first.
        pending = self._delayed_wills.pop(client_id, None)
        if pending is not None:
            pending[0].cancelled = True
            if self.store is not None:
                self.store.op("will_gone", client_id)
            if connect.clean_start:
                self._publish_will(pending[1], client_id, pending[2], now)
        expiry_timer = self._session_expiry.pop(client_id, None)
        if expiry_timer is not None:
            expiry_timer.cancelled = True
        if session is not None and connect.clean_start:
            self._discard_session(session)  # [MQTT-3.1.2-4]
            session = None
        session_present = session is not None  # [MQTT-3.2.2-2], [MQTT-3.2.2-3]
        if session is None:
            session = self._new_session(client_id)
        session.expiry_interval = expiry
        self._journal_session(session, level)
        keep_alive = connect.keep_alive
        server_keep_alive: int | None = None
        if v5 and keep_alive > cfg.max_keep_alive:
            keep_alive = server_keep_alive = cfg.max_keep_alive  # [MQTT-3.2.2-21]
        conn.keep_alive = keep_alive
        if v5:
            connack_props = Properties(
                session_expiry_interval=expiry if expiry != (props.session_expiry_interval or 0) else None,
                assigned_client_identifier=assigned,
                server_keep_alive=server_keep_alive,
                receive_maximum=cfg.receive_maximum if cfg.receive_maximum != 65535 else None,
                maximum_qos=cfg.max_qos if cfg.max_qos < 2 else None,
                retain_available=None if cfg.retain_available else 0,
                maximum_packet_size=cfg.max_packet_size if cfg.max_packet_size < 268_435_460 else None,
                topic_alias_maximum=cfg.topic_alias_maximum or None,
                wildcard_subscription_available=None if cfg.wildcard_subscriptions else 0,
                subscription_identifier_available=None if cfg.subscription_identifiers else 0,
                shared_subscription_available=None if cfg.shared_subscriptions else 0,
            )
            connack = ConnAck(session_present, ReasonCode.SUCCESS, connack_props)
        else:
            connack = ConnAck(session_present, ConnectReturnCode.ACCEPTED)
        conn.accept(session, encode(connack, level), connect)
        client.will = connect.will
        self.stats.clients_total += 1
        log.debug("client %s connected (v%d, session present %s)", client_id, level, session_present)

    def _new_session(self, client_id: str) -> Session:
        queue = self.config.queue
        session = Session(client_id, Outbox(queue.max_messages, queue.max_bytes, queue.overflow, self.stats))
        self.sessions[client_id] = session
        return session

    def _journal_session(self, session: Session, protocol_level: int) -> None:
        """A session that outlives its connection is kept in the store; one that ends with it is not."""
        journal = self.journal
        if journal is None:
            return
        if session.expiry_interval == 0:
            if session.journal is not None:
                journal.session_gone(session)
                session.journal = None
                session.outbox.on_discard = None
            return
        session.journal = journal
        session.outbox.on_discard = lambda delivery: journal.delivery_finished(session, delivery)
        journal.session_saved(session, protocol_level)

    def _take_over(self, session: Session, clean_start: bool) -> None:
        """A second connection with the same client id: the first is closed with 0x8E
        [MQTT-3.1.4-3]; its will goes out now unless the delay defers it past the new connection."""
        old_conn = session.connection
        assert old_conn is not None
        old = next((c for c in self.clients if c.conn is old_conn), None)
        session.connection = None
        if old is None:
            return
        will, old.will = old.will, None
        if will is not None:
            delay = will.properties.will_delay_interval or 0 if old_conn.protocol_level == MQTT_5 else 0
            if delay == 0 or clean_start:
                self._publish_will(will, session.client_id, old_conn.protocol_level, trio.current_time())
        self._close(old, ReasonCode.SESSION_TAKEN_OVER)

    def _on_disconnect(self, client: ClientConnection, disconnect: Disconnect) -> None:
        conn = client.conn
        session = conn.session
        if disconnect.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
            client.will = None  # a normal DISCONNECT discards the will [MQTT-3.14.4-3]
        expiry = disconnect.properties.session_expiry_interval
        if session is not None and expiry is not None and conn.protocol_level == MQTT_5:
            session.expiry_interval = min(expiry, self.config.mqtt.max_session_expiry_interval)
            self._journal_session(session, conn.protocol_level)
        self._close(client)

    def _connection_lost(self, client: ClientConnection) -> None:
        conn = client.conn
        session = conn.session
        if session is None or session.connection is not conn:
            return  # never accepted, or taken over by a newer connection
        session.connection = None
        if session.journal is not None and self.journal is not None:
            self.journal.session_away(session)
        now = trio.current_time()
        will = client.will
        client.will = None
        if will is not None:
            delay = (will.properties.will_delay_interval or 0) if conn.protocol_level == MQTT_5 else 0
            delay = min(delay, session.expiry_interval)  # the session ending sends it too [MQTT-3.1.3-9]
            if delay <= 0:
                self._publish_will(will, session.client_id, conn.protocol_level, now)
            else:
                cid = session.client_id
                level = conn.protocol_level
                timer = self._schedule(now + delay, lambda: self._fire_delayed_will(cid))
                self._delayed_wills[cid] = (timer, will, level)
                if self.store is not None:
                    self.store.op(
                        "will",
                        cid,
                        will.topic,
                        will.payload,
                        will.qos,
                        int(will.retain),
                        property_block(will.properties) if level == MQTT_5 else None,
                        level,
                        time.time() + delay,
                    )
        self._redistribute_shared(session)
        if session.expiry_interval == 0:
            self._discard_session(session)
        elif session.expiry_interval != SESSION_NEVER_EXPIRES:
            cid = session.client_id
            self._session_expiry[cid] = self._schedule(
                now + session.expiry_interval, lambda: self._expire_session(cid)
            )

    def _fire_delayed_will(self, client_id: str) -> None:
        pending = self._delayed_wills.pop(client_id, None)
        if self.store is not None:
            self.store.op("will_gone", client_id)
        if pending is not None:
            self._publish_will(pending[1], client_id, pending[2], trio.current_time())

    def _expire_session(self, client_id: str) -> None:
        self._session_expiry.pop(client_id, None)
        session = self.sessions.get(client_id)
        if session is not None and session.connection is None:
            log.debug("session %s expired", client_id)
            self._discard_session(session)

    def _discard_session(self, session: Session) -> None:
        self._redistribute_shared(session)
        if session.journal is not None and self.journal is not None:
            self.journal.session_gone(session)
            session.journal = None
        self.router.unsubscribe_all(session.client_id)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def _publish_will(self, will: Will, client_id: str, level: int, now: float) -> None:
        props = will.properties
        expiry = props.message_expiry_interval if level == MQTT_5 else None
        message = Message(
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            forwarded_properties(props) if level == MQTT_5 else Properties(),
            publisher_id=client_id,
            expiry_deadline=None if expiry is None else now + expiry,
        )
        log.debug("publishing will of %s on %s", client_id, will.topic)
        self.publish(message, None)

    # --- routing ------------------------------------------------------------------------------------

    def publish(self, message: Message, publisher: Session | None) -> int:
        """Route one message to every matching session's outbox. Returns the reason code for the
        publisher's PUBACK/PUBREC: 0x00, 0x10 (no matching subscribers) or 0x97 (a queue refused)."""
        topic = message.topic
        if publisher is not None and topic.startswith("$SYS"):
            return ReasonCode.NOT_AUTHORIZED  # $SYS is the broker's own; clients may not publish there
        bridged = False
        if self.bridges:
            # Into the bridges' outboxes first: a full outbox under "refuse" refuses the whole message
            # (0x97), before anything else happened to it.
            for bridge in self.bridges:
                batch = bridge.offer(message)
                if batch is None:
                    return ReasonCode.QUOTA_EXCEEDED
                if batch != NOT_ROUTED:
                    bridged = True
                    if batch:
                        self._commit_wait = batch
        if message.retain:
            if message.payload:
                self.retained.set(topic, message)  # [MQTT-3.3.1-5]
            else:
                self.retained.clear(topic)  # [MQTT-3.3.1-10], [MQTT-3.3.1-11]
            store = self.store
            if store is not None and not topic.startswith("$SYS"):  # wills too; $SYS is rebuilt
                if message.payload:
                    self._commit_wait = store.op(
                        "retain",
                        topic,
                        message.payload,
                        message.qos,
                        property_block(message.properties),
                        wall_time(message.expiry_deadline),
                    )
                else:
                    self._commit_wait = store.op("unretain", topic)
        matches, groups = self.router.match(topic)
        if not matches and not groups:
            return ReasonCode.SUCCESS if bridged else ReasonCode.NO_MATCHING_SUBSCRIBERS
        sessions = self.sessions
        refused = False
        publisher_id = message.publisher_id
        if len(matches) == 1 and not groups:
            client_id, opts = matches[0]
            if opts.no_local and client_id == publisher_id:  # [MQTT-3.8.3-3]
                return ReasonCode.SUCCESS
            session = sessions.get(client_id)
            if session is not None:
                sub_ids = () if opts.subscription_id is None else (opts.subscription_id,)
                retain = message.retain and opts.retain_as_published  # [MQTT-3.3.1-12], [MQTT-3.3.1-13]
                qos = opts.qos if opts.qos < message.qos else message.qos  # [MQTT-3.8.4-8]
                refused = not self._offer(session, Delivery(message, qos, retain, sub_ids))
        else:
            # Overlapping subscriptions of one client: one delivery at the highest QoS, with every
            # matching subscription identifier [MQTT-3.3.4-2], [MQTT-3.3.4-3].
            merged: dict[str, tuple[int, list[int], bool]] = {}
            for client_id, opts in matches:
                if opts.no_local and client_id == publisher_id:
                    continue
                entry = merged.get(client_id)
                if entry is None:
                    entry = merged[client_id] = (opts.qos, [], opts.retain_as_published)
                elif opts.qos > entry[0] or (opts.retain_as_published and not entry[2]):
                    entry = merged[client_id] = (
                        max(opts.qos, entry[0]),
                        entry[1],
                        entry[2] or opts.retain_as_published,
                    )
                if opts.subscription_id is not None:
                    entry[1].append(opts.subscription_id)
            for client_id, (sub_qos, matched_ids, rap) in merged.items():
                session = sessions.get(client_id)
                if session is None:
                    continue
                delivery = Delivery(
                    message, min(sub_qos, message.qos), message.retain and rap, tuple(matched_ids)
                )
                if not self._offer(session, delivery):
                    refused = True
            for group in groups:
                if not self._offer_shared(group, message, None):
                    refused = True
        if refused and self.config.queue.overflow == "refuse":
            return ReasonCode.QUOTA_EXCEEDED
        return ReasonCode.SUCCESS

    def _offer(self, session: Session, delivery: Delivery) -> bool:
        if self.acl is not None and not self._may_read(session.client_id, delivery.message.topic):
            return True  # not readable by this client (ACL): silently not delivered, as Mosquitto does
        conn = session.connection
        if conn is None and delivery.qos == 0:
            return True  # QoS 0 is not queued for a disconnected session (§4.1: "MAY")
        if delivery.qos and session.journal is not None and self.store_full:
            # The store is at its byte budget: the new message meets the overflow policy (older
            # ones are already on disk): refused (0x97 to a v5 publisher) or dropped, counted.
            self.stats.messages_dropped += 1
            return self.config.queue.overflow != "refuse"
        if not session.outbox.offer(delivery):
            return False
        if delivery.qos and session.journal is not None and self.journal is not None:
            self._commit_wait = self.journal.delivery_queued(session, delivery)
        if conn is not None:
            conn.wake()
        return True

    def _offer_shared(
        self, group: SharedGroup[SubscriptionOptions], message: Message, skip: str | None
    ) -> bool:
        """Hand a message to one member of a shared subscription, preferring connected members."""
        sessions = self.sessions

        def connected(client_id: str) -> bool:
            session = sessions.get(client_id)
            return client_id != skip and session is not None and session.connection is not None

        picked = group.pick(connected)
        if picked is None:
            picked = group.pick(lambda client_id: client_id != skip and client_id in sessions)
        if picked is None:
            return True
        client_id, opts = picked
        sub_ids = () if opts.subscription_id is None else (opts.subscription_id,)
        delivery = Delivery(
            message, min(opts.qos, message.qos), message.retain and opts.retain_as_published, sub_ids, group
        )
        return self._offer(sessions[client_id], delivery)

    def _redistribute_shared(self, session: Session) -> None:
        """Deliveries for a shared subscription that this session will not acknowledge go to
        another member of the group (§4.8.2)."""
        for delivery in session.take_shared_deliveries():
            if session.journal is not None:
                session.journal.delivery_finished(session, delivery)
            group = delivery.share_group
            assert isinstance(group, SharedGroup)
            if delivery.qos == 0:
                continue
            self._offer_shared(group, delivery.message, session.client_id)

    # --- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------------------

    def _on_subscribe(self, client: ClientConnection, subscribe: Subscribe) -> None:
        conn = client.conn
        session = conn.session
        assert session is not None
        cfg = self.config.mqtt
        v5 = conn.protocol_level == MQTT_5
        sub_ids = subscribe.properties.subscription_identifiers
        if sub_ids and not cfg.subscription_identifiers:
            # §3.2.2.3.12: 0xA1 when Subscription Identifiers are not supported.
            self._close(client, ReasonCode.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
            return
        sub_id = sub_ids[0] if sub_ids else None
        failure = ReasonCode.UNSPECIFIED_ERROR
        wait = 0  # a persistent session's SUBACK waits until its subscriptions are on disk
        codes: list[int] = []
        to_send: list[tuple[str, SubscriptionOptions]] = []
        for sub in subscribe.subscriptions:
            try:
                group, topic_filter = parse_shared(sub.topic_filter)
            except ValueError:
                codes.append(ReasonCode.TOPIC_FILTER_INVALID if v5 else failure)
                continue
            if not is_valid_topic_filter(topic_filter):
                codes.append(ReasonCode.TOPIC_FILTER_INVALID if v5 else failure)  # [MQTT-4.7.1-1]
                continue
            if group is not None and not cfg.shared_subscriptions:
                codes.append(ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED if v5 else failure)
                continue
            if group is not None and sub.no_local:
                # [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
                self._close(client, ReasonCode.PROTOCOL_ERROR, "No Local on a shared subscription")
                return
            if not cfg.wildcard_subscriptions and ("+" in topic_filter or "#" in topic_filter):
                codes.append(ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED if v5 else failure)
                continue
            if self._screening_subscribe and (
                refused := self._screen_subscription(client, session, sub.topic_filter, topic_filter)
            ):
                codes.append(refused if v5 else failure)  # ACL 0x87, limits 0x8F / 0x97; 3.1.1: 0x80
                continue
            qos = min(sub.qos, cfg.max_qos)  # §3.8.4: the Server may grant a lower QoS
            opts = SubscriptionOptions(
                qos=qos,
                no_local=sub.no_local and v5,
                retain_as_published=sub.retain_as_published and v5,
                retain_handling=sub.retain_handling if v5 else RetainHandling.SEND_ON_SUBSCRIBE,
                subscription_id=sub_id,
            )
            is_new = self.router.subscribe(session.client_id, sub.topic_filter, opts)
            session.subscriptions[sub.topic_filter] = opts
            if session.journal is not None and self.store is not None:
                wait = self.store.op(
                    "sub",
                    session.client_id,
                    sub.topic_filter,
                    qos,
                    int(opts.no_local),
                    int(opts.retain_as_published),
                    int(opts.retain_handling),
                    sub_id,
                )
            codes.append(qos)
            if group is None and (
                opts.retain_handling is RetainHandling.SEND_ON_SUBSCRIBE
                or (opts.retain_handling is RetainHandling.SEND_IF_NEW_SUBSCRIPTION and is_new)
            ):
                to_send.append((topic_filter, opts))  # [MQTT-3.3.1-9]; none for shared subscriptions (§4.8.2)
        conn.send(SubAck(subscribe.packet_id, tuple(codes)), wait)  # [MQTT-3.8.4-1]
        if to_send:
            self._send_retained(session, to_send)

    def _send_retained(self, session: Session, filters: list[tuple[str, SubscriptionOptions]]) -> None:
        now = trio.current_time()
        expired: list[str] = []
        for topic_filter, opts in filters:
            sub_ids = () if opts.subscription_id is None else (opts.subscription_id,)
            for topic, message in self.retained.match(topic_filter):
                if message.is_expired(now):
                    expired.append(topic)  # [MQTT-3.3.2-5]: an expired retained message is gone
                    continue
                # Sent because of a new subscription: RETAIN is 1 [MQTT-3.3.1-8] (v5: -9).
                self._offer(session, Delivery(message, min(opts.qos, message.qos), True, sub_ids))
        for topic in expired:
            self.retained.clear(topic)

    def _on_unsubscribe(self, client: ClientConnection, unsubscribe: Unsubscribe) -> None:
        conn = client.conn
        session = conn.session
        assert session is not None
        codes: list[int] = []
        for topic_filter in unsubscribe.topic_filters:
            existed = self.router.unsubscribe(session.client_id, topic_filter)
            session.subscriptions.pop(topic_filter, None)
            if existed and session.journal is not None and self.store is not None:
                self.store.op("unsub", session.client_id, topic_filter)
            codes.append(ReasonCode.SUCCESS if existed else ReasonCode.NO_SUBSCRIPTION_EXISTED)
        conn.send(UnsubAck(unsubscribe.packet_id, tuple(codes)))  # [MQTT-3.10.4-4]

    # --- the durable store ------------------------------------------------------------------------

    def _on_commit(self, seq: int) -> None:
        """Batch ``seq`` is on disk: the replies that waited for it go out."""
        holding = self._holding
        if holding:
            for conn in list(holding):
                if not conn.release(seq):
                    holding.discard(conn)
        if self.bridges:
            for bridge in self.bridges:
                bridge.on_commit(seq)
            waiters = self._commit_waiters
            if waiters:
                self._commit_waiters = [(batch, event) for batch, event in waiters if batch > seq]
                for batch, event in waiters:
                    if batch <= seq:
                        event.set()
        now = trio.current_time()
        if now >= self._next_size_check:
            self._next_size_check = now + STORE_SIZE_CHECK_S
            self._check_store_size()

    def _check_store_size(self) -> None:
        store = self.store
        budget = self.config.storage.max_bytes
        if store is None or not budget:
            return
        size = store.size_bytes()
        full = size >= budget
        if full != self.store_full:
            self.store_full = full
            if full:
                log.warning(
                    "store at %d bytes, over its budget of %d: new QoS 1/2 messages for persistent "
                    "sessions are %s until it shrinks",
                    size,
                    budget,
                    "refused" if self.config.queue.overflow == "refuse" else "dropped",
                )
            else:
                log.warning("store back under its budget (%d of %d bytes)", size, budget)

    def _restore(self, state: StoredState) -> None:
        """Rebuild sessions, subscriptions, queues, in-flight messages, retained messages and
        delayed wills from the store; expiry times continue from where they stood. A row that
        cannot be read back is logged and dropped from the store; everything else is restored."""
        now = trio.current_time()
        wall = time.time()
        store = self.store
        assert store is not None

        def deadline(expires_at: float | None) -> float | None:
            return None if expires_at is None else now + (expires_at - wall)

        messages: dict[int, Message] = {}
        for mid, row in state.messages.items():
            try:
                message = Message(
                    row.topic,
                    row.payload,
                    row.qos,
                    row.retain,
                    _stored_properties(row.properties),
                    publisher_id=row.publisher,
                    expiry_deadline=deadline(row.expires_at),
                )
            except Exception as exc:
                log.error("store: message %d is unreadable (%s): dropped", mid, exc)
                store.op("msg_gone", mid)
                continue
            message.store_id = mid
            messages[mid] = message
        for stored in state.sessions.values():
            try:
                self._restore_session(stored, messages, now, wall)
            except Exception as exc:
                # The client will find no session (Session Present 0) and start afresh.
                log.error("store: session %r is unreadable (%s): dropped", stored.client_id, exc)
                session = self.sessions.pop(stored.client_id, None)
                self.router.unsubscribe_all(stored.client_id)
                if session is not None and self.journal is not None:
                    self.journal.session_gone(session)
                else:
                    store.op("session_gone", stored.client_id)
        for mid, message in messages.items():
            if message.store_refs == 0:
                store.op("msg_gone", mid)  # left behind by a crash between two commits
        for topic, payload, qos, block, expires_at in state.retained:
            if expires_at is not None and expires_at <= wall:
                store.op("unretain", topic)  # [MQTT-3.3.2-5]: expired while the broker was down
                continue
            try:
                retained = Message(
                    topic, payload, qos, True, _stored_properties(block), expiry_deadline=deadline(expires_at)
                )
                self.retained.set(topic, retained)
            except Exception as exc:
                log.error("store: retained message on %r is unreadable (%s): dropped", topic, exc)
                store.op("unretain", topic)
        for cid, topic, payload, qos, retain, block, level, fire_at in state.wills:
            try:
                will = Will(topic, payload, qos, retain, _stored_properties(block))
            except Exception as exc:
                log.error("store: delayed will of %r is unreadable (%s): dropped", cid, exc)
                store.op("will_gone", cid)
                continue
            timer = self._schedule(
                now + max(0.0, fire_at - wall), functools.partial(self._fire_delayed_will, cid)
            )
            self._delayed_wills[cid] = (timer, will, level)
        self._restore_bridges(state)
        log.info(
            "restored %d sessions, %d queued or in-flight messages, %d retained messages from the store",
            len(self.sessions),
            sum(len(s.outbox) + len(s.inflight) for s in self.sessions.values()),
            len(self.retained),
        )

    def _restore_bridges(self, state: StoredState) -> None:
        store = self.store
        assert store is not None
        configured = {bridge.name for bridge in self.bridges}
        for bridge in self.bridges:
            bridge.restore(
                state.bridge_outboxes.get(bridge.name, []),
                state.bridge_cursors.get(bridge.name, 0),
                state.epoch,
            )
        for name, rows in state.bridge_outboxes.items():
            if name not in configured:
                log.warning(
                    "store: the outbox of bridge %r holds %d messages but no such bridge is configured: "
                    "kept until it is configured again",
                    name,
                    len(rows),
                )

    # --- bridges (issue 6) ----------------------------------------------------------------------

    def _publish_from_bridge(self, message: Message) -> int:
        """Route a message an in rule brought; returns the store batch to wait for (0: none)."""
        self._commit_wait = 0
        self.publish(message, None)
        return self._commit_wait

    async def wait_committed(self, batch: int) -> None:
        """Return once store batch ``batch`` is on disk."""
        store = self.store
        if store is None or store.committed_seq >= batch:
            return
        event = trio.Event()
        self._commit_waiters.append((batch, event))
        await event.wait()

    def _publish_state(self, topic: str, value: str) -> None:
        self.publish(Message(topic, value.encode(), 0, True), None)

    def _restore_session(
        self, stored: StoredSession, messages: dict[int, Message], now: float, wall: float
    ) -> None:
        journal = self.journal
        assert journal is not None
        session = self._new_session(stored.client_id)
        session.expiry_interval = stored.expiry_interval
        session.journal = journal
        session.outbox.on_discard = lambda delivery: journal.delivery_finished(session, delivery)
        for topic_filter, qos, no_local, rap, handling, sub_id in stored.subscriptions:
            opts = SubscriptionOptions(qos, no_local, rap, RetainHandling(handling), sub_id)
            self.router.subscribe(stored.client_id, topic_filter, opts)
            session.subscriptions[topic_filter] = opts
        for seq, mid, qos, retain, sub_ids, packet_id, dstate in stored.deliveries:
            message = messages.get(mid)
            if message is None:
                continue  # its message was unreadable
            delivery = Delivery(message, qos, retain, sub_ids)
            delivery.store_seq = seq
            message.store_refs += 1
            state = _STORED_INFLIGHT.get(dstate)
            if packet_id and state is not None:
                session.inflight[packet_id] = Inflight(delivery, state)  # resent with DUP
            else:
                session.outbox.restore(delivery)
        session.inbound_qos2.update(stored.inbound_qos2)
        if stored.expiry_interval != SESSION_NEVER_EXPIRES:
            away = stored.disconnected_at if stored.disconnected_at is not None else wall
            remaining = stored.expiry_interval - (wall - away)
            cid = stored.client_id
            self._session_expiry[cid] = self._schedule(
                now + max(0.0, remaining), functools.partial(self._expire_session, cid)
            )

    # --- timers and $SYS ------------------------------------------------------------------------------

    def _schedule(self, deadline: float, action: Callable[[], None]) -> _Timer:
        timer = _Timer(deadline, next(self._timer_seq), action)
        heapq.heappush(self._timers, timer)
        if self._timers[0] is timer:
            self._timer_wakeup.set()
        return timer

    async def _run_timers(self) -> None:
        """One task for every delayed will and session expiry: a heap of deadlines."""
        timers = self._timers
        while True:
            now = trio.current_time()
            while timers and timers[0].deadline <= now:
                timer = heapq.heappop(timers)
                if not timer.cancelled:
                    try:
                        timer.action()
                    except Exception:
                        log.exception("timer action failed")
            wakeup = self._timer_wakeup
            with trio.move_on_at(timers[0].deadline if timers else math.inf):
                await wakeup.wait()
            if wakeup.is_set():
                self._timer_wakeup = trio.Event()

    def sys_values(self) -> dict[str, str]:
        """The $SYS topics and their current values."""
        stats = self.stats
        connected = sum(1 for s in self.sessions.values() if s.connection is not None)
        queued = sum(len(s.outbox) for s in self.sessions.values())
        values = {
            "$SYS/broker/version": f"edgebus {__version__}",
            "$SYS/broker/uptime": f"{int(time.monotonic() - self.started_at)} seconds",
            "$SYS/broker/clients/connected": str(connected),
            "$SYS/broker/clients/total": str(len(self.sessions)),
            "$SYS/broker/clients/disconnected": str(len(self.sessions) - connected),
            "$SYS/broker/connections/total": str(stats.clients_total),
            "$SYS/broker/messages/received": str(stats.messages_received),
            "$SYS/broker/messages/sent": str(stats.messages_sent),
            "$SYS/broker/messages/queued": str(queued),
            "$SYS/broker/messages/dropped": str(stats.messages_dropped),
            "$SYS/broker/messages/expired": str(stats.messages_expired),
            "$SYS/broker/bytes/received": str(stats.bytes_received),
            "$SYS/broker/bytes/sent": str(stats.bytes_sent),
            "$SYS/broker/retained messages/count": str(len(self.retained)),
            "$SYS/broker/subscriptions/count": str(self.router.subscription_count),
            "$SYS/broker/store/bytes": str(self.store.size_bytes() if self.store is not None else 0),
        }
        if self.bridges:
            wall = time.time()
            for bridge in self.bridges:
                values.update(bridge.sys_values(wall))
        return values

    def publish_sys(self) -> None:
        for topic, value in self.sys_values().items():
            self.publish(Message(topic, value.encode(), 0, True), None)

    async def _publish_sys_forever(self, interval: float) -> None:
        while True:
            try:
                self.publish_sys()
            except Exception:
                log.exception("publishing $SYS failed")
            await trio.sleep(interval)

    # --- security and limits (issue 4) ----------------------------------------------------------------

    def reload_security(self) -> None:
        """(Re)read the password and ACL files of [security]: at start and on SIGHUP. Open connections
        stay; new CONNECTs, SUBSCRIBEs and PUBLISHes meet the new rules, and so does every delivery.
        A file that cannot be used raises PasswordFileError / AclError and the old rules stay."""
        sec = self.config.security
        limits = self.config.limits
        passwords = read_password_file(sec.password_file) if sec.password_file else None
        acl = read_acl_file(sec.acl_file) if sec.acl_file else None
        identities = any(listener.use_identity_as_username for listener in self.config.listener)
        if sec.allow_anonymous and passwords is None and acl is None and not identities:
            self.auth = None
        else:
            self.auth = Authenticator(sec.allow_anonymous, passwords)
        self.acl = acl
        self._read_memo.clear()
        topic_limits = limits.max_topic_length < 65535 or limits.max_topic_levels > 0
        self._screening_publish = acl is not None or topic_limits or limits.max_message_rate > 0
        self._screening_subscribe = acl is not None or topic_limits or limits.max_subscriptions_per_client > 0

    def new_quota(self, now: float) -> RateQuota | None:
        limits = self.config.limits
        if not limits.max_message_rate and not limits.max_byte_rate:
            return None
        return RateQuota(limits.max_message_rate, limits.max_byte_rate, now)

    def _open_extra_listeners(self, listeners: list[socket.socket]) -> None:
        """Bind the [[listener]] entries (TLS contexts are built here, so a bad certificate stops the
        start); on failure close everything opened so far, `listeners` included."""
        extra: list[Listener] = []
        try:
            for listener_config in self.config.listener:
                listener = Listener(listener_config)
                extra.append(listener)
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

    @property
    def listener_addresses(self) -> list[list[tuple[str, int]]]:
        """The bound addresses of each [[listener]], in configuration order."""
        return [listener.addresses for listener in self._extra_listeners]

    def _over_connection_limit(self, stream: ClientStream) -> bool:
        cap = self.config.limits.max_connections
        if cap and len(self.clients) >= cap:
            self.refused_connections += 1
            log.debug("%s: refused, %d connections open ([limits] max_connections)", stream.remote, cap)
            stream.force_close()
            return True
        return False

    async def _after_read(self, client: ClientConnection, received: int) -> None:
        """What a read may have to wait for before the next: a CONNECT's authentication, the rate quota.
        Only this connection's reader waits; the event loop goes on."""
        if client.pending_connect is not None:
            await self._finish_admission(client)
        quota = client.quota
        if quota is not None and not client.closing:
            now = trio.current_time()
            pause = quota.pause(now, received)
            if pause > 0:
                # Throttle by not reading: TCP pushes back on the client. A paused reader is not a
                # silent client, so keep-alive counts from the end of the pause.
                client.last_read = now + pause
                await trio.sleep(pause)

    def _admit(self, client: ClientConnection, connect: Connect) -> None:
        """Authenticate a CONNECT. Decided at once (anonymous, certificate identity, a remembered
        password): accept now. Otherwise the reader finishes it (`_finish_admission`): a password hash
        to compute in a thread, or a refusal to delay."""
        auth = self.auth
        assert auth is not None
        identity = peer_identity(client.stream)
        outcome = auth.check(connect.username, connect.password, identity)
        username = identity if identity is not None else connect.username
        if outcome is Verdict.ACCEPT and self._will_allowed(connect, username):
            self._enter(client, connect, username)
        else:
            client.pending_connect = (connect, outcome, username)

    def _will_allowed(self, connect: Connect, username: str | None) -> bool:
        # The Will Message is published for this client later: it needs write access now (Mosquitto).
        will = connect.will
        acl = self.acl
        if will is None or acl is None:
            return True
        return acl.allows(username, connect.client_id, will.topic, Access.WRITE)

    def _enter(self, client: ClientConnection, connect: Connect, username: str | None) -> None:
        client.admitted = True
        client.username = username
        self._on_connect(client, connect)
        conn = client.conn
        if conn.session is not None and self.acl is not None:
            usernames = self._usernames
            if usernames.get(conn.client_id, "") != username:
                self._read_memo.clear()  # a new user behind this client id
            usernames[conn.client_id] = username
            if len(usernames) > 2 * len(self.sessions) + 1024:
                # Forget the clients whose sessions are gone (amortised: no hook in session removal).
                self._usernames = {cid: name for cid, name in usernames.items() if cid in self.sessions}

    async def _finish_admission(self, client: ClientConnection) -> None:
        assert client.pending_connect is not None
        connect, outcome, username = client.pending_connect
        client.pending_connect = None
        auth = self.auth
        assert auth is not None
        if isinstance(outcome, NeedsHash):
            matched = await trio.to_thread.run_sync(auth.verify, outcome, limiter=self._hash_limiter)
            if matched:
                auth.remember(outcome)
            outcome = Verdict.ACCEPT if matched else Verdict.BAD_CREDENTIALS
        if client.closing:
            return
        host = client.stream.remote.rpartition(":")[0]
        if outcome is Verdict.ACCEPT:
            if self._will_allowed(connect, username):
                self._auth_failures.succeeded(host)
                self._enter(client, connect, username)
                self._handle_events(client)  # the packets that came behind the CONNECT
                return
            outcome = Verdict.NOT_AUTHORIZED
        delay = self._auth_failures.failed(host, trio.current_time())
        log.info(
            "%s: CONNECT of %r (user %r) refused: %s; answering in %.1f s",
            client.stream.remote,
            connect.client_id,
            username,
            "bad user name or password" if outcome is Verdict.BAD_CREDENTIALS else "not authorized",
            delay,
        )
        if delay > 0:
            # Slows a password guesser down without blocking anything but this connection.
            await trio.sleep(delay)
        if client.closing:
            return
        level = connect.protocol_level
        if level != MQTT_5:
            code: int = ConnectReturnCode.NOT_AUTHORIZED  # 3.1.1 0x05, as Mosquitto answers
        elif outcome is Verdict.BAD_CREDENTIALS:
            code = ReasonCode.BAD_USER_NAME_OR_PASSWORD  # 0x86
        else:
            code = ReasonCode.NOT_AUTHORIZED  # 0x87
        client.conn.reject(encode(ConnAck(False, code), level))  # [MQTT-3.2.2-7] then close
        self._close(client)

    def _may_read(self, client_id: str, topic: str) -> bool:
        """READ access of a session's client to a topic, memoised. A session whose user is not known
        (restored from the store and not reconnected since) receives nothing until it reconnects."""
        key = (client_id, topic)
        allowed = self._read_memo.get(key)
        if allowed is None:
            acl = self.acl
            usernames = self._usernames
            if acl is None or client_id not in usernames:
                allowed = acl is None
            else:
                allowed = acl.allows(usernames[client_id], client_id, topic, Access.READ)
            if len(self._read_memo) >= READ_ACL_MEMO_ENTRIES:
                self._read_memo.clear()
            self._read_memo[key] = allowed
        return allowed

    def _screened_publish(self, client: ClientConnection, message: Message) -> int:
        """`publish` behind the inbound checks: message quota, topic limits, WRITE access. A refusal is
        the reason code for a v5 PUBACK/PUBREC; a 3.1.1 publisher gets a plain ack (and the message is
        dropped), as Mosquitto does."""
        quota = client.quota
        if quota is not None:
            quota.messages += 1
        topic = message.topic
        if not self._topic_within_limits(topic):
            return ReasonCode.TOPIC_NAME_INVALID
        acl = self.acl
        if acl is not None and not acl.allows(client.username, client.conn.client_id, topic, Access.WRITE):
            log.debug("client %s (user %r): PUBLISH %r denied", client.conn.client_id, client.username, topic)
            return ReasonCode.NOT_AUTHORIZED
        return self.publish(message, client.conn.session)

    def _topic_within_limits(self, topic: str) -> bool:
        limits = self.config.limits
        max_length = limits.max_topic_length
        # Characters first: UTF-8 takes at least one byte each and at most four.
        if len(topic) > max_length or (len(topic) * 4 > max_length and len(topic.encode()) > max_length):
            return False
        return not limits.max_topic_levels or topic.count("/") < limits.max_topic_levels

    def _screen_subscription(
        self, client: ClientConnection, session: Session, full_filter: str, topic_filter: str
    ) -> int:
        """0 if the subscription may be made, else the v5 SUBACK reason code."""
        if not self._topic_within_limits(topic_filter):
            return ReasonCode.TOPIC_FILTER_INVALID
        cap = self.config.limits.max_subscriptions_per_client
        if cap and full_filter not in session.subscriptions and len(session.subscriptions) >= cap:
            return ReasonCode.QUOTA_EXCEEDED
        acl = self.acl
        if acl is not None and not acl.allows_subscribe(client.username, client.conn.client_id, topic_filter):
            log.debug("client %s: SUBSCRIBE %r denied", client.conn.client_id, full_filter)
            return ReasonCode.NOT_AUTHORIZED
        return 0


_STORED_INFLIGHT = {
    1: FlowState.AWAIT_PUBACK,
    2: FlowState.AWAIT_PUBREC,
    3: FlowState.AWAIT_PUBCOMP,
}


def _stored_properties(block: bytes | None) -> Properties:
    """PUBLISH properties as the store keeps them: the wire block, or None for none."""
    return Properties() if not block else read_properties(block, 0, len(block), PacketType.PUBLISH)[0]


def _sockname(listener: socket.socket) -> tuple[str, int]:
    name = listener.getsockname()
    return (str(name[0]), int(name[1]))

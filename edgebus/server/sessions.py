"""The session lifecycle (trio side): CONNECT and takeover, DISCONNECT, a lost connection, wills
(delayed ones on timers), session expiry, and the sessions a restart brings back from the store."""

from __future__ import annotations

import functools
import logging
import time

import trio

from edgebus.config import Config
from edgebus.core.connect import (
    ConnectAccepted,
    ServerFeatures,
    will_delay,
    will_message,
)
from edgebus.core.message import Message
from edgebus.core.outbox import Outbox
from edgebus.core.router import RetainedIndex, Router
from edgebus.core.server import Connection
from edgebus.core.server_events import ConnectionLimits
from edgebus.core.session import SESSION_NEVER_EXPIRES, Session, SubscriptionOptions
from edgebus.core.stats import Stats
from edgebus.protocol.enums import BRIDGE_BIT, MQTT_3_1, MQTT_5, ReasonCode
from edgebus.protocol.packets import Connect, Disconnect, Will
from edgebus.server.connection import ClientConnection, Connections
from edgebus.server.fanout import Fanout
from edgebus.server.timers import Timer, Timers
from edgebus.store import StoredState, StoreJournal, rebuild

log = logging.getLogger("edgebus.server.sessions")


class Sessions:
    """Every session by client id, from CONNECT to expiry. Shares ``sessions`` and ``router`` with
    the fan-out, and publishes wills through it."""

    def __init__(
        self,
        config: Config,
        limits: ConnectionLimits,
        features: ServerFeatures,
        fanout: Fanout,
        connections: Connections,
        timers: Timers,
        journal: StoreJournal | None,
        stats: Stats,
    ) -> None:
        self.config = config
        self.limits = limits
        self.features = features
        self.fanout = fanout
        self.sessions = fanout.sessions
        self.router: Router[SubscriptionOptions] = fanout.router
        self.retained: RetainedIndex[Message] = fanout.retained
        self.connections = connections
        self.timers = timers
        self.journal = journal
        self.stats = stats
        self._session_expiry: dict[str, Timer] = {}
        self._delayed_wills: dict[str, tuple[Timer, Will, int]] = {}

    # --- CONNECT ---------------------------------------------------------------------------------

    def connect(self, client: ClientConnection, connect: Connect, decision: ConnectAccepted) -> None:
        """Attach an accepted CONNECT to its session, new or resumed, and answer CONNACK."""
        conn = client.conn
        client_id = decision.client_id
        level = conn.protocol_level  # the wire level: 3.1 (and a bridge's level byte) read as 3.1.1 / 5.0
        now = trio.current_time()
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            self._take_over(session, connect.clean_start)
            if session.expiry_interval == 0:
                # A session that lasts as long as its network connection ended with the one just
                # taken over [MQTT-3.1.2-6] (§3.1.2.11.2 on 5.0): nothing of it is resumed.
                self.discard(session)
                session = None
        # A will delayed from an earlier connection of this client id: a new connection before
        # the delay passes cancels it [MQTT-3.1.3-9], unless Clean Start ends the session first.
        pending = self._delayed_wills.pop(client_id, None)
        if pending is not None:
            pending[0].cancelled = True
            if self.journal is not None:
                self.journal.will_gone(client_id)
            if connect.clean_start:
                self._publish_will(pending[1], client_id, pending[2], now)
        expiry_timer = self._session_expiry.pop(client_id, None)
        if expiry_timer is not None:
            expiry_timer.cancelled = True
        if session is not None and connect.clean_start:
            self.discard(session)  # [MQTT-3.1.2-4]
            session = None
        session_present = session is not None  # [MQTT-3.2.2-2], [MQTT-3.2.2-3]
        if session is None:
            session = self.new_session(client_id)
        session.expiry_interval = decision.session_expiry_interval
        self._journal_session(session, level)
        conn.keep_alive = decision.keep_alive
        # 3.1 has no Session Present flag: its CONNACK byte 1 is reserved and sent as 0 (§3.2 of 3.1).
        present_flag = session_present and connect.protocol_level & ~BRIDGE_BIT != MQTT_3_1
        conn.accept(session, decision.connack(present_flag, level, conn.limits, self.features), connect)
        client.will = connect.will
        self.stats.clients_total += 1
        log.debug("client %s connected (v%d, session present %s)", client_id, level, session_present)

    def new_session(self, client_id: str) -> Session:
        session = Session(client_id, self._new_outbox())
        self.sessions[client_id] = session
        return session

    def _new_outbox(self) -> Outbox:
        queue = self.config.queue
        return Outbox(queue.max_messages, queue.max_bytes, queue.overflow, self.stats)

    def _journal_session(self, session: Session, protocol_level: int) -> None:
        """A session that outlives its connection is kept in the store; one that ends with it is not."""
        journal = self.journal
        if journal is None:
            return
        if session.expiry_interval == 0:
            if session.journal is not None:
                journal.untrack(session)
            return
        journal.track(session)
        journal.session_saved(session, protocol_level)

    def _take_over(self, session: Session, clean_start: bool) -> None:
        """A second connection with the same client id: the first is closed with 0x8E
        [MQTT-3.1.4-3]; its will goes out now unless the delay defers it past the new connection."""
        old_conn = session.connection
        assert old_conn is not None
        assert isinstance(old_conn, Connection)  # the server role's machine is the one Attachment
        old = self.connections.clients.get(old_conn)
        session.connection = None
        if old is None:
            return
        will, old.will = old.will, None
        # Sent now when its delay is 0, when the session ends with this connection (expiry 0) or
        # when Clean Start ends it [MQTT-3.1.3-9]; else a resumed session cancels it.
        delay = will_delay(will, old_conn.protocol_level, session.expiry_interval) if will is not None else 0
        if will is not None and (delay == 0 or clean_start):
            self._publish_will(will, session.client_id, old_conn.protocol_level, trio.current_time())
        old.close(ReasonCode.SESSION_TAKEN_OVER)

    # --- the end of a connection -------------------------------------------------------------------

    def disconnect(self, client: ClientConnection, disconnect: Disconnect) -> None:
        """A DISCONNECT from the client; the caller closes the connection after."""
        conn = client.conn
        session = conn.session
        if disconnect.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
            client.will = None  # a normal DISCONNECT discards the will [MQTT-3.14.4-3]
        expiry = disconnect.properties.session_expiry_interval
        if session is not None and expiry is not None and conn.protocol_level == MQTT_5:
            session.expiry_interval = min(expiry, self.features.max_session_expiry_interval)
            self._journal_session(session, conn.protocol_level)

    def connection_lost(self, client: ClientConnection) -> None:
        """A connection closed, for any reason: its session stays (or ends), its will goes out (or
        waits for its delay)."""
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
            delay = will_delay(will, conn.protocol_level, session.expiry_interval)
            if delay <= 0:
                self._publish_will(will, session.client_id, conn.protocol_level, now)
            else:
                cid = session.client_id
                level = conn.protocol_level
                timer = self.timers.schedule(now + delay, lambda: self._fire_delayed_will(cid))
                self._delayed_wills[cid] = (timer, will, level)
                if self.journal is not None:
                    self.journal.will_saved(cid, will, level, delay)
        self.fanout.redistribute_shared(session)
        if session.expiry_interval == 0:
            self.discard(session)
        elif session.expiry_interval != SESSION_NEVER_EXPIRES:
            cid = session.client_id
            self._session_expiry[cid] = self.timers.schedule(
                now + session.expiry_interval, lambda: self._expire_session(cid)
            )

    def _fire_delayed_will(self, client_id: str) -> None:
        pending = self._delayed_wills.pop(client_id, None)
        if self.journal is not None:
            self.journal.will_gone(client_id)
        if pending is not None:
            self._publish_will(pending[1], client_id, pending[2], trio.current_time())

    def _expire_session(self, client_id: str) -> None:
        self._session_expiry.pop(client_id, None)
        session = self.sessions.get(client_id)
        if session is not None and session.connection is None:
            log.debug("session %s expired", client_id)
            self.discard(session)

    def delete(self, client_id: str) -> bool:
        """End a session on an operator's request (HTTP API): a connection it has is closed first with
        DISCONNECT 0x98 Administrative action on v5 (its will goes out as for any server-side close).
        False if there is no such session."""
        session = self.sessions.get(client_id)
        if session is None:
            return False
        conn = session.connection
        client = self.connections.clients.get(conn) if isinstance(conn, Connection) else None
        if client is not None:
            client.close(ReasonCode.ADMINISTRATIVE_ACTION)
        expiry_timer = self._session_expiry.pop(client_id, None)  # the close may have started one
        if expiry_timer is not None:
            expiry_timer.cancelled = True
        if self.sessions.get(client_id) is session:
            self.discard(session)
        return True

    def discard(self, session: Session) -> None:
        """End a session: its shared deliveries go to other members, its subscriptions and stored
        state go."""
        self.fanout.redistribute_shared(session)
        if session.journal is not None and self.journal is not None:
            self.journal.session_gone(session)
            session.journal = None
        self.router.unsubscribe_all(session.client_id)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def _publish_will(self, will: Will, client_id: str, level: int, now: float) -> None:
        log.debug("publishing will of %s on %s", client_id, will.topic)
        self.fanout.publish(will_message(will, client_id, level, now), None)

    # --- restart -----------------------------------------------------------------------------------

    def restore(self, state: StoredState) -> None:
        """Install what the store held, as `edgebus.store.restore` rebuilds it: sessions with their
        subscriptions, retained messages, session-expiry and delayed-will timers."""
        journal = self.journal
        assert journal is not None
        restored = rebuild(state, journal, self._new_outbox, trio.current_time(), time.time())
        for session in restored.sessions:
            self.sessions[session.client_id] = session
            for topic_filter, opts in session.subscriptions.items():
                self.router.subscribe(session.client_id, topic_filter, opts)
        schedule = self.timers.schedule
        for cid, deadline in restored.session_expiry:
            self._session_expiry[cid] = schedule(deadline, functools.partial(self._expire_session, cid))
        for message in restored.retained:
            self.retained.set(message.topic, message)
        for will in restored.wills:
            timer = schedule(will.fire_at, functools.partial(self._fire_delayed_will, will.client_id))
            self._delayed_wills[will.client_id] = (timer, will.will, will.protocol_level)
        log.info(
            "restored %d sessions, %d queued or in-flight messages, %d retained messages from the store",
            len(self.sessions),
            sum(len(s.outbox) + len(s.inflight) for s in self.sessions.values()),
            len(self.retained),
        )

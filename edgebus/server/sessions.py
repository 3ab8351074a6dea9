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
from edgebus.core.flows import FlowState
from edgebus.core.message import Message
from edgebus.core.outbox import Delivery, Outbox
from edgebus.core.router import RetainedIndex, Router
from edgebus.core.server import ConnectionLimits
from edgebus.core.session import SESSION_NEVER_EXPIRES, Inflight, Session, SubscriptionOptions
from edgebus.core.stats import Stats
from edgebus.protocol.enums import MQTT_5, PacketType, ReasonCode, RetainHandling
from edgebus.protocol.packets import Connect, Disconnect, Properties, Will
from edgebus.protocol.properties import read_properties
from edgebus.server.connection import ClientConnection, Connections
from edgebus.server.fanout import Fanout
from edgebus.server.timers import Timer, Timers
from edgebus.store import Store, StoredSession, StoredState
from edgebus.store.journal import StoreJournal, property_block

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
        store: Store | None,
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
        self.store = store
        self.journal = journal
        self.stats = stats
        self._session_expiry: dict[str, Timer] = {}
        self._delayed_wills: dict[str, tuple[Timer, Will, int]] = {}

    # --- CONNECT ---------------------------------------------------------------------------------

    def connect(self, client: ClientConnection, connect: Connect, decision: ConnectAccepted) -> None:
        """Attach an accepted CONNECT to its session, new or resumed, and answer CONNACK."""
        conn = client.conn
        client_id = decision.client_id
        level = connect.protocol_level
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
            self.discard(session)  # [MQTT-3.1.2-4]
            session = None
        session_present = session is not None  # [MQTT-3.2.2-2], [MQTT-3.2.2-3]
        if session is None:
            session = self.new_session(client_id)
        session.expiry_interval = decision.session_expiry_interval
        self._journal_session(session, level)
        conn.keep_alive = decision.keep_alive
        conn.accept(session, decision.connack(session_present, level, self.limits, self.features), connect)
        client.will = connect.will
        self.stats.clients_total += 1
        log.debug("client %s connected (v%d, session present %s)", client_id, level, session_present)

    def new_session(self, client_id: str) -> Session:
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
        old = self.connections.clients.get(old_conn)  # type: ignore[call-overload]
        session.connection = None
        if old is None:
            return
        will, old.will = old.will, None
        if will is not None and (will_delay(will, old_conn.protocol_level) == 0 or clean_start):
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
        if self.store is not None:
            self.store.op("will_gone", client_id)
        if pending is not None:
            self._publish_will(pending[1], client_id, pending[2], trio.current_time())

    def _expire_session(self, client_id: str) -> None:
        self._session_expiry.pop(client_id, None)
        session = self.sessions.get(client_id)
        if session is not None and session.connection is None:
            log.debug("session %s expired", client_id)
            self.discard(session)

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
            timer = self.timers.schedule(
                now + max(0.0, fire_at - wall), functools.partial(self._fire_delayed_will, cid)
            )
            self._delayed_wills[cid] = (timer, will, level)
        log.info(
            "restored %d sessions, %d queued or in-flight messages, %d retained messages from the store",
            len(self.sessions),
            sum(len(s.outbox) + len(s.inflight) for s in self.sessions.values()),
            len(self.retained),
        )

    def _restore_session(
        self, stored: StoredSession, messages: dict[int, Message], now: float, wall: float
    ) -> None:
        journal = self.journal
        assert journal is not None
        session = self.new_session(stored.client_id)
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
            self._session_expiry[cid] = self.timers.schedule(
                now + max(0.0, remaining), functools.partial(self._expire_session, cid)
            )


_STORED_INFLIGHT = {
    1: FlowState.AWAIT_PUBACK,
    2: FlowState.AWAIT_PUBREC,
    3: FlowState.AWAIT_PUBCOMP,
}


def _stored_properties(block: bytes | None) -> Properties:
    """PUBLISH properties as the store keeps them: the wire block, or None for none."""
    return Properties() if not block else read_properties(block, 0, len(block), PacketType.PUBLISH)[0]

"""What the store held at startup (a `StoredState`) rebuilt as the broker's in-memory objects.

Sessions come back with their subscriptions, queues, in-flight flows and inbound QoS 2 ids, messages
with their expiry, retained messages and delayed wills with their deadlines, all on the trio clock
(expiry times continue from where they stood). A row that cannot be read back is logged and dropped
from the store through the journal; everything else is restored. The broker then installs the result:
router subscriptions, the retained index, timers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from edgebus.core.flows import FlowState
from edgebus.core.message import Message
from edgebus.core.outbox import Delivery, Outbox
from edgebus.core.session import SESSION_NEVER_EXPIRES, Inflight, Session, SubscriptionOptions
from edgebus.core.topics import is_valid_topic_filter, is_valid_topic_name, parse_shared
from edgebus.protocol.enums import PacketType, RetainHandling
from edgebus.protocol.packets import Properties, Will
from edgebus.protocol.properties import read_properties
from edgebus.store.journal import StoreJournal
from edgebus.store.sqlite import StoredSession, StoredState

log = logging.getLogger("edgebus.store")

#: The outbound flow a stored delivery resumes in, by its stored state (0, queued, is not in flight).
_STORED_INFLIGHT = {
    1: FlowState.AWAIT_PUBACK,
    2: FlowState.AWAIT_PUBREC,
    3: FlowState.AWAIT_PUBCOMP,
}


@dataclass(slots=True)
class RestoredWill:
    client_id: str
    will: Will
    protocol_level: int
    fire_at: float  # trio clock


@dataclass(slots=True)
class Restored:
    """What `rebuild` made of the store's rows; deadlines are on the trio clock."""

    #: Persistent sessions, journaled, with their subscriptions (valid filters), queues, in-flight
    #: flows and inbound QoS 2 ids; not yet in the router.
    sessions: list[Session] = field(default_factory=list)
    #: (client id, deadline) of each session that expires.
    session_expiry: list[tuple[str, float]] = field(default_factory=list)
    #: Retained messages (on valid topic names), not yet expired.
    retained: list[Message] = field(default_factory=list)
    wills: list[RestoredWill] = field(default_factory=list)


def rebuild(
    state: StoredState, journal: StoreJournal, new_outbox: Callable[[], Outbox], now: float, wall: float
) -> Restored:
    """Rebuild ``state`` at trio time ``now`` (wall clock ``wall``); ``new_outbox`` makes each
    session's queue."""

    def deadline(expires_at: float | None) -> float | None:
        return None if expires_at is None else now + (expires_at - wall)

    restored = Restored()
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
            journal.message_gone(mid)
            continue
        message.store_id = mid
        messages[mid] = message
    for stored in state.sessions.values():
        session: Session | None = None
        try:
            session = Session(stored.client_id, new_outbox())
            expires = _rebuild_session(session, stored, journal, messages, now, wall)
        except Exception as exc:
            # The client will find no session (Session Present 0) and start afresh.
            log.error("store: session %r is unreadable (%s): dropped", stored.client_id, exc)
            if session is not None:
                journal.session_gone(session)
            else:
                journal.session_gone_by_id(stored.client_id)
            continue
        restored.sessions.append(session)
        if expires is not None:
            restored.session_expiry.append((stored.client_id, expires))
    for mid, message in messages.items():
        if message.store_refs == 0:
            journal.message_gone(mid)  # left behind by a crash between two commits
    for topic, payload, qos, block, expires_at in state.retained:
        if expires_at is not None and expires_at <= wall:
            journal.retained_cleared(topic)  # [MQTT-3.3.2-5]: expired while the broker was down
            continue
        try:
            retained = Message(
                topic, payload, qos, True, _stored_properties(block), expiry_deadline=deadline(expires_at)
            )
            if not is_valid_topic_name(topic):  # as the retained index would refuse it
                raise ValueError(f"invalid topic name {topic!r}")
        except Exception as exc:
            log.error("store: retained message on %r is unreadable (%s): dropped", topic, exc)
            journal.retained_cleared(topic)
            continue
        restored.retained.append(retained)
    for cid, topic, payload, qos, retain, block, level, fire_at in state.wills:
        try:
            will = Will(topic, payload, qos, retain, _stored_properties(block))
        except Exception as exc:
            log.error("store: delayed will of %r is unreadable (%s): dropped", cid, exc)
            journal.will_gone(cid)
            continue
        restored.wills.append(RestoredWill(cid, will, level, now + max(0.0, fire_at - wall)))
    return restored


def _rebuild_session(
    session: Session,
    stored: StoredSession,
    journal: StoreJournal,
    messages: dict[int, Message],
    now: float,
    wall: float,
) -> float | None:
    """Fill ``session`` from ``stored``; returns its expiry deadline (None: it never expires)."""
    session.expiry_interval = stored.expiry_interval
    journal.track(session)
    for topic_filter, qos, no_local, rap, handling, sub_id in stored.subscriptions:
        opts = SubscriptionOptions(qos, no_local, rap, RetainHandling(handling), sub_id)
        _check_filter(topic_filter)
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
    if stored.expiry_interval == SESSION_NEVER_EXPIRES:
        return None
    away = stored.disconnected_at if stored.disconnected_at is not None else wall
    remaining = stored.expiry_interval - (wall - away)
    return now + max(0.0, remaining)


def _check_filter(topic_filter: str) -> None:
    """Raise ValueError for a filter `Router.subscribe` refuses: the broker subscribes every
    restored one, and a row the router cannot take makes its session unreadable."""
    _, plain_filter = parse_shared(topic_filter)
    if not is_valid_topic_filter(plain_filter):
        raise ValueError(f"invalid topic filter {topic_filter!r}")


def _stored_properties(block: bytes | None) -> Properties:
    """PUBLISH properties as the store keeps them: the wire block, or None for none."""
    return Properties() if not block else read_properties(block, 0, len(block), PacketType.PUBLISH)[0]

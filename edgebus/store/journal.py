"""Every write to the store, as typed operations: protocol progress, retained messages, wills, bridges.

Each method only queues its operations and returns the number of the batch that will hold them
(0: nothing to wait for); whatever must not outrun the disk waits for that batch to be committed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, Protocol

import trio

from edgebus.core.message import Message
from edgebus.core.outbox import Delivery
from edgebus.core.session import Session, SubscriptionOptions
from edgebus.protocol.enums import MQTT_5, PacketType
from edgebus.protocol.packets import NO_PROPERTIES, Properties, UserProperties, Will
from edgebus.protocol.properties import encode_properties
from edgebus.store.ops import (
    BridgeDropped,
    BridgeForwarded,
    BridgeQueued,
    DeliveryQueued,
    DeliveryState,
    InboundReceived,
    InboundReleased,
    MessageGone,
    MessageSaved,
    Op,
    RetainedCleared,
    RetainedSet,
    SessionAway,
    SessionGone,
    SessionSaved,
    SubscriptionRemoved,
    SubscriptionSaved,
    WillGone,
    WillSaved,
)


def wall_time(deadline: float | None) -> float | None:
    """A trio-clock deadline as wall-clock time (the store outlives the process's clock)."""
    if deadline is None:
        return None
    return time.time() + (deadline - trio.current_time())


def property_block(props: Properties) -> bytes | None:
    return None if props is NO_PROPERTIES else encode_properties(props, PacketType.PUBLISH)


def user_properties_block(user_properties: UserProperties) -> bytes | None:
    """User Properties as the outbox table keeps them: their PUBLISH property block, None for none."""
    if not user_properties:
        return None
    return encode_properties(Properties(user_properties=user_properties), PacketType.PUBLISH)


P = ParamSpec("P")


class Batches(Protocol):
    """Where the journal's operations go: the batch gathering for the next commit, and the row ids
    (`edgebus.store.committer.Store`)."""

    message_ids: Iterator[int]
    delivery_seqs: Iterator[int]

    def append(self, kind: Callable[P, Op], /, *fields: P.args, **named: P.kwargs) -> int: ...

    def record_sent_qos1(self, seq: int, packet_id: int) -> None: ...

    def record_delivery_gone(self, seq: int) -> None: ...

    def record_message_gone(self, message_id: int) -> None: ...


class StoreJournal:
    """Implements `edgebus.core.session.Journal`, and everything else the broker and the bridges
    record, on the store's batches."""

    def __init__(self, store: Batches) -> None:
        self.store = store

    # --- messages and deliveries ------------------------------------------------------------------

    def delivery_queued(self, session: Session, delivery: Delivery) -> int:
        """A QoS 1/2 delivery queued for a persistent session: store it (and its message, once)."""
        store = self.store
        message = delivery.message
        if not message.store_id:
            message.store_id = mid = next(store.message_ids)
            # Most messages have neither properties nor an expiry: no call for those (the hot path).
            props = message.properties
            deadline = message.expiry_deadline
            # No publisher: it only decides No Local [MQTT-3.8.3-3] while the message is routed, which
            # is over once it is queued; and each byte of the row reaches the disk about four times
            # (log, checkpoint, and both again when it is delivered) (issue 12).
            store.append(
                MessageSaved,
                mid,
                message.topic,
                message.payload,
                message.qos,
                message.retain,
                None if props is NO_PROPERTIES else property_block(props),
                None if deadline is None else wall_time(deadline),
                None,
            )
        message.store_refs += 1
        delivery.store_seq = seq = next(store.delivery_seqs)
        sub_ids = delivery.subscription_ids
        ids = ",".join(map(str, sub_ids)) if sub_ids else ""
        return store.append(
            DeliveryQueued, seq, session.client_id, message.store_id, delivery.qos, delivery.retain, ids
        )

    def delivery_sent(self, session: Session, delivery: Delivery, packet_id: int) -> int:
        seq = delivery.store_seq
        if not seq:
            return 0
        if delivery.qos == 1:  # only QoS 2 must wait: a QoS 1 resend may repeat
            self.store.record_sent_qos1(seq, packet_id)
            return 0
        return self.store.append(DeliveryState, seq, packet_id, 2)

    def delivery_pubrec(self, session: Session, delivery: Delivery, packet_id: int) -> int:
        seq = delivery.store_seq
        return self.store.append(DeliveryState, seq, packet_id, 3) if seq else 0

    def delivery_finished(self, session: Session, delivery: Delivery) -> None:
        seq = delivery.store_seq
        if not seq:
            return
        delivery.store_seq = 0
        # Nothing waits for it: a delivery the crash undoes is delivered again (QoS 1), or its PUBREL
        # is (QoS 2, already answered by PUBCOMP): never a second copy of a QoS 2 message.
        self.store.record_delivery_gone(seq)
        self._release_message(delivery.message)

    def delivery_acknowledged(self, session: Session, delivery: Delivery) -> None:
        """Its subscriber acknowledged it (PUBACK, PUBCOMP): finished; and when that was the last stored
        delivery of a message whose publisher's PUBACK waits for those alone, that PUBACK may go
        (`Message.on_settled`). Only acknowledgements settle: a delivery dropped or expired leaves the
        PUBACK to its commit, which keeps the disk's pace on a publisher that floods a full queue."""
        message = delivery.message
        self.delivery_finished(session, delivery)
        settled = message.on_settled
        if settled is not None and message.store_refs == 0:
            message.on_settled = None
            settled()

    def _release_message(self, message: Message) -> None:
        message.store_refs -= 1
        if message.store_refs <= 0 and message.store_id:
            self.store.record_message_gone(message.store_id)
            message.store_id = 0
            message.store_refs = 0

    def message_gone(self, message_id: int) -> int:
        """A stored message no delivery uses (or that cannot be read back)."""
        return self.store.append(MessageGone, message_id)

    # --- inbound QoS 2 ----------------------------------------------------------------------------

    def inbound_received(self, session: Session, packet_id: int) -> int:
        return self.store.append(InboundReceived, session.client_id, packet_id)

    def inbound_released(self, session: Session, packet_id: int) -> int:
        return self.store.append(InboundReleased, session.client_id, packet_id)

    # --- sessions and subscriptions -------------------------------------------------------------

    def track(self, session: Session) -> None:
        """From now on ``session`` records its progress here (it outlives its connection), and a
        delivery its queue discards is finished in the store too."""
        session.journal = self
        session.outbox.on_discard = functools.partial(self.delivery_finished, session)

    def untrack(self, session: Session) -> None:
        """``session`` no longer outlives its connection: its rows go, and it records nothing more."""
        self.session_gone(session)
        session.journal = None
        session.outbox.on_discard = None

    def session_saved(self, session: Session, protocol_level: int) -> int:
        return self.store.append(SessionSaved, session.client_id, protocol_level, session.expiry_interval)

    def session_away(self, session: Session) -> int:
        return self.store.append(SessionAway, session.client_id, time.time())

    def session_gone(self, session: Session) -> int:
        for delivery in list(session.outbox) + [f.delivery for f in session.inflight.values()]:
            if delivery.store_seq:
                delivery.store_seq = 0
                self._release_message(delivery.message)
        return self.store.append(SessionGone, session.client_id)

    def session_gone_by_id(self, client_id: str) -> int:
        """The stored session of ``client_id`` goes (no session object holds its deliveries)."""
        return self.store.append(SessionGone, client_id)

    def subscription_saved(self, session: Session, topic_filter: str, options: SubscriptionOptions) -> int:
        return self.store.append(
            SubscriptionSaved,
            session.client_id,
            topic_filter,
            options.qos,
            options.no_local,
            options.retain_as_published,
            int(options.retain_handling),
            options.subscription_id,
        )

    def subscription_removed(self, session: Session, topic_filter: str) -> int:
        return self.store.append(SubscriptionRemoved, session.client_id, topic_filter)

    # --- retained messages and delayed wills ------------------------------------------------------

    def retained_set(self, message: Message) -> int:
        return self.store.append(
            RetainedSet,
            message.topic,
            message.payload,
            message.qos,
            property_block(message.properties),
            wall_time(message.expiry_deadline),
        )

    def retained_cleared(self, topic: str) -> int:
        return self.store.append(RetainedCleared, topic)

    def will_saved(self, client_id: str, will: Will, protocol_level: int, delay: float) -> int:
        """A will delayed by ``delay`` seconds: it fires then, even after a restart."""
        return self.store.append(
            WillSaved,
            client_id,
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            property_block(will.properties) if protocol_level == MQTT_5 else None,
            protocol_level,
            time.time() + delay,
        )

    def will_gone(self, client_id: str) -> int:
        return self.store.append(WillGone, client_id)

    # --- the bridges' outboxes --------------------------------------------------------------------

    def bridge_queued(
        self,
        bridge: str,
        seq: int,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        content_type: str | None,
        queued_at: float,
        expires_at: float | None,
        user_properties: UserProperties = (),
    ) -> int:
        return self.store.append(
            BridgeQueued,
            bridge,
            seq,
            topic,
            payload,
            qos,
            retain,
            content_type,
            queued_at,
            expires_at,
            user_properties_block(user_properties),
        )

    def bridge_dropped(self, bridge: str, seq: int) -> int:
        return self.store.append(BridgeDropped, bridge, seq)

    def bridge_forwarded(self, bridge: str, upto_seq: int) -> int:
        """Everything up to ``upto_seq`` is in the upstream log: out of the outbox; the cursor moves."""
        return self.store.append(BridgeForwarded, bridge, upto_seq)

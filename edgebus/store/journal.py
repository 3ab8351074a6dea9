"""The session journal backed by the store: turns protocol progress into store operations."""

from __future__ import annotations

import time

import trio

from edgebus.core.message import Message
from edgebus.core.outbox import Delivery
from edgebus.core.session import Session
from edgebus.protocol.enums import PacketType
from edgebus.protocol.packets import NO_PROPERTIES, Properties
from edgebus.protocol.properties import encode_properties
from edgebus.store.committer import Store


def wall_time(deadline: float | None) -> float | None:
    """A trio-clock deadline as wall-clock time (the store outlives the process's clock)."""
    if deadline is None:
        return None
    return time.time() + (deadline - trio.current_time())


def property_block(props: Properties) -> bytes | None:
    return None if props is NO_PROPERTIES else encode_properties(props, PacketType.PUBLISH)


class StoreJournal:
    """Implements `edgebus.core.session.Journal` (and what the broker records) on a `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- messages and deliveries ------------------------------------------------------------------

    def delivery_queued(self, session: Session, delivery: Delivery) -> int:
        """A QoS 1/2 delivery queued for a persistent session: store it (and its message, once)."""
        store = self.store
        message = delivery.message
        if not message.store_id:
            message.store_id = store.new_message_id()
            store.op(
                "msg",
                message.store_id,
                message.topic,
                message.payload,
                message.qos,
                int(message.retain),
                property_block(message.properties),
                wall_time(message.expiry_deadline),
                message.publisher_id,
            )
        message.store_refs += 1
        delivery.store_seq = seq = store.new_delivery_seq()
        ids = ",".join(str(i) for i in delivery.subscription_ids)
        return store.op(
            "dlv", seq, session.client_id, message.store_id, delivery.qos, int(delivery.retain), ids
        )

    def delivery_sent(self, session: Session, delivery: Delivery, packet_id: int) -> int:
        seq = delivery.store_seq
        if not seq:
            return 0
        qos = delivery.qos
        batch = self.store.op("dlv_state", packet_id, 1 if qos == 1 else 2, seq)
        return batch if qos == 2 else 0  # only QoS 2 must wait: a QoS 1 resend may repeat

    def delivery_pubrec(self, session: Session, delivery: Delivery, packet_id: int) -> int:
        seq = delivery.store_seq
        return self.store.op("dlv_state", packet_id, 3, seq) if seq else 0

    def delivery_finished(self, session: Session, delivery: Delivery) -> None:
        seq = delivery.store_seq
        if not seq:
            return
        delivery.store_seq = 0
        self.store.op("dlv_gone", seq)
        self._release_message(delivery.message)

    def _release_message(self, message: Message) -> None:
        message.store_refs -= 1
        if message.store_refs <= 0 and message.store_id:
            self.store.op("msg_gone", message.store_id)
            message.store_id = 0
            message.store_refs = 0

    # --- inbound QoS 2 ----------------------------------------------------------------------------

    def inbound_received(self, session: Session, packet_id: int) -> int:
        return self.store.op("in2", session.client_id, packet_id)

    def inbound_released(self, session: Session, packet_id: int) -> int:
        return self.store.op("in2_gone", session.client_id, packet_id)

    # --- sessions -------------------------------------------------------------------------------

    def session_saved(self, session: Session, protocol_level: int) -> int:
        return self.store.op("session", session.client_id, protocol_level, session.expiry_interval, None)

    def session_away(self, session: Session) -> int:
        return self.store.op("session_away", time.time(), session.client_id)

    def session_gone(self, session: Session) -> int:
        for delivery in list(session.outbox) + [f.delivery for f in session.inflight.values()]:
            if delivery.store_seq:
                delivery.store_seq = 0
                self._release_message(delivery.message)
        return self.store.op("session_gone", session.client_id)

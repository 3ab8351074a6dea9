"""Fan-out: one message to every matching session's queue (hop 4 of the publish path), shared
subscriptions, retained messages, and the bridges' outboxes. Synchronous: no await, no task per
message. Each call returns the store batch its writes went into, so the caller's acknowledgement
can wait for exactly that commit."""

from __future__ import annotations

from edgebus.bridge.runner import NOT_ROUTED, Bridge
from edgebus.core.message import Message
from edgebus.core.outbox import Delivery, OverflowPolicy
from edgebus.core.router import RetainedIndex, Router, SharedGroup
from edgebus.core.session import Session, SubscriptionOptions
from edgebus.core.stats import Stats
from edgebus.protocol.enums import ReasonCode
from edgebus.server.admission import Admission
from edgebus.store import StoreJournal


class Fanout:
    """Routes messages into session queues. ``sessions``, ``router`` and ``retained`` are the broker's
    state, shared with the session lifecycle (server.sessions) and the SUBSCRIBE handling."""

    def __init__(
        self,
        sessions: dict[str, Session],
        router: Router[SubscriptionOptions],
        retained: RetainedIndex[Message],
        bridges: list[Bridge],
        journal: StoreJournal | None,
        admission: Admission,
        overflow: OverflowPolicy,
        stats: Stats,
    ) -> None:
        self.sessions = sessions
        self.router = router
        self.retained = retained
        self.bridges = bridges
        self.journal = journal
        self.admission = admission
        self.overflow = overflow
        self.stats = stats
        self.store_full = False  # the store reached [storage] max_bytes

    def publish(self, message: Message, publisher: Session | None) -> tuple[int, int, bool]:
        """Route one message to every matching session's outbox. Returns the reason code for the
        publisher's PUBACK/PUBREC — 0x00, 0x10 (no matching subscribers) or 0x97 (a queue refused) —
        and the store batch that holds what the message wrote (0: nothing to wait for), and whether its
        stored deliveries are all it wrote (then its PUBACK may also go once they are all finished: see
        `ConnectionOutput.settled`; not when a retained message or a bridge's outbox row is on the way)."""
        topic = message.topic
        if publisher is not None and topic.startswith("$SYS"):
            # $SYS is the broker's own; clients may not publish there
            return ReasonCode.NOT_AUTHORIZED, 0, False
        wait = 0
        bridged = False
        pinned = False  # a write other than the deliveries: the retained store, an outbox
        if self.bridges:
            # Into the bridges' outboxes first: a full outbox under "refuse" refuses the whole message
            # (0x97), before anything else happened to it.
            for bridge in self.bridges:
                batch = bridge.offer(message)
                if batch is None:
                    return ReasonCode.QUOTA_EXCEEDED, wait, False
                if batch != NOT_ROUTED:
                    bridged = True
                    if batch:
                        wait = batch
                        pinned = True
        if message.retain:
            if message.payload:
                self.retained.set(topic, message)  # [MQTT-3.3.1-5]
            else:
                self.retained.clear(topic)  # [MQTT-3.3.1-10], [MQTT-3.3.1-11]
            journal = self.journal
            if journal is not None and not topic.startswith("$SYS"):  # wills too; $SYS is rebuilt
                wait = journal.retained_set(message) if message.payload else journal.retained_cleared(topic)
                pinned = True
        matches, groups = self.router.match(topic)
        if not matches and not groups:
            return (ReasonCode.SUCCESS if bridged else ReasonCode.NO_MATCHING_SUBSCRIBERS), wait, False
        sessions = self.sessions
        refused = False
        publisher_id = message.publisher_id
        if len(matches) == 1 and not groups:
            client_id, opts = matches[0]
            if opts.no_local and client_id == publisher_id:  # [MQTT-3.8.3-3]
                return ReasonCode.SUCCESS, wait, False
            session = sessions.get(client_id)
            if session is not None:
                sub_ids = () if opts.subscription_id is None else (opts.subscription_id,)
                retain = message.retain and opts.retain_as_published  # [MQTT-3.3.1-12], [MQTT-3.3.1-13]
                qos = opts.qos if opts.qos < message.qos else message.qos  # [MQTT-3.8.4-8]
                batch = self.offer(session, Delivery(message, qos, retain, sub_ids))
                if batch < 0:
                    refused = True
                elif batch:
                    wait = batch
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
                batch = self.offer(session, delivery)
                if batch < 0:
                    refused = True
                elif batch:
                    wait = batch
            for group in groups:
                batch = self.offer_shared(group, message, None)
                if batch < 0:
                    refused = True
                elif batch:
                    wait = batch
        if refused and self.overflow == "refuse":
            return ReasonCode.QUOTA_EXCEEDED, wait, False
        return ReasonCode.SUCCESS, wait, not pinned

    def clear_retained(self, topic: str) -> bool:
        """Remove a retained message on an operator's request (HTTP API): nothing is delivered, unlike an
        empty retained PUBLISH. False if the topic holds none."""
        if self.retained.get(topic) is None:
            return False
        self.retained.clear(topic)
        if self.journal is not None and not topic.startswith("$SYS"):
            self.journal.retained_cleared(topic)
        return True

    def offer(self, session: Session, delivery: Delivery) -> int:
        """Queue one delivery for a session: the store batch that holds it (0: not stored), or -1
        when its queue refused it."""
        if self.admission.acl is not None and not self.admission.may_read(
            session.client_id, delivery.message.topic
        ):
            return 0  # not readable by this client (ACL): silently not delivered, as Mosquitto does
        conn = session.connection
        if conn is None and delivery.qos == 0:
            return 0  # QoS 0 is not queued for a disconnected session (§4.1: "MAY")
        if delivery.qos and session.journal is not None and self.store_full:
            # The store is at its byte budget: the new message meets the overflow policy (older
            # ones are already on disk): refused (0x97 to a v5 publisher) or dropped, counted.
            self.stats.messages_dropped += 1
            return -1 if self.overflow == "refuse" else 0
        if not session.outbox.offer(delivery):
            return -1
        wait = 0
        if delivery.qos and session.journal is not None and self.journal is not None:
            wait = self.journal.delivery_queued(session, delivery)
        if conn is not None:
            conn.wake()
        return wait

    def offer_shared(
        self, group: SharedGroup[SubscriptionOptions], message: Message, skip: str | None
    ) -> int:
        """Hand a message to one member of a shared subscription, preferring connected members; as
        `offer`."""
        sessions = self.sessions

        def connected(client_id: str) -> bool:
            session = sessions.get(client_id)
            return client_id != skip and session is not None and session.connection is not None

        picked = group.pick(connected)
        if picked is None:
            picked = group.pick(lambda client_id: client_id != skip and client_id in sessions)
        if picked is None:
            return 0
        client_id, opts = picked
        sub_ids = () if opts.subscription_id is None else (opts.subscription_id,)
        delivery = Delivery(
            message, min(opts.qos, message.qos), message.retain and opts.retain_as_published, sub_ids, group
        )
        return self.offer(sessions[client_id], delivery)

    def redistribute_shared(self, session: Session) -> None:
        """Deliveries for a shared subscription that this session will not acknowledge go to
        another member of the group (§4.8.2)."""
        for delivery in session.take_shared_deliveries():
            if session.journal is not None:
                session.journal.delivery_finished(session, delivery)
            group = delivery.share_group
            assert isinstance(group, SharedGroup)
            if delivery.qos == 0:
                continue
            self.offer_shared(group, delivery.message, session.client_id)

    def send_retained(
        self, session: Session, filters: list[tuple[str, SubscriptionOptions]], now: float
    ) -> None:
        """The retained messages matching new subscriptions [MQTT-3.3.1-9]."""
        expired: list[str] = []
        for topic_filter, opts in filters:
            sub_ids = () if opts.subscription_id is None else (opts.subscription_id,)
            for topic, message in self.retained.match(topic_filter):
                if message.is_expired(now):
                    expired.append(topic)  # [MQTT-3.3.2-5]: an expired retained message is gone
                    continue
                # Sent because of a new subscription: RETAIN is 1 [MQTT-3.3.1-8] (v5: -9).
                self.offer(session, Delivery(message, min(opts.qos, message.qos), True, sub_ids))
        for topic in expired:
            self.retained.clear(topic)

"""SUBSCRIBE and UNSUBSCRIBE (trio side): the grants core.subscribe decides, applied to the router and
the session, journaled for a persistent session, and the retained messages they bring."""

from __future__ import annotations

import trio

from edgebus.core.connect import ServerFeatures
from edgebus.core.router import Router
from edgebus.core.session import SubscriptionOptions
from edgebus.core.subscribe import plan_subscribe, refusal_code, sends_retained
from edgebus.protocol.enums import ReasonCode
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import SubAck, Subscribe, UnsubAck, Unsubscribe
from edgebus.server.admission import Admission
from edgebus.server.connection import ClientConnection
from edgebus.server.fanout import Fanout
from edgebus.store import StoreJournal


class Subscriptions:
    def __init__(
        self,
        max_qos: int,
        features: ServerFeatures,
        fanout: Fanout,
        admission: Admission,
        journal: StoreJournal | None,
    ) -> None:
        self.max_qos = max_qos
        self.features = features
        self.fanout = fanout
        self.router: Router[SubscriptionOptions] = fanout.router
        self.admission = admission
        self.journal = journal

    def subscribe(self, client: ClientConnection, subscribe: Subscribe) -> None:
        conn = client.conn
        session = conn.session
        assert session is not None
        admission = self.admission
        level = conn.protocol_level
        try:
            plan = plan_subscribe(subscribe, level, self.max_qos, self.features, conn.is_bridge)
        except ProtocolError as error:
            client.close(error.reason_code, error.message)
            return
        wait = 0  # a persistent session's SUBACK waits until its subscriptions are on disk
        codes: list[int] = []
        to_send: list[tuple[str, SubscriptionOptions]] = []
        for grant in plan:
            if isinstance(grant, int):
                codes.append(grant)
                continue
            if admission.screening_subscribe and (  # ACL, topic limits, subscription quota
                refused := admission.screen_subscription(
                    client, session, grant.topic_filter, grant.match_filter
                )
            ):
                codes.append(refusal_code(refused, level))
                continue
            opts = grant.options
            is_new = self.router.subscribe(session.client_id, grant.topic_filter, opts)
            session.subscriptions[grant.topic_filter] = opts
            if session.journal is not None and self.journal is not None:
                wait = self.journal.subscription_saved(session, grant.topic_filter, opts)
            codes.append(opts.qos)
            if sends_retained(grant, is_new):
                to_send.append((grant.match_filter, opts))
        conn.send(SubAck(subscribe.packet_id, tuple(codes)), wait)  # [MQTT-3.8.4-1]
        if to_send:
            self.fanout.send_retained(session, to_send, trio.current_time())

    def unsubscribe(self, client: ClientConnection, unsubscribe: Unsubscribe) -> None:
        conn = client.conn
        session = conn.session
        assert session is not None
        codes: list[int] = []
        for topic_filter in unsubscribe.topic_filters:
            existed = self.router.unsubscribe(session.client_id, topic_filter)
            session.subscriptions.pop(topic_filter, None)
            if existed and session.journal is not None and self.journal is not None:
                self.journal.subscription_removed(session, topic_filter)
            codes.append(ReasonCode.SUCCESS if existed else ReasonCode.NO_SUBSCRIPTION_EXISTED)
        conn.send(UnsubAck(unsubscribe.packet_id, tuple(codes)))  # [MQTT-3.10.4-4]

"""Sans-IO per-client MQTT state that outlives connections: the session (§4.1), its subscriptions,
its queue, and its QoS 1/2 flows in both directions; and where a persistent one records its progress.

Nothing here awaits, and nothing imports trio, sockets or the store (a test walks the imports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edgebus.core.flows import FlowState, OutboundFlows
from edgebus.core.outbox import Delivery, Outbox
from edgebus.protocol.enums import RetainHandling

#: Session Expiry Interval meaning "never expires" (§3.1.2.11.2).
SESSION_NEVER_EXPIRES = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    """What the broker keeps of one subscription (§3.8.3.1)."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: RetainHandling = RetainHandling.SEND_ON_SUBSCRIBE
    subscription_id: int | None = None


class Inflight:
    """One outbound QoS 1/2 delivery sent and not yet acknowledged, and where its flow stands."""

    __slots__ = ("delivery", "state")

    def __init__(self, delivery: Delivery, state: FlowState) -> None:
        self.delivery = delivery
        self.state = state

    def resend(self, protocol_level: int, packet_id: int) -> bytes:
        """The PUBLISH again, on a connection that resumed the session: DUP set [MQTT-3.3.1-1]."""
        d = self.delivery
        return d.message.encode(
            protocol_level,
            d.qos,
            d.retain,
            dup=True,
            packet_id=packet_id,
            subscription_ids=d.subscription_ids,
        )


class Attachment(Protocol):
    """The connection a session is attached to, as the session's users see it (core.server's
    Connection is the one implementation)."""

    protocol_level: int

    def wake(self) -> None: ...


class Journal(Protocol):
    """Where a persistent session records its progress (the durable store implements it).

    Each method only queues a change and returns the number of the commit that will hold it
    (0: nothing to wait for); a reply that must not outrun the disk waits for that commit."""

    def delivery_sent(self, session: Session, delivery: Delivery, packet_id: int) -> int: ...
    def delivery_pubrec(self, session: Session, delivery: Delivery, packet_id: int) -> int: ...
    def delivery_finished(self, session: Session, delivery: Delivery) -> None: ...
    def delivery_acknowledged(self, session: Session, delivery: Delivery) -> None: ...
    def inbound_received(self, session: Session, packet_id: int) -> int: ...
    def inbound_released(self, session: Session, packet_id: int) -> int: ...


class Session:
    """The server-side session of one client id (§4.1): it outlives connections unless it expires.

    Holds the subscriptions, the queue of deliveries not yet sent, the outbound deliveries awaiting
    acknowledgement, and the inbound QoS 2 packet ids awaiting PUBREL.
    """

    __slots__ = (
        "client_id",
        "connection",
        "expiry_interval",
        "inbound_qos2",
        "inflight",
        "journal",
        "outbox",
        "subscriptions",
    )

    def __init__(self, client_id: str, outbox: Outbox, expiry_interval: int = 0) -> None:
        self.client_id = client_id
        self.outbox = outbox
        self.expiry_interval = expiry_interval
        self.subscriptions: dict[str, SubscriptionOptions] = {}
        # Outbound QoS 1/2 deliveries by packet id, in the order they were first sent, which is
        # the order they are resent in after a reconnect [MQTT-4.4.0-1]; and the packet ids.
        self.inflight: OutboundFlows[Inflight] = OutboundFlows()
        # Inbound QoS 2 packet ids PUBREC'd and awaiting PUBREL: a PUBLISH reusing one is a
        # duplicate and is not delivered again [MQTT-4.3.3-10].
        self.inbound_qos2: set[int] = set()
        self.connection: Attachment | None = None
        # Set for a session that outlives its connection and a broker restart (durable store).
        self.journal: Journal | None = None

    def take_shared_deliveries(self) -> list[Delivery]:
        """Remove and return the shared-subscription deliveries this session has not yet received
        (queued, or sent and not acknowledged, but not those past PUBREC, which the client has)."""
        taken = self.outbox.remove_if(lambda d: d.share_group is not None)
        withdrawn = self.inflight.withdraw(lambda flight: flight.delivery.share_group is not None)
        taken.extend(flight.delivery for flight in withdrawn)
        return taken

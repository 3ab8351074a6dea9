"""What the bridge asks of an upstream engine: the interface each sink (MQTT, JetStream, Kafka) implements.

The runner (edgebus.bridge.runner) owns the outbox, its order, the window, the rate, reconnects and the
state; a sink only knows how to talk to one engine. Adding an engine is one module with a class that has
this shape (a `SinkFactory`), plus its branch in `edgebus.bridge.sinks.sink_class`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from edgebus.bridge.rules import TopicMap
from edgebus.config import BridgeConfig
from edgebus.protocol.packets import UserProperties

__all__ = [
    "MESSAGE_ID_HEADER",
    "MESSAGE_ID_PROPERTY",
    "BridgeIdentity",
    "Deliver",
    "InboundMessage",
    "Record",
    "Sink",
    "SinkBase",
    "SinkError",
    "SinkFactory",
    "Uplink",
]

#: The MQTT v5 user property that carries a forwarded message's stable id.
MESSAGE_ID_PROPERTY = "edgebus-msg-id"
#: The NATS header that carries it: JetStream de-duplicates on it within the stream's window.
MESSAGE_ID_HEADER = "Nats-Msg-Id"


@dataclass(frozen=True, slots=True)
class BridgeIdentity:
    """Who is forwarding: the gateway, and the epoch of its store (a new store starts new ids)."""

    gateway_id: str
    epoch: str

    @property
    def id_prefix(self) -> str:
        return f"{self.gateway_id}:{self.epoch}:"

    def message_id(self, seq: int) -> str:
        """The stable id of outbox entry ``seq``: ``<gateway>:<epoch>:<seq>``."""
        return f"{self.gateway_id}:{self.epoch}:{seq}"

    def seq_of(self, message_id: str | None) -> int:
        """The outbox sequence in one of our ids; 0 for an id of another gateway or store (or none)."""
        if not message_id or not message_id.startswith(self.id_prefix):
            return 0
        tail = message_id[len(self.id_prefix) :]
        return int(tail) if tail.isdigit() else 0


@dataclass(frozen=True, slots=True)
class Record:
    """One outbox entry on its way upstream."""

    seq: int  # outbox sequence: strictly increasing per bridge and store, never reused
    message_id: str  # BridgeIdentity.message_id(seq)
    topic: str  # remote MQTT topic, or NATS subject, already remapped by the topic rule
    payload: bytes  # already transformed
    qos: int  # the rule's QoS (MQTT upstream)
    retain: bool
    content_type: str | None  # the device's Content Type, or "application/json" after the cbor-json transform
    expiry_interval: int | None = None  # seconds left of the MQTT 5 Message Expiry Interval [MQTT-3.3.2-6]
    # The device's MQTT 5 User Properties, in order, names may repeat [MQTT-3.3.2-18]; () when none.
    user_properties: UserProperties = ()


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message from upstream matched by an in rule, before remapping to the local topic."""

    topic: str  # remote MQTT topic, or NATS subject, as received
    payload: bytes
    qos: int
    retain: bool


#: Hands an inbound message to the broker; returns once it is safe locally (committed to the store),
#: after which the sink acknowledges it upstream.
Deliver = Callable[[InboundMessage], Awaitable[None]]


class SinkError(Exception):
    """The uplink failed (refused, timed out, broke): the runner closes it and reconnects after a backoff.
    Nothing in the batch that raised it counts as forwarded.

    ``rejected_seq``: the first record the upstream explicitly refused (an error acknowledgement), if
    that is why. Later records of the batch may be in the log all the same, so the runner must not take
    the log's last id as proof that this one is there: it sends it again even if `resume` says otherwise.
    """

    def __init__(self, message: str, rejected_seq: int | None = None) -> None:
        super().__init__(message)
        self.rejected_seq = rejected_seq


class Uplink(Protocol):
    """One live connection to the upstream."""

    async def resume(self, first_seq: int, last_seq: int) -> int:
        """Called once per connection, before any `send`, with the outbox's unacknowledged range
        (``first_seq > last_seq`` when it is empty). Returns the highest of our sequences the log
        already holds (0 if none or unknown): the runner skips everything up to it. Raises SinkError."""
        ...

    async def send(self, records: Sequence[Record]) -> None:
        """Forward ``records`` in order; return once the upstream acknowledged every one of them.
        Raises SinkError on a failure or after the bridge's ack_timeout."""
        ...


class SinkBase:
    """What every sink is made with (its class is the bridge's `SinkFactory`): the bridge's configuration,
    the identity its message ids carry, its topic rules, where in-rule messages go, and the resolved client
    id."""

    def __init__(
        self,
        bridge: BridgeConfig,
        identity: BridgeIdentity,
        topic_map: TopicMap,
        deliver: Deliver,
        client_id: str,
    ) -> None:
        self.bridge = bridge
        self.identity = identity
        self.topic_map = topic_map
        self.deliver = deliver
        self.client_id = client_id
        #: "<requested>-><granted>" once the upstream took a lower QoS than an out rule asks for; shown in
        #: $SYS as .../qos_downgraded, logged once.
        self.qos_downgraded: str | None = None

    def note_qos_downgrade(self, requested: int, granted: int) -> None:
        """The upstream grants at most ``granted``: forwarding goes on at that QoS (at least once for QoS 1,
        with duplicates possible after a lost acknowledgement). Said once per requested QoS."""
        downgrade = f"{requested}->{granted}"
        if self.qos_downgraded == downgrade:
            return
        self.qos_downgraded = downgrade
        logging.getLogger("edgebus.bridge").warning(
            "bridge %s: the upstream grants at most QoS %d; out rules asking for QoS %d are forwarded"
            " at QoS %d (at least once: a lost acknowledgement can bring a duplicate)",
            self.bridge.name,
            granted,
            requested,
            granted,
        )


class Sink(Protocol):
    """An upstream engine; `connect` opens one `Uplink` for the body of an ``async with``. In rules
    start receiving inside it and call the ``deliver`` the sink was made with."""

    def connect(self) -> AbstractAsyncContextManager[Uplink]: ...


#: How the runner makes its bridge's sink, from the bridge's configuration, the identity its message ids
#: carry, its topic rules, where in-rule messages go and its client id: a sink class (SinkBase's
#: signature) is one. The runner is given it (`edgebus.bridge.sinks.sink_class` picks it by kind).
SinkFactory = Callable[[BridgeConfig, BridgeIdentity, TopicMap, Deliver, str], Sink]

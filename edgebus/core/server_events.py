"""What the server-role connection machine and the broker say to each other: limits and events.

The vocabulary of ``edgebus.core.server.Connection`` apart from the machine itself, as h11 keeps its
events apart from its connection: the limits the broker gives each connection, and the events the
connection hands back, one at a time, for the broker to act on.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgebus.core.message import Message
from edgebus.protocol.errors import ProtocolError
from edgebus.protocol.packets import Connect, Disconnect, Subscribe, Unsubscribe

#: What CPython spends on one small reply besides its wire bytes (a bytes object's header and its list
#: slot, or a held reply's tuple), so that `Connection.output_bytes` bounds memory, not just wire bytes.
REPLY_OVERHEAD_BYTES = 64


@dataclass(frozen=True, slots=True)
class ConnectReceived:
    connect: Connect


@dataclass(slots=True)  # not frozen: one per PUBLISH, and frozen __init__ is slower
class MessageReceived:
    """A PUBLISH to route. For QoS 1/2 the broker calls `Connection.acknowledge` once it is safe."""

    message: Message
    packet_id: int


@dataclass(frozen=True, slots=True)
class SubscribeReceived:
    subscribe: Subscribe


@dataclass(frozen=True, slots=True)
class UnsubscribeReceived:
    unsubscribe: Unsubscribe


@dataclass(frozen=True, slots=True)
class DisconnectReceived:
    disconnect: Disconnect


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The connection must close; on v5 with a DISCONNECT carrying ``error.reason_code`` first."""

    error: ProtocolError


Event = (
    ConnectReceived
    | MessageReceived
    | SubscribeReceived
    | UnsubscribeReceived
    | DisconnectReceived
    | ProtocolViolation
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What this broker announces and enforces on every connection."""

    max_packet_size: int = 268_435_460
    receive_maximum: int = 65535  # our inbound window
    max_inflight: int = 65535  # cap on our outbound window
    topic_alias_maximum: int = 0  # inbound aliases we accept
    max_qos: int = 2
    retain_available: bool = True

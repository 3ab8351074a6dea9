"""The client's outgoing queue: the messages `publish` took and not yet sent, in order.

Part of the client's session (§4.1), with the in-flight flows (edgebus.core.flows): a message leaves
the queue when the send window lets it out, and comes back to the front when the server lost the
session before acknowledging it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container

from edgebus.core.flows import FlowState, OutboundFlows
from edgebus.protocol.encoder import encode_publish
from edgebus.protocol.packets import Properties


class OutgoingMessage:
    """A PUBLISH the application asked for, from `publish` to its acknowledgement. ``fixed_id`` is a
    packet id the application chose (0: allocate one when sent); ``dup`` sets DUP on the first send."""

    __slots__ = (
        "dup",
        "fixed_id",
        "packet_id",
        "payload",
        "properties",
        "qos",
        "retain",
        "state",
        "token",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties,
        token: object,
        fixed_id: int = 0,
        dup: bool = False,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.token = token
        self.fixed_id = fixed_id
        self.dup = dup
        self.packet_id = 0
        self.state = FlowState.QUEUED

    def encode(self, protocol_level: int, dup: bool = False) -> bytes:
        """The PUBLISH; ``dup`` for a resend [MQTT-3.3.1-1]."""
        return encode_publish(
            self.topic,
            self.payload,
            qos=self.qos,
            retain=self.retain,
            dup=dup or self.dup,
            packet_id=self.packet_id or None,
            protocol_level=protocol_level,
            properties=self.properties,
        )


def check_publish(topic: str, qos: int, packet_id: int, dup: bool) -> None:
    """ValueError unless a message with these may be published (``packet_id`` 0: allocate one)."""
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS must be 0, 1 or 2, not {qos!r}")
    if not topic or "+" in topic or "#" in topic:
        # [MQTT-3.3.2-2]: the Topic Name in a PUBLISH MUST NOT contain wildcard characters.
        raise ValueError(f"not a valid topic name: {topic!r}")
    if qos == 0 and (packet_id or dup):
        # [MQTT-2.2.1-2]: no packet id with QoS 0; [MQTT-3.3.1-2]: DUP 0 for every QoS 0 message.
        raise ValueError("a QoS 0 message has neither a packet identifier nor DUP")
    if not 0 <= packet_id <= 0xFFFF:
        raise ValueError(f"packet identifier must be 1..65535 (0: allocate), not {packet_id!r}")


class OutgoingQueue:
    """The queued messages, and the packet ids they chose: the allocator leaves those alone, so an id
    it hands out (to a SUBSCRIBE ...) cannot collide with one a queued message will use [MQTT-2.2.1-3]."""

    __slots__ = ("_chosen", "_messages")

    def __init__(self) -> None:
        self._messages: deque[OutgoingMessage] = deque()
        self._chosen: dict[int, int] = {}  # packet id -> how many queued messages chose it

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:
        return bool(self._messages)

    def append(self, message: OutgoingMessage, front: bool = False) -> None:
        """Queue ``message`` last, or first (one that goes out again before what was queued since)."""
        if front:
            self._messages.appendleft(message)
        else:
            self._messages.append(message)
        fixed = message.fixed_id
        if fixed:
            self._chosen[fixed] = self._chosen.get(fixed, 0) + 1

    def requeue(self, messages: list[OutgoingMessage]) -> None:
        """Put ``messages`` (taken back from flight, in first-send order) first, as new ones."""
        for message in reversed(messages):
            message.packet_id = 0
            self.append(message, front=True)

    def head_blocked(self, inflight: OutboundFlows[OutgoingMessage], requests: Container[int]) -> bool:
        """Whether the first queued message cannot go out now: the send window is full, or the packet
        id it chose is still used by another flow or request [MQTT-2.2.1-3]."""
        message = self._messages[0]
        if not message.qos:
            return False
        if not inflight.has_room():
            return True
        fixed = message.fixed_id
        return bool(fixed) and (fixed in inflight or fixed in requests)

    def popleft(self) -> OutgoingMessage:
        message = self._messages.popleft()
        fixed = message.fixed_id
        if fixed:
            left = self._chosen[fixed] - 1
            if left:
                self._chosen[fixed] = left
            else:
                del self._chosen[fixed]
        return message

    def chose(self, packet_id: int) -> bool:
        """Whether a queued message chose ``packet_id``."""
        return packet_id in self._chosen

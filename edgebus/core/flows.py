"""What both roles share of the QoS 1/2 flows: the sender's states and packet-id allocation.

The broker's session (edgebus.core.session) and the client (edgebus.core.client) each drive these flows
from their own side; the states and the allocation rule are one definition (§2.2.1, §4.3)."""

from __future__ import annotations

import enum
from collections.abc import Callable

MAX_PACKET_ID = 0xFFFF


class FlowState(enum.Enum):
    """Where an outbound QoS 1/2 message stands, sender side (§4.3.2, §4.3.3)."""

    QUEUED = 0  # not sent on this session yet
    AWAIT_PUBACK = 1
    AWAIT_PUBREC = 2
    AWAIT_PUBCOMP = 3


def allocate_packet_id(start: int, in_use: Callable[[int], bool]) -> tuple[int, int]:
    """The first packet id from ``start`` on (wrapping after 65535, never 0) that no flow uses
    [MQTT-2.2.1-3]; returns it and where the next search starts."""
    pid = start
    for _ in range(MAX_PACKET_ID):
        if not in_use(pid):
            return pid, (pid + 1 if pid < MAX_PACKET_ID else 1)
        pid = pid + 1 if pid < MAX_PACKET_ID else 1
    raise RuntimeError("no free packet identifier")  # windows are capped far below 65535

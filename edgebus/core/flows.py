"""The QoS 1/2 message flows of both roles (§4.3, §4.4, §4.9) and their topic aliases (§3.3.2.3.4).

Each side of a QoS 1/2 flow follows the same rules whichever role, client or server, it plays. Those
rules are one table here, `TABLE`: for the state a flow is in (`FlowState`) and what happens to it
(`Trigger`: a packet from the peer, or a step of the side that keeps the flow), the state that follows,
the packet to answer with and whether the flow ended. `OutboundFlows` (the sender's side),
`InboundFlows` (the receiver's side) and `TopicAliases` keep the bookkeeping by packet id and apply the
table. The server role (edgebus.core.server) and the client role (edgebus.core.client) drive them and
act on what each `Transition` says happened: the server records a flow that advanced or ended in the
session's journal and holds the reply until the store has committed it; the client tells its
application. As in h11's _state.py, nothing here does I/O, reads a clock or knows which role drives it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from edgebus.protocol.encoder import encode
from edgebus.protocol.enums import MQTT_5, PacketType, ReasonCode
from edgebus.protocol.errors import ProtocolError, protocol_violation
from edgebus.protocol.packets import PubAck, PubComp, PubRec, PubRel

MAX_PACKET_ID = 0xFFFF


class FlowState(enum.IntEnum):
    """Where one QoS 1/2 flow stands, on the side that keeps it: named for what that side waits for.

    An IntEnum because the table is looked up on every acknowledgement, and int hashing is cheap."""

    QUEUED = 0  # sender: not sent on this session yet
    AWAIT_PUBACK = 1  # sender: QoS 1 PUBLISH sent, unacknowledged until PUBACK [MQTT-4.3.2-3]
    AWAIT_PUBREC = 2  # sender: QoS 2 PUBLISH sent, unacknowledged until PUBREC [MQTT-4.3.3-3]
    AWAIT_PUBCOMP = 3  # sender: PUBREL sent, unacknowledged until PUBCOMP [MQTT-4.3.3-5]
    RECEIVED_QOS1 = 4  # receiver: QoS 1 PUBLISH handed on, its PUBACK not sent yet
    RECEIVED_QOS2 = 5  # receiver: QoS 2 PUBLISH handed on, its PUBREC not sent yet
    AWAIT_PUBREL = 6  # receiver: PUBREC sent, the packet id held until PUBREL [MQTT-4.3.3-10]
    FREE = 7  # no flow uses the packet id: none ever did, or its flow ended


class Trigger(enum.IntEnum):
    """What happens to a flow: a packet from the peer, or a step of the side that keeps the flow."""

    # The sender's own steps.
    SEND_QOS1 = 1  # the QoS 1 PUBLISH goes out
    SEND_QOS2 = 2  # the QoS 2 PUBLISH goes out
    RELEASE = 3  # a PUBREL for a packet id without its message (a new process ending an old flow)
    RESUME = 4  # a new connection resumed the session
    WITHDRAW = 5  # the message is taken back, for the queue or another receiver
    # Packets the sender receives.
    PUBACK = 6
    PUBREC = 7  # with a Reason Code below 0x80
    PUBREC_FAILED = 8  # with a Reason Code of 0x80 or above (5.0)
    PUBCOMP = 9
    # Packets the receiver receives, and its own steps.
    PUBLISH_QOS1 = 10
    PUBLISH_QOS2 = 11
    ACCEPT = 12  # the receiver acknowledges the message: PUBACK / PUBREC below 0x80
    REFUSE = 13  # the receiver refuses the message: PUBACK / PUBREC of 0x80 or above (5.0)
    PUBREL = 14


def pubrec_trigger(reason_code: int) -> Trigger:
    """The trigger a PUBREC with ``reason_code`` is: a failure from 0x80 on (§3.5.2.1)."""
    return Trigger.PUBREC if reason_code < 0x80 else Trigger.PUBREC_FAILED


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the table: what follows when ``trigger`` meets a flow in ``state``.

    ``reply`` is the packet to send (PUBLISH: the message again, DUP set); ``reply_code`` its Reason
    Code, None for the receiver's own verdict. ``ended``: the flow is over and its packet id free.
    ``advanced``: the flow moved on to ``next_state`` (what a durable role records before it
    replies). ``deliver``: a new application message to hand on."""

    state: FlowState
    trigger: Trigger
    next_state: FlowState
    reply: PacketType | None
    reply_code: int | None
    ended: bool
    advanced: bool
    deliver: bool

    def reply_bytes(self, packet_id: int, protocol_level: int, reason_code: int = 0) -> bytes:
        """The reply (an acknowledgement, not a PUBLISH) as it goes on the wire; ``reason_code`` is
        the receiver's verdict where the row leaves the code to it (3.1.1 sends no code at all)."""
        code = reason_code if self.reply_code is None else self.reply_code
        reply = self.reply
        assert reply is not None and reply is not PacketType.PUBLISH
        if code == 0 or protocol_level != MQTT_5:
            # What encode() writes here, without building a packet: the short form, Remaining
            # Length 2 (3.1.1 has no Reason Code; 5.0 leaves out 0x00 without properties, §3.4.2.1).
            return _SHORT_ACK.pack(0x62 if reply is PacketType.PUBREL else reply << 4, 2, packet_id)
        return encode(_ACKS[reply](packet_id, code), protocol_level)


_SHORT_ACK = struct.Struct(">BBH")
_ACKS: dict[PacketType, type[PubAck | PubRec | PubRel | PubComp]] = {
    PacketType.PUBACK: PubAck,
    PacketType.PUBREC: PubRec,
    PacketType.PUBREL: PubRel,
    PacketType.PUBCOMP: PubComp,
}
_NOT_FOUND = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
_VERDICT = None  # the reply carries the receiver's own Reason Code


def _row(
    state: FlowState,
    trigger: Trigger,
    next_state: FlowState,
    reply: PacketType | None = None,
    reply_code: int | None = 0,
    deliver: bool = False,
) -> Transition:
    ended = next_state is FlowState.FREE and state is not FlowState.FREE
    advanced = next_state is not state and not ended
    return Transition(state, trigger, next_state, reply, reply_code, ended, advanced, deliver)


_S, _T, _P = FlowState, Trigger, PacketType

#: Every transition of a QoS 1/2 flow, both sides. A (state, trigger) pair not listed changes nothing
#: and sends nothing: a late or stray acknowledgement, or one meant for another kind of flow.
TABLE: tuple[Transition, ...] = (
    # --- the sender (§4.3.2, §4.3.3) ---
    _row(_S.QUEUED, _T.SEND_QOS1, _S.AWAIT_PUBACK),  # [MQTT-4.3.2-2]
    _row(_S.QUEUED, _T.SEND_QOS2, _S.AWAIT_PUBREC),  # [MQTT-4.3.3-2]
    _row(_S.AWAIT_PUBACK, _T.PUBACK, _S.FREE),  # [MQTT-4.3.2-3]; a failure code ends it too [MQTT-4.4.0-2]
    _row(_S.AWAIT_PUBREC, _T.PUBREC, _S.AWAIT_PUBCOMP, _P.PUBREL),  # [MQTT-4.3.3-4]
    _row(_S.AWAIT_PUBREC, _T.PUBREC_FAILED, _S.FREE),  # not retransmitted [MQTT-4.4.0-2], the id is free
    # Our PUBREL stays unacknowledged until PUBCOMP [MQTT-4.3.3-5]: a PUBREC now answers an earlier
    # PUBLISH, and whatever its code, the receiver has the message: PUBREL again, never the PUBLISH
    # [MQTT-4.3.3-6].
    _row(_S.AWAIT_PUBCOMP, _T.PUBREC, _S.AWAIT_PUBCOMP, _P.PUBREL),
    _row(_S.AWAIT_PUBCOMP, _T.PUBREC_FAILED, _S.AWAIT_PUBCOMP, _P.PUBREL),
    _row(_S.AWAIT_PUBCOMP, _T.PUBCOMP, _S.FREE),  # [MQTT-4.3.3-5]
    # A PUBREC for no QoS 2 flow of ours: PUBREL 0x92 Packet Identifier not found (§3.6.2.1).
    _row(_S.FREE, _T.PUBREC, _S.FREE, _P.PUBREL, _NOT_FOUND),
    _row(_S.FREE, _T.PUBREC_FAILED, _S.FREE, _P.PUBREL, _NOT_FOUND),
    _row(_S.AWAIT_PUBACK, _T.PUBREC, _S.AWAIT_PUBACK, _P.PUBREL, _NOT_FOUND),
    _row(_S.AWAIT_PUBACK, _T.PUBREC_FAILED, _S.AWAIT_PUBACK, _P.PUBREL, _NOT_FOUND),
    # Releasing an id whose message a new process does not have: the PUBREL goes out [MQTT-4.3.3-4].
    _row(_S.FREE, _T.RELEASE, _S.AWAIT_PUBCOMP, _P.PUBREL),
    # A resumed session resends what is unacknowledged with the original ids [MQTT-4.4.0-1]: the
    # PUBLISH (DUP set [MQTT-3.3.1-1]) until PUBREC, then only the PUBREL [MQTT-4.3.3-6].
    _row(_S.AWAIT_PUBACK, _T.RESUME, _S.AWAIT_PUBACK, _P.PUBLISH),
    _row(_S.AWAIT_PUBREC, _T.RESUME, _S.AWAIT_PUBREC, _P.PUBLISH),
    _row(_S.AWAIT_PUBCOMP, _T.RESUME, _S.AWAIT_PUBCOMP, _P.PUBREL),
    # A message taken back goes to the queue if the receiver may not have it; past PUBREC it does,
    # and only the PUBREL / PUBCOMP exchange is left.
    _row(_S.AWAIT_PUBACK, _T.WITHDRAW, _S.QUEUED),
    _row(_S.AWAIT_PUBREC, _T.WITHDRAW, _S.QUEUED),
    # --- the receiver (§4.3.2, §4.3.3) ---
    _row(_S.FREE, _T.PUBLISH_QOS1, _S.RECEIVED_QOS1, deliver=True),
    _row(_S.FREE, _T.PUBLISH_QOS2, _S.RECEIVED_QOS2, deliver=True),
    # A resend of a message not acknowledged yet: the acknowledgement to come answers both.
    _row(_S.RECEIVED_QOS1, _T.PUBLISH_QOS1, _S.RECEIVED_QOS1),
    _row(_S.RECEIVED_QOS2, _T.PUBLISH_QOS2, _S.RECEIVED_QOS2),
    # The acknowledgement [MQTT-4.3.2-4] [MQTT-4.3.3-8]; where it frees the id, a PUBLISH under it
    # is a new message again [MQTT-4.3.2-5] [MQTT-4.3.3-9].
    _row(_S.RECEIVED_QOS1, _T.ACCEPT, _S.FREE, _P.PUBACK, _VERDICT),
    _row(_S.RECEIVED_QOS1, _T.REFUSE, _S.FREE, _P.PUBACK, _VERDICT),
    _row(_S.RECEIVED_QOS2, _T.ACCEPT, _S.AWAIT_PUBREL, _P.PUBREC, _VERDICT),
    _row(_S.RECEIVED_QOS2, _T.REFUSE, _S.FREE, _P.PUBREC, _VERDICT),
    # Until PUBREL a resend is answered PUBREC and not handed on again [MQTT-4.3.3-10].
    _row(_S.AWAIT_PUBREL, _T.PUBLISH_QOS2, _S.AWAIT_PUBREL, _P.PUBREC),
    _row(_S.AWAIT_PUBREL, _T.PUBREL, _S.FREE, _P.PUBCOMP),  # [MQTT-4.3.3-11], then new [MQTT-4.3.3-12]
    # Every PUBREL is answered [MQTT-4.3.3-11]; for an id we hold nothing under, with 0x92 (§3.7.2.1).
    _row(_S.FREE, _T.PUBREL, _S.FREE, _P.PUBCOMP, _NOT_FOUND),
)


def _complete(rows: tuple[Transition, ...]) -> dict[FlowState, dict[Trigger, Transition]]:
    """The table as state -> trigger -> transition, each pair not listed filled in as 'nothing'."""
    table = {state: {trigger: _row(state, trigger, state) for trigger in Trigger} for state in FlowState}
    listed = {(row.state, row.trigger) for row in rows}
    assert len(listed) == len(rows), "a (state, trigger) pair is listed twice"
    for row in rows:
        table[row.state][row.trigger] = row
    return table


#: `TABLE` for lookups: TRANSITIONS[state][trigger].
TRANSITIONS = _complete(TABLE)


class Flow(Protocol):
    """What a sender keeps of one outbound message; the flows read and set only its state."""

    state: FlowState


F = TypeVar("F", bound=Flow)


class OutboundFlows(dict[int, F]):
    """The sender's side of a session: its QoS 1/2 flows by packet id, in the order first sent.

    That order is the one they are resent in when a connection resumes the session [MQTT-4.4.0-1]
    [MQTT-4.6.0-1]. It is a dict so that the hot path looks flows up at C speed; a session restored
    from a store puts its flows back with plain item assignment."""

    __slots__ = ("_next_id", "window")

    def __init__(self) -> None:
        super().__init__()
        self._next_id = 1
        # The send quota: at most this many flows at once, the peer's Receive Maximum capped by
        # ours [MQTT-4.9.0-1] [MQTT-4.9.0-2]. Set by the role for each connection.
        self.window = 65535

    def has_room(self) -> bool:
        """Whether another QoS 1/2 PUBLISH may go out now [MQTT-4.9.0-2]."""
        return len(self) < self.window

    def allocate(self, reserved: Callable[[int], bool] | None = None) -> int:
        """A packet id no flow here uses and ``reserved`` does not claim [MQTT-2.2.1-3]: the first
        from where the last search stopped, wrapping after 65535 and never 0."""
        pid = start = self._next_id
        while pid in self or (reserved is not None and reserved(pid)):
            pid = pid + 1 if pid < MAX_PACKET_ID else 1
            if pid == start:
                raise RuntimeError("no free packet identifier")  # windows are capped far below 65535
        self._next_id = pid + 1 if pid < MAX_PACKET_ID else 1
        return pid

    def send(self, packet_id: int, flow: F, qos: int) -> Transition:
        """``flow`` (queued) goes out as a QoS ``qos`` PUBLISH under ``packet_id``."""
        step = TRANSITIONS[flow.state][Trigger.SEND_QOS1 if qos == 1 else Trigger.SEND_QOS2]
        flow.state = step.next_state
        self[packet_id] = flow
        return step

    def release(self, packet_id: int, flow: F) -> Transition:
        """A PUBREL goes out for ``packet_id``, which no flow here uses (the caller checks); ``flow``
        stands for the message the receiver may hold under it, and waits for the PUBCOMP."""
        step = TRANSITIONS[FlowState.FREE][Trigger.RELEASE]
        flow.state = step.next_state
        self[packet_id] = flow
        return step

    def advance(self, packet_id: int, flow: F | None, trigger: Trigger) -> Transition:
        """Apply an acknowledgement from the receiver (PUBACK, PUBREC, PUBREC_FAILED, PUBCOMP) to the
        flow under ``packet_id``; ``flow`` is ``self.get(packet_id)``, which the caller keeps."""
        step = TRANSITIONS[FlowState.FREE if flow is None else flow.state][trigger]
        if step.ended:
            del self[packet_id]
        elif step.advanced:
            assert flow is not None
            flow.state = step.next_state
        return step

    def resend(self, protocol_level: int, encode_publish: Callable[[int, F], bytes]) -> list[bytes]:
        """What to send again on a connection that resumed the session, in first-send order, with
        the original packet ids [MQTT-4.4.0-1]: the PUBLISH (``encode_publish(packet_id, flow)``,
        DUP set) until PUBREC, the PUBREL after it."""
        out = []
        for packet_id, flow in self.items():
            step = TRANSITIONS[flow.state][Trigger.RESUME]
            if step.reply is PacketType.PUBLISH:
                out.append(encode_publish(packet_id, flow))
            elif step.reply is not None:
                out.append(step.reply_bytes(packet_id, protocol_level))
        return out

    def withdraw(self, which: Callable[[F], bool] | None = None) -> list[F]:
        """Take back the flows (all, or those ``which`` picks) whose receiver may not have the message
        yet, in first-send order, queued again; those past PUBREC stay."""
        taken = []
        for packet_id, flow in list(self.items()):
            step = TRANSITIONS[flow.state][Trigger.WITHDRAW]
            if step.advanced and (which is None or which(flow)):
                del self[packet_id]
                flow.state = step.next_state
                taken.append(flow)
        return taken


class InboundFlows:
    """The receiver's side of one connection: QoS 1/2 PUBLISH packets handed on and not acknowledged
    yet, and the QoS 2 packet ids awaiting PUBREL, which belong to the session and outlive the
    connection (the set is the session's)."""

    __slots__ = ("awaiting_pubrel", "mqtt5", "receive_maximum", "unacknowledged")

    def __init__(self, awaiting_pubrel: set[int], protocol_level: int, receive_maximum: int) -> None:
        self.unacknowledged: dict[int, FlowState] = {}
        self.awaiting_pubrel = awaiting_pubrel
        self.mqtt5 = protocol_level == MQTT_5
        # Our Receive Maximum, enforced on 5.0 only: 3.1.1 has none.
        self.receive_maximum = receive_maximum if self.mqtt5 else 0

    def receive(self, packet_id: int, qos: int) -> Transition:
        """A QoS ``qos`` PUBLISH arrived under ``packet_id``: hand it on (``deliver``), or not (a resend).
        Only a QoS 2 PUBLISH can repeat one awaiting PUBREL."""
        if qos == 2 and packet_id in self.awaiting_pubrel:
            state = FlowState.AWAIT_PUBREL
        else:
            state = self.unacknowledged.get(packet_id, FlowState.FREE)
        step = TRANSITIONS[state][Trigger.PUBLISH_QOS1 if qos == 1 else Trigger.PUBLISH_QOS2]
        if step.deliver:
            limit = self.receive_maximum
            if limit and len(self.unacknowledged) + len(self.awaiting_pubrel) >= limit:
                # More QoS 1/2 PUBLISH unacknowledged than our Receive Maximum [MQTT-3.3.4-7]
                # [MQTT-3.3.4-9]: DISCONNECT 0x93 (§3.3.4).
                raise ProtocolError(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
            self.unacknowledged[packet_id] = step.next_state
        return step

    def acknowledge(self, packet_id: int, reason_code: int = 0) -> Transition:
        """The receiver's verdict on the message under ``packet_id``: PUBACK, or PUBREC (then the id
        awaits PUBREL unless refused). Nothing for an id with nothing to acknowledge."""
        state = self.unacknowledged.pop(packet_id, FlowState.FREE)
        # 3.1.1 has no negative acknowledgement: a refused message is acknowledged as taken (and
        # dropped by the receiver, as Mosquitto does); withholding the ack would stall the sender.
        refuse = reason_code >= 0x80 and self.mqtt5
        step = TRANSITIONS[state][Trigger.REFUSE if refuse else Trigger.ACCEPT]
        if step.advanced:
            self.awaiting_pubrel.add(packet_id)
        return step

    def release(self, packet_id: int) -> Transition:
        """A PUBREL arrived: the id is free again and PUBCOMP answers, 0x92 for an unknown id."""
        state = FlowState.AWAIT_PUBREL if packet_id in self.awaiting_pubrel else FlowState.FREE
        step = TRANSITIONS[state][Trigger.PUBREL]
        if step.ended:
            self.awaiting_pubrel.discard(packet_id)
        return step


class TopicAliases:
    """The topic aliases of one network connection, both ways (§3.3.2.3.4). They are not carried
    from one connection to the next [MQTT-3.3.2-7]: each connection makes its own."""

    __slots__ = ("inbound", "inbound_maximum", "outbound", "outbound_maximum")

    def __init__(self, inbound_maximum: int, outbound_maximum: int = 0) -> None:
        self.inbound_maximum = inbound_maximum  # the Topic Alias Maximum we announced
        self.outbound_maximum = outbound_maximum  # the one the peer announced
        self.inbound: dict[int, str] = {}
        self.outbound: dict[str, int] = {}

    def resolve(self, alias: int, topic: str) -> str:
        """The topic name of an inbound PUBLISH carrying ``alias``: a topic name sets the alias, an
        empty one uses it."""
        # The peer may use 1 up to the maximum we announced [MQTT-3.3.2-9] [MQTT-3.3.2-10] (the
        # decoder refuses 0 [MQTT-3.3.2-8]); above it: Topic Alias invalid, 0x94.
        if alias > self.inbound_maximum:
            raise ProtocolError(ReasonCode.TOPIC_ALIAS_INVALID, f"topic alias {alias} out of range")
        if topic:
            self.inbound[alias] = topic
            return topic
        known = self.inbound.get(alias)
        if known is None:
            raise protocol_violation(f"unknown topic alias {alias}")
        return known

    def known(self, topic: str) -> int:
        """The alias the peer already has for ``topic`` (0: none): sent instead of the name."""
        return self.outbound.get(topic, 0)

    def assign(self, topic: str) -> int:
        """A new alias for ``topic`` while the peer's maximum allows [MQTT-3.3.2-11] (0: none left);
        it goes out with the name, which sets it."""
        outbound = self.outbound
        if len(outbound) >= self.outbound_maximum:
            return 0
        alias = outbound[topic] = len(outbound) + 1
        return alias

    def forget(self, topic: str) -> None:
        """Drop the alias just given to ``topic``: the PUBLISH that was to set it was not sent."""
        del self.outbound[topic]

"""The QoS flow table (edgebus.core.flows) row by row, and the flow classes that apply it, with no role."""

from __future__ import annotations

import pytest

from edgebus.core.flows import (
    TABLE,
    TRANSITIONS,
    FlowState,
    InboundFlows,
    OutboundFlows,
    TopicAliases,
    Transition,
    Trigger,
    pubrec_trigger,
)
from edgebus.protocol import MQTT_3_1_1, MQTT_5, PubAck, PubComp, PubRec, PubRel, encode
from edgebus.protocol.enums import PacketType, ReasonCode
from edgebus.protocol.errors import ProtocolError

S, T, P = FlowState, Trigger, PacketType
SENDER = (S.QUEUED, S.AWAIT_PUBACK, S.AWAIT_PUBREC, S.AWAIT_PUBCOMP)
NOT_FOUND = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND


class Flight:
    """A sender's flow as the flows see it: only a state."""

    __slots__ = ("name", "state")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.state = FlowState.QUEUED


def step(state: FlowState, trigger: Trigger) -> Transition:
    return TRANSITIONS[state][trigger]


# --- the table ---------------------------------------------------------------------------------------


def test_the_table_is_total_and_each_pair_listed_once() -> None:
    assert len({(row.state, row.trigger) for row in TABLE}) == len(TABLE)
    for state in FlowState:
        for trigger in Trigger:
            row = TRANSITIONS[state][trigger]
            assert (row.state, row.trigger) == (state, trigger)
            # Ended means the id is free; advanced means another state, and the flow goes on.
            assert row.ended == (row.next_state is S.FREE and state is not S.FREE)
            assert row.advanced == (row.next_state is not state and not row.ended)


def test_a_pair_not_listed_changes_nothing_and_sends_nothing() -> None:
    # A late or stray acknowledgement is ignored (§4.3.2, §4.3.3: only the matching one ends a flow).
    listed = {(row.state, row.trigger) for row in TABLE}
    for state in FlowState:
        for trigger in Trigger:
            if (state, trigger) not in listed:
                row = TRANSITIONS[state][trigger]
                assert (row.next_state, row.reply, row.ended, row.deliver) == (state, None, False, False)


#: (state, trigger, next state, reply, its reason code, ended)
ROWS = [
    # The sender: QoS 1 [MQTT-4.3.2-3], QoS 2 [MQTT-4.3.3-3] [MQTT-4.3.3-4] [MQTT-4.3.3-5].
    (S.QUEUED, T.SEND_QOS1, S.AWAIT_PUBACK, None, 0, False),
    (S.QUEUED, T.SEND_QOS2, S.AWAIT_PUBREC, None, 0, False),
    (S.AWAIT_PUBACK, T.PUBACK, S.FREE, None, 0, True),
    (S.AWAIT_PUBREC, T.PUBREC, S.AWAIT_PUBCOMP, P.PUBREL, 0, False),
    (S.AWAIT_PUBREC, T.PUBREC_FAILED, S.FREE, None, 0, True),  # [MQTT-4.4.0-2]
    (S.AWAIT_PUBCOMP, T.PUBCOMP, S.FREE, None, 0, True),
    # A PUBREC again while PUBCOMP is awaited: PUBREL again, whatever its code.
    (S.AWAIT_PUBCOMP, T.PUBREC, S.AWAIT_PUBCOMP, P.PUBREL, 0, False),
    (S.AWAIT_PUBCOMP, T.PUBREC_FAILED, S.AWAIT_PUBCOMP, P.PUBREL, 0, False),
    # A PUBREC for no QoS 2 flow: PUBREL 0x92 (§3.6.2.1); the QoS 1 flow goes on.
    (S.FREE, T.PUBREC, S.FREE, P.PUBREL, NOT_FOUND, False),
    (S.AWAIT_PUBACK, T.PUBREC, S.AWAIT_PUBACK, P.PUBREL, NOT_FOUND, False),
    # Stray acknowledgements.
    (S.AWAIT_PUBREC, T.PUBACK, S.AWAIT_PUBREC, None, 0, False),
    (S.AWAIT_PUBACK, T.PUBCOMP, S.AWAIT_PUBACK, None, 0, False),
    (S.FREE, T.PUBCOMP, S.FREE, None, 0, False),
    # Resume [MQTT-4.4.0-1]: the PUBLISH until PUBREC, the PUBREL after.
    (S.AWAIT_PUBACK, T.RESUME, S.AWAIT_PUBACK, P.PUBLISH, 0, False),
    (S.AWAIT_PUBREC, T.RESUME, S.AWAIT_PUBREC, P.PUBLISH, 0, False),
    (S.AWAIT_PUBCOMP, T.RESUME, S.AWAIT_PUBCOMP, P.PUBREL, 0, False),
    # The receiver: [MQTT-4.3.2-4] [MQTT-4.3.3-8] [MQTT-4.3.3-10] [MQTT-4.3.3-11].
    (S.RECEIVED_QOS1, T.ACCEPT, S.FREE, P.PUBACK, None, True),
    (S.RECEIVED_QOS1, T.REFUSE, S.FREE, P.PUBACK, None, True),
    (S.RECEIVED_QOS2, T.ACCEPT, S.AWAIT_PUBREL, P.PUBREC, None, False),
    (S.RECEIVED_QOS2, T.REFUSE, S.FREE, P.PUBREC, None, True),  # then new [MQTT-4.3.3-9]
    (S.AWAIT_PUBREL, T.PUBLISH_QOS2, S.AWAIT_PUBREL, P.PUBREC, 0, False),
    (S.AWAIT_PUBREL, T.PUBREL, S.FREE, P.PUBCOMP, 0, True),
    (S.FREE, T.PUBREL, S.FREE, P.PUBCOMP, NOT_FOUND, False),  # §3.7.2.1
    (S.RECEIVED_QOS2, T.PUBREL, S.RECEIVED_QOS2, None, 0, False),
    (S.FREE, T.ACCEPT, S.FREE, None, 0, False),  # nothing to acknowledge
]


@pytest.mark.parametrize(
    ("state", "trigger", "next_state", "reply", "code", "ended"),
    ROWS,
    ids=[f"{row[0].name}+{row[1].name}" for row in ROWS],
)
def test_rows(
    state: FlowState,
    trigger: Trigger,
    next_state: FlowState,
    reply: PacketType | None,
    code: int | None,
    ended: bool,
) -> None:
    row = step(state, trigger)
    assert (row.next_state, row.reply, row.ended) == (next_state, reply, ended)
    if reply is not None:
        assert row.reply_code == code


def test_only_a_new_publish_is_handed_on() -> None:
    # [MQTT-4.3.3-10]: a resend before PUBREL is not delivered again; nor one not acknowledged yet.
    delivering = {(row.state, row.trigger) for row in TABLE if row.deliver}
    assert delivering == {(S.FREE, T.PUBLISH_QOS1), (S.FREE, T.PUBLISH_QOS2)}
    assert step(S.FREE, T.PUBLISH_QOS2).next_state is S.RECEIVED_QOS2


def test_no_publish_after_pubrel() -> None:
    # [MQTT-4.3.3-6]: once PUBREL is sent the PUBLISH is never sent again, whatever happens.
    for trigger in Trigger:
        row = step(S.AWAIT_PUBCOMP, trigger)
        assert row.reply is not P.PUBLISH
        assert row.next_state in (S.AWAIT_PUBCOMP, S.FREE)


def test_a_flow_ends_only_on_its_last_acknowledgement() -> None:
    ends = {(row.state, row.trigger) for row in TABLE if row.ended}
    assert ends == {
        (S.AWAIT_PUBACK, T.PUBACK),
        (S.AWAIT_PUBREC, T.PUBREC_FAILED),
        (S.AWAIT_PUBCOMP, T.PUBCOMP),
        (S.RECEIVED_QOS1, T.ACCEPT),
        (S.RECEIVED_QOS1, T.REFUSE),
        (S.RECEIVED_QOS2, T.REFUSE),
        (S.AWAIT_PUBREL, T.PUBREL),
    }


def test_pubrec_trigger() -> None:
    assert pubrec_trigger(0) is T.PUBREC and pubrec_trigger(0x10) is T.PUBREC
    assert pubrec_trigger(0x80) is T.PUBREC_FAILED and pubrec_trigger(0x97) is T.PUBREC_FAILED


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
@pytest.mark.parametrize("code", [0, 0x10, 0x92, 0x97])
@pytest.mark.parametrize(
    ("reply", "packet"), [(P.PUBACK, PubAck), (P.PUBREC, PubRec), (P.PUBREL, PubRel), (P.PUBCOMP, PubComp)]
)
def test_reply_bytes_are_what_encode_writes(level: int, code: int, reply: PacketType, packet: type) -> None:
    row = Transition(S.FREE, T.PUBREL, S.FREE, reply, None, False, False, False)
    for packet_id in (1, 0x1234, 0xFFFF):
        assert row.reply_bytes(packet_id, level, code) == encode(packet(packet_id, code), level)


# --- the sender's side ---------------------------------------------------------------------------------


def test_packet_ids_skip_those_in_use_or_reserved_wrap_and_run_out() -> None:
    # [MQTT-2.2.1-3]: an unused non-zero id; the search goes on from the last one, past 65535 to 1.
    flows: OutboundFlows[Flight] = OutboundFlows()
    assert [flows.allocate() for _ in range(3)] == [1, 2, 3]
    flows.send(5, Flight(), 1)
    assert flows.allocate(lambda pid: pid == 4) == 6
    for _ in range(7, 0xFFFF):  # 7 .. 65534
        flows.allocate()
    assert [flows.allocate(), flows.allocate()] == [0xFFFF, 1]  # never 0
    for pid in range(1, 0x10000):
        flows[pid] = Flight()
    with pytest.raises(RuntimeError, match="no free packet identifier"):
        flows.allocate()


def test_the_send_window() -> None:
    # [MQTT-4.9.0-2]: no QoS 1/2 PUBLISH while the quota is spent.
    flows: OutboundFlows[Flight] = OutboundFlows()
    flows.window = 2
    flows.send(flows.allocate(), Flight(), 1)
    assert flows.has_room()
    flows.send(flows.allocate(), Flight(), 2)
    assert not flows.has_room()
    flows.advance(1, flows.get(1), T.PUBACK)
    assert flows.has_room()


def test_outbound_flows_through_the_table() -> None:
    flows: OutboundFlows[Flight] = OutboundFlows()
    one, two = Flight("one"), Flight("two")
    assert flows.send(1, one, 1).next_state is S.AWAIT_PUBACK
    assert flows.send(2, two, 2).next_state is S.AWAIT_PUBREC
    assert one.state is S.AWAIT_PUBACK and list(flows) == [1, 2]
    rec = flows.advance(2, two, T.PUBREC)
    assert rec.advanced and rec.reply is P.PUBREL and two.state is S.AWAIT_PUBCOMP
    again = flows.advance(2, two, T.PUBREC)
    assert not again.advanced and again.reply is P.PUBREL and two.state is S.AWAIT_PUBCOMP
    stray = flows.advance(9, None, T.PUBREC)
    assert stray.reply is P.PUBREL and stray.reply_code == NOT_FOUND and 9 not in flows
    assert flows.advance(1, one, T.PUBACK).ended and 1 not in flows
    assert flows.advance(2, two, T.PUBCOMP).ended and not flows


def test_resend_in_first_send_order() -> None:
    # [MQTT-4.4.0-1] [MQTT-4.6.0-1]: PUBLISH (DUP) until PUBREC, PUBREL after, in the order first sent.
    flows: OutboundFlows[Flight] = OutboundFlows()
    flights = [Flight(name) for name in "abc"]
    for pid, flight in zip((7, 3, 5), flights, strict=True):
        flows.send(pid, flight, 2)
    flows.advance(3, flights[1], T.PUBREC)
    out = flows.resend(MQTT_5, lambda pid, flight: f"PUBLISH {flight.name} {pid}".encode())
    assert out == [b"PUBLISH a 7", encode(PubRel(3), MQTT_5), b"PUBLISH c 5"]


def test_withdraw_takes_back_what_the_receiver_may_not_have() -> None:
    flows: OutboundFlows[Flight] = OutboundFlows()
    a, b, c, d = (Flight(name) for name in "abcd")
    flows.send(1, a, 1)
    flows.send(2, b, 2)
    flows.send(3, c, 2)
    flows.advance(3, c, T.PUBREC)  # past PUBREC: the receiver has it
    flows.send(4, d, 1)
    assert flows.withdraw(lambda flight: flight.name != "d") == [a, b]
    assert a.state is S.QUEUED and b.state is S.QUEUED
    assert list(flows) == [3, 4]
    assert flows.withdraw() == [d] and list(flows) == [3]


def test_release_awaits_pubcomp() -> None:
    flows: OutboundFlows[Flight] = OutboundFlows()
    flight = Flight()
    row = flows.release(4, flight)
    assert row.reply is P.PUBREL and flight.state is S.AWAIT_PUBCOMP and flows[4] is flight
    assert flows.advance(4, flight, T.PUBCOMP).ended


# --- the receiver's side -------------------------------------------------------------------------------


def test_inbound_qos2_exactly_once() -> None:
    held: set[int] = set()
    flows = InboundFlows(held, MQTT_5, 10)
    assert flows.receive(3, 2).deliver
    assert not flows.receive(3, 2).deliver  # not acknowledged yet: the coming PUBREC answers both
    assert flows.receive(3, 2).reply is None
    ack = flows.acknowledge(3)
    assert ack.reply is P.PUBREC and ack.advanced and held == {3}
    dup = flows.receive(3, 2)
    assert not dup.deliver and dup.reply is P.PUBREC  # [MQTT-4.3.3-10]
    rel = flows.release(3)
    assert rel.ended and rel.reply is P.PUBCOMP and not held  # [MQTT-4.3.3-11]
    assert flows.receive(3, 2).deliver  # new again [MQTT-4.3.3-12]


def test_inbound_qos1_and_refusals() -> None:
    flows = InboundFlows(set(), MQTT_5, 10)
    assert flows.receive(1, 1).deliver
    assert flows.acknowledge(1, ReasonCode.QUOTA_EXCEEDED).ended
    assert flows.receive(1, 1).deliver  # new after PUBACK [MQTT-4.3.2-5]
    assert flows.receive(2, 2).deliver
    refused = flows.acknowledge(2, ReasonCode.QUOTA_EXCEEDED)
    assert refused.ended and refused.reply is P.PUBREC and not flows.awaiting_pubrel  # [MQTT-4.3.3-9]
    assert flows.acknowledge(2).reply is None  # nothing left to acknowledge under 2


def test_on_3_1_1_a_refusal_is_an_acknowledgement() -> None:
    # 3.1.1 has no negative acknowledgement: the QoS 2 id then awaits its PUBREL like any other.
    flows = InboundFlows(set(), MQTT_3_1_1, 10)
    flows.receive(2, 2)
    ack = flows.acknowledge(2, ReasonCode.QUOTA_EXCEEDED)
    assert ack.advanced and flows.awaiting_pubrel == {2}
    assert ack.reply_bytes(2, MQTT_3_1_1, ReasonCode.QUOTA_EXCEEDED) == encode(PubRec(2), MQTT_3_1_1)


def test_receive_maximum_counts_ids_awaiting_pubrel_on_5_only() -> None:
    # [MQTT-3.3.4-7] [MQTT-3.3.4-9]: more unacknowledged QoS 1/2 PUBLISH than Receive Maximum: 0x93.
    flows = InboundFlows(set(), MQTT_5, 2)
    flows.receive(1, 2)
    flows.acknowledge(1)
    flows.receive(2, 1)
    assert not flows.receive(2, 1).deliver  # a resend is not one more
    with pytest.raises(ProtocolError) as caught:
        flows.receive(3, 1)
    assert caught.value.reason_code is ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
    flows.release(1)
    assert flows.receive(3, 1).deliver
    old = InboundFlows(set(), MQTT_3_1_1, 2)
    assert all(old.receive(pid, 1).deliver for pid in range(1, 10))


def test_a_qos1_publish_is_never_a_qos2_duplicate() -> None:
    flows = InboundFlows({5}, MQTT_5, 10)
    assert flows.receive(5, 1).deliver


# --- topic aliases -------------------------------------------------------------------------------------


def test_inbound_aliases() -> None:
    aliases = TopicAliases(inbound_maximum=2)
    assert aliases.resolve(2, "a/b") == "a/b"
    assert aliases.resolve(2, "") == "a/b"
    assert aliases.resolve(2, "c") == "c" and aliases.resolve(2, "") == "c"
    with pytest.raises(ProtocolError) as above:
        aliases.resolve(3, "x")  # [MQTT-3.3.2-9] [MQTT-3.3.2-10]
    assert above.value.reason_code is ReasonCode.TOPIC_ALIAS_INVALID
    with pytest.raises(ProtocolError) as unknown:
        aliases.resolve(1, "")
    assert unknown.value.reason_code is ReasonCode.PROTOCOL_ERROR


def test_outbound_aliases_up_to_the_peers_maximum() -> None:
    # [MQTT-3.3.2-11]: never above the maximum the peer announced.
    aliases = TopicAliases(inbound_maximum=0, outbound_maximum=2)
    assert (aliases.known("a"), aliases.assign("a")) == (0, 1)
    assert aliases.known("a") == 1
    assert aliases.assign("b") == 2
    assert aliases.assign("c") == 0 and aliases.known("c") == 0
    aliases.forget("b")
    assert aliases.known("b") == 0 and aliases.assign("c") == 2

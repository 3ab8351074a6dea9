"""The per-device verdicts of the audit: retained state after the run, and wills against abrupt losses."""

from __future__ import annotations

from edgebus_fleet.audit import Ledger, WillLedger, acceptable_retained, summarize_wills


def wills(required: int, optional: int, seen: int) -> WillLedger:
    ledger = WillLedger()
    ledger.required, ledger.optional, ledger.seen = required, optional, seen
    return ledger


def test_one_devices_extra_will_does_not_hide_anothers_missing_one() -> None:
    # A will is due per connection closed without DISCONNECT [MQTT-3.1.2-8]; none after DISCONNECT
    # [MQTT-3.1.2-10]. Shortfalls and excesses are per device, then summed per profile.
    [summary] = summarize_wills([("door", wills(2, 0, 1)), ("door", wills(1, 0, 2))])
    assert (summary.required, summary.seen) == (3, 3)
    assert (summary.missing, summary.unexpected) == (1, 1)
    assert summary.violations == [
        "will missing: 1 abrupt disconnect(s) without the will",
        "will unexpected: 1 will(s) without an abrupt disconnect",
    ]


def test_optional_wills_may_or_may_not_come() -> None:
    # A broker restart may publish the wills of the connections it drops, or not: both pass.
    summaries = summarize_wills([("a", wills(1, 1, 2)), ("b", wills(1, 1, 1))])
    assert [s.violations for s in summaries] == [[], []]
    [summary] = summarize_wills([("a", wills(0, 1, 2))])
    assert summary.unexpected == 1


def test_retained_state_must_be_the_last_acknowledged_or_a_later_one() -> None:
    # The broker keeps the last retained message of the topic [MQTT-3.3.1-5]: the last acknowledged state,
    # or a later one it took but whose acknowledgement was lost; never an earlier one.
    ledger = Ledger()
    stream = ledger.stream("door-1", "fleet/door-1/state", "door", "state", 1)
    payloads = {}
    for seq in range(4):
        assert ledger.record_sent(stream, float(seq)) == seq
        payloads[seq] = f"state {seq}".encode()
    assert acceptable_retained(stream, payloads) is None  # nothing acknowledged: nothing to expect
    ledger.record_acked(stream, 0, 0.0)
    ledger.record_acked(stream, 2, 0.0)
    assert acceptable_retained(stream, payloads) == {b"state 2", b"state 3"}

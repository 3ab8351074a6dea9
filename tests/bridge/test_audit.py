"""The outage audit itself (tests/bridge/audit.py): exactly once for exactly-once sinks; at least once,
with duplicates counted and order checked on first arrival, for QoS-1-only upstreams."""

from __future__ import annotations

from tests.bridge.audit import DeviceLoad, audit


def _load() -> DeviceLoad:
    load = DeviceLoad()
    load.acked["sensors/a"] = [1, 2, 3]
    return load


def test_exactly_once_fails_on_a_duplicate() -> None:
    log = [("sensors/a", 1), ("sensors/a", 2), ("sensors/a", 2), ("sensors/a", 3)]
    verdict = audit(_load(), log)
    assert not verdict.ok
    assert verdict.duplicated == [("sensors/a", 2)]


def test_at_least_once_counts_duplicates_and_checks_first_arrivals() -> None:
    # A QoS 1 resend after a lost PUBACK [MQTT-4.3.2-1]: the copy comes again, later; that is allowed.
    log = [("sensors/a", 1), ("sensors/a", 2), ("sensors/a", 1), ("sensors/a", 2), ("sensors/a", 3)]
    verdict = audit(_load(), log, exactly_once=False)
    assert verdict.ok
    assert verdict.copies == 2
    # ... but a loss or a first arrival out of order still fails.
    assert not audit(_load(), [("sensors/a", 1), ("sensors/a", 3)], exactly_once=False).ok
    assert not audit(_load(), [("sensors/a", 2), ("sensors/a", 1), ("sensors/a", 3)], exactly_once=False).ok

"""The per-message audit: every message sent, acknowledged and delivered, judged against its QoS.

A stream is the messages one sender publishes on one topic, numbered from 0 (``seq``). For each
message the ledger keeps whether the broker acknowledged it (QoS 0: whether it was written) and how
many times it was delivered. At the end: lost = acknowledged but never delivered, duplicated = delivered
more than once, reordered = delivered after a later message of the same stream, and end-to-end latency
from the ``ts`` in the payload to its first delivery.

Two checks are per device rather than per message: the retained state a fresh subscriber reads after
the run must be the last state the device published and had acknowledged, and every connection the
broker saw end without DISCONNECT must have produced the device's will, and no other.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GroupSummary",
    "Ledger",
    "RetainedSummary",
    "Stream",
    "WillLedger",
    "WillSummary",
    "acceptable_retained",
    "percentile",
    "summarize_wills",
]


class Stream:
    """The messages of one sender on one topic."""

    __slots__ = (
        "acked",
        "after_wake",
        "delivered",
        "group",
        "max_delivered_seq",
        "outstanding",
        "qos",
        "reordered",
        "sent_at",
    )

    def __init__(self, group: GroupKey, qos: int) -> None:
        self.group = group
        self.qos = qos
        self.sent_at = array("d")  # send time by seq
        self.acked = bytearray()  # 1 once acknowledged (QoS 0: written)
        self.delivered = bytearray()  # delivery count by seq, saturating at 255
        self.outstanding: dict[int, float] = {}  # acknowledged, not yet delivered: seq -> ack time
        self.max_delivered_seq = -1
        self.reordered = 0
        self.after_wake = 0

    def next_seq(self) -> int:
        return len(self.sent_at)


GroupKey = tuple[str, str, int]  # (profile, stream name, QoS)


@dataclass(slots=True)
class GroupSummary:
    """Audit figures of one (profile, stream, QoS) group."""

    profile: str
    stream: str
    qos: int
    sent: int = 0
    acknowledged: int = 0
    delivered: int = 0
    lost: int = 0
    unconfirmed: int = 0  # never acknowledged and never delivered (in flight at the end)
    duplicated: int = 0
    reordered: int = 0
    after_wake: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    latency_max: float | None = None
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "stream": self.stream,
            "qos": self.qos,
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "delivered": self.delivered,
            "lost": self.lost,
            "unconfirmed": self.unconfirmed,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "delivered_after_wake": self.after_wake,
            "latency_s": {
                "p50": self.latency_p50,
                "p95": self.latency_p95,
                "p99": self.latency_p99,
                "max": self.latency_max,
            },
            "violations": list(self.violations),
        }


def percentile(sorted_values: list[float] | array[float], fraction: float) -> float | None:
    """The nearest-rank percentile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


class Ledger:
    """Every stream of the run, and the running counters the live display shows."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, str], Stream] = {}  # (sender id, topic) -> stream
        self.latencies: dict[GroupKey, array[float]] = {}
        self.groups: list[GroupKey] = []
        # Running totals.
        self.sent = 0
        self.acknowledged = 0
        self.delivered = 0
        self.duplicates = 0
        self.unexpected = 0  # deliveries of messages never sent (a corrupt or foreign message)
        self.stale = 0  # deliveries from an earlier run (retained, or queued in a persistent session)
        self.retained_replays = 0  # retained messages delivered on (re)subscribe: not counted as deliveries
        self.wills = 0
        self.refused = 0  # acknowledgements with a failure reason code

    def stream(self, sender: str, topic: str, profile: str, name: str, qos: int) -> Stream:
        key = (sender, topic)
        stream = self.streams.get(key)
        if stream is None:
            group = (profile, name, qos)
            if group not in self.latencies:
                self.latencies[group] = array("d")
                self.groups.append(group)
            stream = self.streams[key] = Stream(group, qos)
        return stream

    def record_sent(self, stream: Stream, sent_at: float) -> int:
        """A message handed to the client; returns its sequence number."""
        seq = len(stream.sent_at)
        stream.sent_at.append(sent_at)
        stream.acked.append(0)
        stream.delivered.append(0)
        self.sent += 1
        return seq

    def record_acked(self, stream: Stream, seq: int, now: float, success: bool = True) -> None:
        if not success:
            self.refused += 1
            return
        if stream.acked[seq]:
            return
        stream.acked[seq] = 1
        self.acknowledged += 1
        if not stream.delivered[seq]:
            stream.outstanding[seq] = now

    def record_delivered(
        self, sender: str, topic: str, seq: int, sent_ts: float, now: float
    ) -> Stream | None:
        """A delivery to the receiver; returns the stream, None for a message never sent."""
        stream = self.streams.get((sender, topic))
        if stream is None or not 0 <= seq < len(stream.sent_at):
            self.unexpected += 1
            return None
        count = stream.delivered[seq]
        if count:
            self.duplicates += 1
            if count < 255:
                stream.delivered[seq] = count + 1
            return stream
        stream.delivered[seq] = 1
        self.delivered += 1
        stream.outstanding.pop(seq, None)
        if seq < stream.max_delivered_seq:
            stream.reordered += 1
        else:
            stream.max_delivered_seq = seq
        self.latencies[stream.group].append(max(0.0, now - sent_ts))
        return stream

    def overdue(self, now: float, after: float) -> int:
        """Messages acknowledged more than ``after`` seconds ago and not delivered yet."""
        limit = now - after
        return sum(
            1 for s in self.streams.values() if s.outstanding for t in s.outstanding.values() if t < limit
        )

    def in_flight(self) -> int:
        """Messages acknowledged and not yet delivered."""
        return sum(len(s.outstanding) for s in self.streams.values())

    def summarize(self, qos0_max_loss: float = 1.0, max_p99_latency: float = 0.0) -> list[GroupSummary]:
        """One summary per (profile, stream, QoS), with the violations of what its QoS allows."""
        by_group = {group: GroupSummary(*group) for group in self.groups}
        for stream in self.streams.values():
            summary = by_group[stream.group]
            acked, delivered = stream.acked, stream.delivered
            summary.sent += len(stream.sent_at)
            summary.acknowledged += sum(acked)
            summary.reordered += stream.reordered
            summary.after_wake += stream.after_wake
            for seq, count in enumerate(delivered):
                if count:
                    summary.delivered += 1
                    summary.duplicated += count - 1
                elif acked[seq]:
                    summary.lost += 1
                else:
                    summary.unconfirmed += 1
        for group, summary in by_group.items():
            latencies = sorted(self.latencies[group])
            summary.latency_p50 = percentile(latencies, 0.50)
            summary.latency_p95 = percentile(latencies, 0.95)
            summary.latency_p99 = percentile(latencies, 0.99)
            summary.latency_max = latencies[-1] if latencies else None
            summary.violations = _violations(summary, qos0_max_loss, max_p99_latency)
        return [by_group[group] for group in self.groups]


def _violations(summary: GroupSummary, qos0_max_loss: float, max_p99_latency: float) -> list[str]:
    """What this group's QoS does not allow (§4.3): QoS 0 at most once (no duplicate; loss up to the
    configured share), QoS 1 at least once (no loss), QoS 2 exactly once (neither)."""
    problems = []
    if summary.qos >= 1 and summary.lost:
        problems.append(f"{summary.lost} QoS {summary.qos} message(s) acknowledged but never delivered")
    if summary.qos in (0, 2) and summary.duplicated:
        problems.append(f"{summary.duplicated} duplicate deliveries at QoS {summary.qos}")
    if summary.qos == 0 and summary.acknowledged:
        share = summary.lost / summary.acknowledged
        if share > qos0_max_loss:
            problems.append(f"QoS 0 loss {share:.1%} exceeds the allowed {qos0_max_loss:.1%}")
    if max_p99_latency and summary.latency_p99 is not None and summary.latency_p99 > max_p99_latency:
        problems.append(
            f"p99 latency {summary.latency_p99 * 1000:.1f} ms exceeds {max_p99_latency * 1000:.0f} ms"
        )
    return problems


class WillLedger:
    """One device's will accounting: wills the broker must publish, may publish, and was seen to publish.

    ``required``: connections the broker had accepted (CONNACK received) that ended with the socket
    closed and no DISCONNECT before it (a chaos disconnect or reboot, a flap cutting the proxied
    connection): the broker reads EOF at once and must publish the will [MQTT-3.1.2-8] (both versions;
    the profiles set no Will Delay Interval, so no reconnect can come in time to cancel it, and the
    1.5 x keep-alive timeout never matters because the socket is really closed).
    ``optional``: losses whose will the broker may or may not publish: the broker itself going
    down (restart), a DISCONNECT racing an abort, a keep-alive timeout. A clean DISCONNECT (sleep, end
    of run) adds nothing: the broker must then discard the will [MQTT-3.1.2-10] [MQTT-3.14.4-3].
    """

    __slots__ = ("optional", "required", "seen")

    def __init__(self) -> None:
        self.required = 0
        self.optional = 0
        self.seen = 0

    @property
    def missing(self) -> int:
        return max(0, self.required - self.seen)

    @property
    def unexpected(self) -> int:
        return max(0, self.seen - self.required - self.optional)


@dataclass(slots=True)
class WillSummary:
    """Wills of one profile: required, optional, seen, and the devices' shortfalls and excesses."""

    profile: str
    devices: int = 0
    required: int = 0
    optional: int = 0
    seen: int = 0
    missing: int = 0
    unexpected: int = 0

    @property
    def violations(self) -> list[str]:
        problems = []
        if self.missing:
            problems.append(f"will missing: {self.missing} abrupt disconnect(s) without the will")
        if self.unexpected:
            problems.append(f"will unexpected: {self.unexpected} will(s) without an abrupt disconnect")
        return problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "devices": self.devices,
            "required": self.required,
            "optional": self.optional,
            "seen": self.seen,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "violations": self.violations,
        }


def summarize_wills(devices: list[tuple[str, WillLedger]]) -> list[WillSummary]:
    """Per-profile will figures from (profile, device ledger) pairs; shortfalls are counted per device,
    so one device's extra will cannot hide another's missing one."""
    by_profile: dict[str, WillSummary] = {}
    for profile, ledger in devices:
        summary = by_profile.setdefault(profile, WillSummary(profile))
        summary.devices += 1
        summary.required += ledger.required
        summary.optional += ledger.optional
        summary.seen += ledger.seen
        summary.missing += ledger.missing
        summary.unexpected += ledger.unexpected
    return list(by_profile.values())


def acceptable_retained(stream: Stream, payloads: dict[int, bytes]) -> set[bytes] | None:
    """What the retained message of ``stream`` may be after the run: the last acknowledged message, or a
    later one the broker took but whose acknowledgement never came back (in flight at the end). None
    when nothing was acknowledged, so there is nothing to check against."""
    last_acked = next((seq for seq in range(len(stream.acked) - 1, -1, -1) if stream.acked[seq]), None)
    if last_acked is None:
        return None
    return {payloads[seq] for seq in range(last_acked, len(stream.acked)) if seq in payloads}


@dataclass(slots=True)
class RetainedSummary:
    """The retained-state check of one (profile, stream): what a subscriber reads after the run."""

    profile: str
    stream: str
    qos: int
    checked: int = 0
    matched: int = 0
    mismatched: int = 0  # a retained message other than the last acknowledged state
    missing: int = 0  # no retained message at all
    unchecked: int = 0  # nothing acknowledged on this topic: no expectation
    examples: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        bad = self.mismatched + self.missing
        if not bad:
            return []
        detail = f" (e.g. {self.examples[0]})" if self.examples else ""
        return [
            f"retained mismatch: {bad} of {self.checked} topic(s) do not hold the last acknowledged "
            f"state ({self.mismatched} different, {self.missing} absent){detail}"
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "stream": self.stream,
            "qos": self.qos,
            "checked": self.checked,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "missing": self.missing,
            "unchecked": self.unchecked,
            "examples": list(self.examples),
            "violations": self.violations,
        }

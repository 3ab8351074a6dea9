"""/metrics in the Prometheus text exposition format 0.0.4: everything $SYS publishes, plus listeners,
bridges, the store's commit latency, messages by QoS, drops by reason, and the process (from /proc/self).
Counters end in ``_total``, values are in base units (seconds, bytes), every family has HELP and TYPE."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Final

from edgebus import __version__
from edgebus.bridge.runner import BridgeState
from edgebus.core.stats import Histogram
from edgebus.http.view import BrokerView

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_BRIDGE_STATES: Final = (BridgeState.CONNECTED, BridgeState.CONNECTING, BridgeState.DISCONNECTED)

Labels = tuple[tuple[str, str], ...]


def escape_label(value: str) -> str:
    """A label value inside double quotes: backslash, double quote and line feed escaped (format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


class Exposition:
    """Families written one after the other: HELP, TYPE, then the samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [((), value)])

    def histogram(self, name: str, help_text: str, histogram: Histogram) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        cumulative = 0
        for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
            cumulative += count
            self.lines.append(f'{name}_bucket{{le="{_number(bound)}"}} {cumulative}')
        self.lines.append(f"{name}_sum {_number(histogram.total)}")
        self.lines.append(f"{name}_count {histogram.count}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{escape_label(value)}"' for key, value in labels) + "}"


def render(broker: BrokerView, http_requests: int) -> str:
    out = Exposition()
    _broker_families(out, broker)
    _listener_families(out, broker)
    _bridge_families(out, broker)
    _process_families(out)
    out.one(
        "edgebus_http_requests_total",
        "counter",
        "HTTP requests answered by the API listeners.",
        http_requests,
    )
    return out.text()


def _broker_families(out: Exposition, broker: BrokerView) -> None:
    stats = broker.stats
    sessions = broker.sessions
    connected = sum(1 for s in sessions.values() if s.connection is not None)
    fanout = broker.fanout
    out.family(
        "edgebus_build_info", "gauge", "The edgebus version, as a label.", [((("version", __version__),), 1)]
    )
    out.one("edgebus_uptime_seconds", "gauge", "Seconds since the broker started.", broker.uptime_seconds())
    out.one("edgebus_clients_connected", "gauge", "Clients with an open, accepted connection.", connected)
    out.one("edgebus_sessions", "gauge", "Sessions, connected or not ($SYS clients/total).", len(sessions))
    out.one(
        "edgebus_sessions_disconnected",
        "gauge",
        "Sessions kept without a connection.",
        len(sessions) - connected,
    )
    out.one(
        "edgebus_connections_total",
        "counter",
        "Connections accepted (CONNACK 0) since start.",
        stats.clients_total,
    )
    qos = ("0", "1", "2")
    out.family(
        "edgebus_messages_received_total",
        "counter",
        "PUBLISH packets received from clients, by QoS.",
        [((("qos", q),), stats.received_by_qos[i]) for i, q in enumerate(qos)],
    )
    out.family(
        "edgebus_messages_sent_total",
        "counter",
        "PUBLISH packets written to clients, by QoS.",
        [((("qos", q),), stats.sent_by_qos[i]) for i, q in enumerate(qos)],
    )
    queued = sum(len(s.outbox) for s in sessions.values())
    inflight = sum(len(s.inflight) for s in sessions.values())
    out.one("edgebus_messages_queued", "gauge", "Deliveries waiting in session queues.", queued)
    out.one(
        "edgebus_messages_inflight", "gauge", "QoS 1/2 deliveries sent and not yet acknowledged.", inflight
    )
    out.family(
        "edgebus_messages_dropped_total",
        "counter",
        "Deliveries not made, by reason: a full queue or store (overflow policy), expired while queued "
        "(Message Expiry Interval), over the client's Maximum Packet Size.",
        [
            ((("reason", "queue_full"),), stats.messages_dropped),
            ((("reason", "expired"),), stats.messages_expired),
            ((("reason", "too_large"),), stats.messages_too_large),
        ],
    )
    out.one("edgebus_received_bytes_total", "counter", "Bytes read from MQTT clients.", stats.bytes_received)
    out.one("edgebus_sent_bytes_total", "counter", "Bytes written to MQTT clients.", stats.bytes_sent)
    out.one("edgebus_retained_messages", "gauge", "Retained messages held.", len(fanout.retained))
    out.one(
        "edgebus_subscriptions", "gauge", "Subscriptions of all sessions.", fanout.router.subscription_count
    )
    store = broker.store
    out.one(
        "edgebus_store_size_bytes",
        "gauge",
        "The store's size on disk (database and WAL).",
        store.size_bytes() if store is not None else 0,
    )
    if store is not None:
        out.histogram(
            "edgebus_store_commit_duration_seconds",
            "Time from handing a batch to the writer thread until it was committed (fsync included).",
            store.commit_seconds,
        )


def _listener_families(out: Exposition, broker: BrokerView) -> None:
    listeners = broker.listener_info()
    out.family(
        "edgebus_listener_connections",
        "gauge",
        "Open connections per listener.",
        [((("type", info.type), ("address", info.address)), info.connections) for info in listeners],
    )
    out.family(
        "edgebus_listener_refused_total",
        "counter",
        "Connections refused by a listener's max_connections.",
        [((("type", info.type), ("address", info.address)), info.refused) for info in listeners],
    )


def _bridge_families(out: Exposition, broker: BrokerView) -> None:
    parked = [o for o in broker.bridge_set.parked.values() if o.entries]
    if parked:  # rows of bridges a reload removed (or not configured at start), kept for their return
        out.family(
            "edgebus_parked_outbox_messages",
            "gauge",
            "Messages kept in the store for a bridge that is not configured now.",
            [((("bridge", o.name),), len(o.entries)) for o in parked],
        )
    bridges = list(broker.bridge_set.active)  # as configured now: a reload adds and removes bridges
    if not bridges:
        return
    wall = time.time()
    out.family(
        "edgebus_bridge_state",
        "gauge",
        "1 for the state each bridge is in (connected, connecting, disconnected), else 0.",
        [
            ((("bridge", b.name), ("state", state)), int(b.state == state))
            for b in bridges
            for state in _BRIDGE_STATES
        ],
    )

    def per_bridge(name: str, kind: str, help_text: str, values: list[float]) -> None:
        out.family(
            name, kind, help_text, [((("bridge", b.name),), v) for b, v in zip(bridges, values, strict=True)]
        )

    outboxes = [b.outbox for b in bridges]
    per_bridge(
        "edgebus_bridge_queued_messages",
        "gauge",
        "Messages in the outbox.",
        [len(o.entries) for o in outboxes],
    )
    per_bridge(
        "edgebus_bridge_queued_bytes", "gauge", "Payload bytes in the outbox.", [o.bytes for o in outboxes]
    )
    oldest = [o.oldest_queued_at() for o in outboxes]
    per_bridge(
        "edgebus_bridge_oldest_age_seconds",
        "gauge",
        "Age of the oldest message in the outbox (0 when empty).",
        [0.0 if t is None else round(max(0.0, wall - t), 3) for t in oldest],
    )
    for name, help_text, values in (
        ("forwarded", "Messages the upstream acknowledged.", [b.forwarded for b in bridges]),
        (
            "skipped",
            "Messages found already upstream on resume, not sent again.",
            [b.skipped for b in bridges],
        ),
        ("dropped", "Messages the full outbox dropped (overflow policy).", [o.dropped for o in outboxes]),
        ("refused", "Messages the full outbox refused (overflow refuse).", [o.refused for o in outboxes]),
        ("received", "Messages brought in by in rules.", [b.received for b in bridges]),
        ("connects", "Connections made to the upstream.", [b.connects for b in bridges]),
        ("expired", "Messages past their expiry before they could go up.", [b.expired for b in bridges]),
        (
            "transform_failed",
            "Payloads the transform could not convert.",
            [b.transform_failed for b in bridges],
        ),
    ):
        per_bridge(f"edgebus_bridge_{name}_total", "counter", help_text, list(values))


def _process_families(out: Exposition) -> None:
    """The standard process_* metrics of Prometheus client libraries, from /proc/self (Linux)."""
    try:
        with open("/proc/self/stat", "rb") as file:
            # Fields after the command name (which may hold spaces) start after the last ')'.
            fields = file.read().rpartition(b")")[2].split()
        utime, stime, rss_pages = int(fields[11]), int(fields[12]), int(fields[21])
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, IndexError, ValueError):
        return
    out.one(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent.",
        (utime + stime) / _CLOCK_TICKS,
    )
    out.one("process_resident_memory_bytes", "gauge", "Resident memory size.", rss_pages * _PAGE_BYTES)
    out.one("process_open_fds", "gauge", "Open file descriptors.", fds)

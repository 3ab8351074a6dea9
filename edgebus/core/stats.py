"""Broker-wide counters, bumped on the hot path and published under $SYS."""

from __future__ import annotations


class Stats:
    """Plain integer counters (no locks: one trio thread owns them)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "clients_total",
        "messages_dropped",
        "messages_expired",
        "messages_received",
        "messages_sent",
        "messages_too_large",
        "received_by_qos",
        "sent_by_qos",
    )

    def __init__(self) -> None:
        self.bytes_received = 0
        self.bytes_sent = 0
        self.clients_total = 0  # connections accepted since start
        self.messages_received = 0  # PUBLISH packets received from clients
        self.messages_sent = 0  # PUBLISH packets written to clients
        self.messages_dropped = 0  # deliveries dropped by a queue's overflow policy
        self.messages_expired = 0  # deliveries whose Message Expiry Interval ran out while queued
        self.messages_too_large = 0  # deliveries over a client's Maximum Packet Size [MQTT-3.1.2-25]
        # The same PUBLISH counts by QoS, indexed by the QoS (the 4th slot only keeps a bad index harmless).
        self.received_by_qos = [0, 0, 0, 0]
        self.sent_by_qos = [0, 0, 0, 0]


#: Upper bounds of the commit latency buckets, in seconds: an fsync on an SD card takes 2-50 ms.
COMMIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Observations counted into fixed buckets (not cumulative: /metrics adds them up), and their sum."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot: above every bound (+Inf)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        index = 0
        for bound in self.bounds:  # a dozen bounds, once per commit: a linear scan is fine
            if value <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.count += 1
        self.total += value

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

"""The JSON API's resources (/api/v1/...) as plain data, and its actions on the broker."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Final

from edgebus import __version__
from edgebus.core.message import Message
from edgebus.http.view import BrokerView
from edgebus.protocol.enums import ReasonCode

#: Protocol levels as the API names them.
PROTOCOLS: Final = {3: "3.1", 4: "3.1.1", 5: "5.0"}
#: Largest page of retained messages; the default page.
MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 100
#: Payload bytes shown per retained message (the API is for looking, not for copying payloads out).
PAYLOAD_PREVIEW_BYTES: Final = 256
#: Throughput samples: one every SAMPLE_INTERVAL_S, the last THROUGHPUT_SAMPLES kept (10 minutes).
SAMPLE_INTERVAL_S: Final = 2.0
THROUGHPUT_SAMPLES: Final = 300

Json = dict[str, Any]


class Throughput:
    """A ring buffer of (wall time, messages received, messages sent) samples, for the status page."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=THROUGHPUT_SAMPLES)

    def sample(self, broker: BrokerView) -> None:
        stats = broker.stats
        self.samples.append((round(time.time(), 3), stats.messages_received, stats.messages_sent))

    def as_json(self) -> Json:
        return {
            "interval_seconds": SAMPLE_INTERVAL_S,
            "samples": [{"time": t, "received": r, "sent": s} for t, r, s in self.samples],
        }


def broker_info(broker: BrokerView) -> Json:
    values = broker.sys_values()
    return {
        "version": __version__,
        "uptime_seconds": round(broker.uptime_seconds(), 3),
        "config_file": broker.config.source,
        "sys": {topic.removeprefix("$SYS/broker/"): value for topic, value in values.items()},
    }


def listeners(broker: BrokerView) -> Json:
    return {
        "listeners": [
            {"type": i.type, "address": i.address, "connections": i.connections, "refused": i.refused}
            for i in broker.listener_info()
        ]
    }


def clients(broker: BrokerView) -> Json:
    found: list[Json] = []
    for client in broker.connections.clients.values():
        conn = client.conn
        session = conn.session
        if session is None or client.closing:
            continue  # not yet accepted, or on its way out
        found.append(
            {
                "client_id": conn.client_id,
                "address": client.stream.remote,
                "protocol": PROTOCOLS.get(conn.protocol_level, str(conn.protocol_level)),
                "username": client.username,
                "keep_alive": conn.keep_alive,
                "inflight": len(session.inflight),
                "queued": len(session.outbox),
                "subscriptions": len(session.subscriptions),
            }
        )
    found.sort(key=lambda c: str(c["client_id"]))
    return {"clients": found}


def sessions(broker: BrokerView) -> Json:
    return {
        "sessions": [
            {
                "client_id": s.client_id,
                "connected": s.connection is not None,
                "expiry_interval": s.expiry_interval,
                "queued": len(s.outbox),
                "queued_bytes": s.outbox.bytes,
                "inflight": len(s.inflight),
                "subscriptions": len(s.subscriptions),
                "persistent": s.journal is not None,
            }
            for s in sorted(broker.sessions.values(), key=lambda s: s.client_id)
        ]
    }


def subscriptions(broker: BrokerView) -> Json:
    return {
        "subscriptions": [
            {
                "client_id": s.client_id,
                "filter": topic_filter,
                "qos": opts.qos,
                "no_local": opts.no_local,
                "retain_as_published": opts.retain_as_published,
                "subscription_id": opts.subscription_id,
            }
            for s in sorted(broker.sessions.values(), key=lambda s: s.client_id)
            for topic_filter, opts in s.subscriptions.items()
        ]
    }


def retained(broker: BrokerView, offset: int, limit: int, prefix: str) -> Json:
    """A page of retained messages in topic order (``$SYS`` left out: it has its own resource)."""
    messages: list[tuple[str, Message]] = sorted(
        (
            item
            for item in broker.fanout.retained.items()
            if not item[0].startswith("$") and item[0].startswith(prefix)
        ),
        key=lambda item: item[0],
    )
    page = messages[offset : offset + limit]
    return {
        "total": len(messages),
        "offset": offset,
        "limit": limit,
        "retained": [
            {
                "topic": topic,
                "qos": message.qos,
                "payload_bytes": len(message.payload),
                "payload": message.payload[:PAYLOAD_PREVIEW_BYTES].decode("utf-8", "replace"),
            }
            for topic, message in page
        ],
    }


def bridges(broker: BrokerView) -> Json:
    wall = time.time()
    found = []
    for bridge in broker.bridge_set.active:  # as configured now: a reload adds and removes bridges
        outbox = bridge.outbox
        oldest = outbox.oldest_queued_at()
        found.append(
            {
                "name": bridge.name,
                "kind": bridge.config.kind,
                "state": bridge.state,
                "last_error": bridge.last_error or None,
                "queued": len(outbox.entries),
                "queued_bytes": outbox.bytes,
                "oldest_age_seconds": 0.0 if oldest is None else round(max(0.0, wall - oldest), 3),
                "forwarded": bridge.forwarded,
                "skipped": bridge.skipped,
                "dropped": outbox.dropped,
                "refused": outbox.refused,
                "received": bridge.received,
                "connects": bridge.connects,
                "expired": bridge.expired,
            }
        )
    # Outboxes of bridges not configured now (a reload removed them): kept until one of that name returns.
    parked = []
    for name, outbox in sorted(broker.bridge_set.parked.items()):
        if outbox.entries:
            oldest = outbox.oldest_queued_at()
            parked.append(
                {
                    "name": name,
                    "queued": len(outbox.entries),
                    "queued_bytes": outbox.bytes,
                    "oldest_age_seconds": 0.0 if oldest is None else round(max(0.0, wall - oldest), 3),
                }
            )
    return {"bridges": found, "parked": parked}


# --- actions ---------------------------------------------------------------------------------------------


def disconnect_client(broker: BrokerView, client_id: str) -> bool:
    """Close a client's connection, with DISCONNECT 0x98 Administrative action on v5 [MQTT-3.14.2-1]; its
    session stays as its expiry interval says. False if no such client is connected."""
    for client in broker.connections.clients.values():
        if client.conn.session is not None and client.conn.client_id == client_id and not client.closing:
            client.close(ReasonCode.ADMINISTRATIVE_ACTION)
            return True
    return False


def delete_session(broker: BrokerView, client_id: str) -> bool:
    return broker.session_manager.delete(client_id)


def clear_retained(broker: BrokerView, topic: str) -> bool:
    return broker.fanout.clear_retained(topic)

"""The backend reading the cloud log, not the broker: device -> gateway -> bridge -> log, audited end to end.

A fleet file's ``[log]`` table names the log (``kind``, ``address``, ``stream``, ``remote_prefix``). A reader
is one small class per engine with the `LogReader` shape: it reads the log from where it stood when the run
started, and hands each entry to ``on_message(device_topic, payload)`` (the topic with the bridge's
``remote_prefix`` taken off), which feeds the same ledger as the MQTT backend does. Each engine is a module
with such a class and one line in `READERS`: Redis Streams, NATS JetStream, Kafka (a ``read_committed``
consumer) and RabbitMQ streams.

``uplink_proxy`` (optional) puts the simulator's ChaosProxy between the gateway and the log: it listens
there and forwards to ``address`` (or ``uplink_target``); point the gateway's bridge at it, and ``[chaos]
uplink_flap_interval`` cuts it (``uplink_flap_duration`` seconds each time); ``uplink_mute_interval``
silences it instead (the log gets the gateway's packets, its acknowledgements are dropped, for
``uplink_mute_duration`` seconds).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

__all__ = ["READERS", "LogReader", "LogSettings", "OnMessage", "open_reader"]

#: Called for each log entry: the device's MQTT topic and the payload it published.
OnMessage = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class LogSettings:
    """``[log]``: the cloud log the bridge forwards to, and how to read it."""

    kind: str  # a key of READERS
    host: str
    port: int
    stream: str  # Redis: the stream key; JetStream, RabbitMQ: the stream name; Kafka: the topic
    remote_prefix: str = ""  # the bridge rule's remote_prefix: taken off each topic (JetStream: subject)
    uplink_proxy_port: int = 0  # 0: no proxy between the gateway and the log
    # Where the uplink proxy forwards (0: ``port``). Kafka needs another listener there: a client goes to
    # the address the metadata advertises, so that listener must advertise the proxy's address.
    uplink_target_port: int = 0
    isolation: str = "read_committed"  # Kafka; read_uncommitted also sees aborted batches (a control run)


class LogReader(Protocol):
    """Reads one cloud log. `start` notes where the log stands (what is there already belongs to earlier
    runs); `run` then hands every later entry to ``on_message`` until cancelled."""

    async def start(self) -> None: ...

    async def run(self, on_message: OnMessage) -> None: ...

    async def close(self) -> None: ...


#: kind -> "module:class" of its reader, imported only when used (each needs its engine's client library).
READERS: dict[str, str] = {
    "redis-stream": "edgebus_fleet.log_redis:RedisStreamReader",
    "nats-jetstream": "edgebus_fleet.log_jetstream:JetStreamReader",
    "kafka": "edgebus_fleet.log_kafka:KafkaReader",
    "rabbitmq-stream": "edgebus_fleet.log_rabbitmq:RabbitStreamReader",
}


def open_reader(settings: LogSettings) -> LogReader:
    module_name, _, class_name = READERS[settings.kind].partition(":")
    reader_class = getattr(importlib.import_module(module_name), class_name)
    reader: LogReader = reader_class(settings)
    return reader


async def sleep_a_little() -> None:
    """Between polls of an empty log."""
    await trio.sleep(0.05)

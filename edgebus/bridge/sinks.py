"""The one place that maps a bridge's kind to its sink (a Kafka sink is one more branch here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgebus.bridge.runner import Bridge
    from edgebus.bridge.sink import Sink


def make_sink(bridge: Bridge) -> Sink:
    config = bridge.config
    args = (config, bridge.identity, bridge.topic_map, bridge.deliver, bridge.client_id)
    if config.kind == "mqtt":
        from edgebus.bridge.mqtt import MqttSink

        return MqttSink(*args)
    if config.kind == "nats-jetstream":
        from edgebus.bridge.jetstream import JetStreamSink  # nats-py: the "bridge" extra

        return JetStreamSink(*args)
    raise ValueError(f"unknown bridge kind {config.kind!r}")

"""The one place that maps a bridge's kind to its sink class: a new engine (Kafka, RabbitMQ streams, Redis
Streams) is its module plus one branch in `sink_class`."""

from __future__ import annotations

from edgebus.bridge.sink import SinkFactory
from edgebus.bridge.transform import require_kafka, require_nats, require_redis, require_rstream


def sink_class(kind: str) -> SinkFactory:
    """The sink class of bridge kind ``kind``: the `SinkFactory` its `edgebus.bridge.runner.Bridge` is given.
    RuntimeError when the engine's client library is not installed; ValueError for an unknown kind."""
    if kind == "mqtt":
        # Imported here too: a gateway without an MQTT bridge never loads the MQTT client (~0.7 MB).
        from edgebus.bridge.mqtt import MqttSink

        return MqttSink
    if kind == "nats-jetstream":
        require_nats()
        # Imported here, only when a JetStream bridge is configured: nats-py is the "bridge" extra.
        from edgebus.bridge.jetstream import JetStreamSink

        return JetStreamSink
    if kind == "redis-stream":
        require_redis()
        from edgebus.bridge.redis_stream import RedisStreamSink  # redis-py is the "redis" extra

        return RedisStreamSink
    if kind == "rabbitmq-stream":
        require_rstream()
        # Imported here, only when such a bridge is configured: rstream is the "rabbitmq" extra.
        from edgebus.bridge.rabbitmq_stream import RabbitStreamSink

        return RabbitStreamSink
    if kind == "kafka":
        require_kafka()
        # Imported here, only when a Kafka bridge is configured: confluent-kafka is the "kafka" extra.
        from edgebus.bridge.kafka import KafkaSink

        return KafkaSink
    raise ValueError(f"unknown bridge kind {kind!r}")

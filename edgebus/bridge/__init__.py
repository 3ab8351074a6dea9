"""Upstream bridges: a durable outbox forwarded in order, exactly once, to MQTT or NATS JetStream."""

"""The [[bridge]] schema: an upstream bridge's settings and its topic rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from edgebus.config.addresses import ListenAddress, ListenAddresses
from edgebus.config.schema import (
    MAX_FOUR_BYTE_INTEGER,
    Boolean,
    Check,
    IntRange,
    Invalid,
    NumberRange,
    OneOf,
    Text,
    setting,
    show,
)
from edgebus.core.topics import is_valid_topic_filter

BridgeKind = Literal["mqtt", "nats-jetstream", "redis-stream", "rabbitmq-stream", "kafka"]
BridgeDirection = Literal["out", "in", "both"]
BridgeTransform = Literal["none", "cbor-json"]
BridgeOverflow = Literal["refuse", "drop-oldest"]
#: Placeholders a kafka bridge's templates may use: the whole MQTT topic, or one of its levels.
_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")
#: librdkafka properties the kafka sink sets itself: `kafka_properties` must not override them.
KAFKA_OWN_PROPERTIES: Final = frozenset(
    {"bootstrap.servers", "transactional.id", "enable.idempotence", "isolation.level", "group.id"}
)
_TOPIC_RULE_KEYS: Final = ("pattern", "direction", "qos", "local_prefix", "remote_prefix", "transform")


@dataclass(frozen=True, slots=True)
class BridgeTopic:
    """One topic rule of a bridge, as Mosquitto's ``topic PATTERN DIRECTION QOS LOCAL-PREFIX REMOTE-PREFIX``:
    local topic ``local_prefix + T`` <-> remote ``remote_prefix + T`` for every T matching ``pattern``."""

    pattern: str
    direction: BridgeDirection = "out"
    qos: int = 2
    local_prefix: str = ""
    remote_prefix: str = ""
    transform: BridgeTransform = "none"  # out: CBOR payloads re-encoded as JSON for the cloud

    @property
    def outbound(self) -> bool:
        return self.direction in ("out", "both")

    @property
    def inbound(self) -> bool:
        return self.direction in ("in", "both")


@dataclass(frozen=True, slots=True)
class TopicRules(Check):
    """A non-empty list of inline tables ``{ pattern = "...", direction = "out", qos = 2, ... }``."""

    def expected(self) -> str:
        return "a non-empty list of topic rules ({ pattern = ..., direction = ..., ... })"

    def convert(self, value: object) -> object:
        if not isinstance(value, list) or not value:
            raise self.fail(value)
        rules: list[BridgeTopic] = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise Invalid(f"must be a table {{ pattern = ... }}, got {show(item)}", at=(index,))
            for key in item:
                if key not in _TOPIC_RULE_KEYS:
                    raise Invalid(f"unknown key; known: {', '.join(_TOPIC_RULE_KEYS)}", at=(index, key))
            pattern = item.get("pattern")
            if not isinstance(pattern, str) or not pattern:
                raise Invalid("pattern: must be a non-empty topic filter", at=(index,))
            values: dict[str, Any] = {"pattern": pattern}
            checks: dict[str, Check] = {
                "direction": OneOf(get_args(BridgeDirection)),
                "qos": IntRange(0, 2),
                "local_prefix": Text(allow_empty=True),
                "remote_prefix": Text(allow_empty=True),
                "transform": OneOf(get_args(BridgeTransform)),
            }
            for key, check in checks.items():
                if key in item:
                    try:
                        values[key] = check.convert(item[key])
                    except Invalid as invalid:
                        raise Invalid(invalid.problem, at=(index, key)) from None
            rules.append(BridgeTopic(**values))
        return tuple(rules)


@dataclass(frozen=True, slots=True)
class Properties(Check):
    """A table of client properties: ``{ "compression.type" = "lz4", "linger.ms" = 5 }``, as strings."""

    def expected(self) -> str:
        return 'a table of client properties ({ "linger.ms" = 5, ... })'

    def convert(self, value: object) -> object:
        if not isinstance(value, dict):
            raise self.fail(value)
        found: list[tuple[str, str]] = []
        for key, item in value.items():
            if isinstance(item, bool):
                found.append((key, "true" if item else "false"))
            elif isinstance(item, str | int | float):
                found.append((key, str(item)))
            else:
                raise Invalid(f"must be a string, number or boolean, got {show(item)}", at=(key,))
        return tuple(found)


def _template_problems(template: str, what: str) -> list[str]:
    return [
        f"{what} {template!r}: unknown placeholder {{{name}}} (use {{topic}} or a level {{1}}, {{2}}, ...)"
        for name in _PLACEHOLDER.findall(template)
        if name != "topic" and not (name.isdigit() and int(name) >= 1)
    ]


#: Most messages in one batch when ``window`` is 0 (the default), per kind (`BridgeConfig.batch_window`).
DEFAULT_WINDOW = 1000
DEFAULT_WINDOWS: dict[str, int] = {"kafka": 5000}


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """[[bridge]]: store-and-forward to an upstream MQTT broker, a NATS JetStream stream, a Redis stream, a
    RabbitMQ stream or Kafka."""

    name: str = setting(
        "", Text(allow_empty=True), "the bridge's name, unique ($SYS/broker/bridge/<name>/...)"
    )
    kind: BridgeKind = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "mqtt", OneOf(get_args(BridgeKind)), "the upstream engine"
    )
    addresses: tuple[ListenAddress, ...] = setting(
        (), ListenAddresses(), 'upstream "HOST:PORT" addresses, tried in turn'
    )
    client_id: str = setting(
        "",
        Text(allow_empty=True),
        "MQTT client id / NATS or RabbitMQ connection name; '' = edgebus-<gateway>-<name>",
    )
    username: str = setting("", Text(allow_empty=True), "user name for the upstream; '' = none")
    password: str = setting("", Text(allow_empty=True), "password for the upstream")
    tls: bool = setting(False, Boolean(), "connect with TLS")
    cafile: str = setting(
        "", Text(allow_empty=True), "PEM CA certificates to verify the upstream; '' = system"
    )
    certfile: str = setting("", Text(allow_empty=True), "PEM client certificate (mutual TLS); '' = none")
    keyfile: str = setting("", Text(allow_empty=True), "PEM private key of certfile")
    protocol_level: int = setting(5, IntRange(4, 5), "MQTT protocol level: 4 = 3.1.1, 5 = 5.0 (mqtt)")
    max_qos: int = setting(
        2,
        IntRange(1, 2),
        "mqtt: highest QoS the upstream takes (1 for AWS IoT Core, Azure IoT Hub, RabbitMQ MQTT):"
        " QoS 2 rules go at QoS 1 there, at least once",
    )
    keep_alive: float = setting(10.0, NumberRange(1, 3600), "seconds between keep-alive pings")
    ack_timeout: float = setting(
        10.0,
        NumberRange(0.1, 3600),
        "seconds a batch may wait for its acknowledgements before the link is dead",
    )
    connect_timeout: float = setting(5.0, NumberRange(0.1, 3600), "seconds to connect and be accepted")
    backoff_initial: float = setting(0.5, NumberRange(0.01, 3600), "first reconnect delay, in seconds")
    backoff_max: float = setting(30.0, NumberRange(0.01, 86400), "cap on the (doubling, jittered) delay")
    window: int = setting(
        0,
        IntRange(0, 30000),
        "most messages in flight upstream at once; 0 = the kind's default (kafka 5000, others 1000)",
    )
    rate: float = setting(0.0, NumberRange(0, 1e9), "most messages per second forwarded; 0 = no limit")
    max_messages: int = setting(250_000, IntRange(1, 100_000_000), "most messages the outbox holds")
    max_bytes: int = setting(
        67_108_864, IntRange(1024, 2**50), "most bytes the outbox holds (in memory and on disk)"
    )
    overflow: BridgeOverflow = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "refuse",
        OneOf(get_args(BridgeOverflow)),
        "what a full outbox does: refuse new messages (v5 QoS>0: 0x97) or drop its oldest (counted)",
    )
    session_expiry: int = setting(
        604_800, IntRange(0, MAX_FOUR_BYTE_INTEGER), "upstream session expiry, in seconds (mqtt v5)"
    )
    checkpoint_topic: str = setting(
        "",
        Text(allow_empty=True),
        "retained checkpoint topic (mqtt); '' = edgebus/bridge/<client_id>/checkpoint",
    )
    stream: str = setting(
        "",
        Text(allow_empty=True),
        "the JetStream stream the subjects belong to; the Redis stream key ('' = edgebus:<gateway_id>);"
        " the RabbitMQ stream",
    )
    key: str = setting(
        "{topic}", Text(allow_empty=True), "kafka record key template ({topic}, {1}, ...); '' = no key"
    )
    transactional: bool = setting(
        True, Boolean(), "kafka: one transaction per batch, resume from the committed state (exactly once)"
    )
    state_topic: str = setting(
        "__edgebus_bridge_state", Text(), "kafka: the compacted topic holding each bridge's resume point"
    )
    kafka_properties: tuple[tuple[str, str], ...] = setting(
        (), Properties(), "kafka: extra librdkafka properties for the producer and consumer"
    )
    topics: tuple[BridgeTopic, ...] = setting((), TopicRules(), "topic rules: what goes out, what comes in")

    @property
    def batch_window(self) -> int:
        """``window``, or the kind's default. Kafka's is larger because each batch is a transaction (a few
        round trips whatever its size): measured by bench.bridge, 10,000 messages, first to last record
        11,600-13,600 msg/s with batches of 1,000 and 36,000-72,000 with 5,000, at 12 and 7-8.5 us of
        gateway CPU per message."""
        return self.window or DEFAULT_WINDOWS.get(self.kind, DEFAULT_WINDOW)

    def problems(self) -> list[tuple[str, str]]:
        """Problems across keys, as (key, message)."""
        found: list[tuple[str, str]] = []
        if not self.name:
            found.append(("name", "a bridge needs a name"))
        elif not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            found.append(("name", "use letters, digits, '_', '.' and '-' only"))
        if not self.addresses:
            found.append(("addresses", "a bridge needs at least one upstream address"))
        if not self.topics:
            found.append(("topics", "a bridge needs at least one topic rule"))
        if self.kind == "nats-jetstream" and not self.stream:
            found.append(("stream", "a nats-jetstream bridge needs the stream name"))
        if self.kind == "redis-stream" and any(rule.inbound for rule in self.topics):
            found.append(("topics", "a redis-stream bridge forwards out rules only (no in rules yet)"))
        if self.kind == "rabbitmq-stream" and not self.stream:
            found.append(("stream", "a rabbitmq-stream bridge needs the stream name"))
        if self.kind == "rabbitmq-stream" and any(rule.inbound for rule in self.topics):
            found.append(("topics", "a rabbitmq-stream bridge forwards out only: no in or both rules"))
        if self.kind == "kafka":
            found += self._kafka_problems()
        if self.backoff_max < self.backoff_initial:
            found.append(("backoff_max", "must not be below backoff_initial"))
        for rule in self.topics:
            if not is_valid_topic_filter(rule.pattern) or rule.pattern.startswith("$share/"):
                found.append(("topics", f"pattern {rule.pattern!r} is not a valid topic filter"))
            found += [
                ("topics", f"prefix {prefix!r} must not contain wildcards")
                for prefix in (rule.local_prefix, rule.remote_prefix)
                if "+" in prefix or "#" in prefix
            ]
        return found

    def _kafka_problems(self) -> list[tuple[str, str]]:
        found = [("key", problem) for problem in _template_problems(self.key, "key")]
        for rule in self.topics:
            if not rule.remote_prefix:
                found.append(("topics", f"rule {rule.pattern!r}: remote_prefix must name the Kafka topic"))
            elif rule.inbound and "{" in rule.remote_prefix:
                problem = f"rule {rule.pattern!r}: an in rule's Kafka topic cannot be a template"
                found.append(("topics", problem))
            else:
                what = f"rule {rule.pattern!r}: remote_prefix"
                found += [("topics", problem) for problem in _template_problems(rule.remote_prefix, what)]
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", self.state_topic):
            found.append(("state_topic", "a Kafka topic name: letters, digits, '.', '_' and '-' only"))
        found += [
            ("kafka_properties", f"{name!r} is set by the bridge itself")
            for name, _ in self.kafka_properties
            if name in KAFKA_OWN_PROPERTIES
        ]
        return found

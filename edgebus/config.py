"""Load the broker's TOML configuration into frozen dataclasses; every error names the file, line and key."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar, get_args

from edgebus.core.outbox import OverflowPolicy
from edgebus.core.topics import is_valid_topic_filter

__all__ = [
    "Boolean",
    "BridgeConfig",
    "BridgeTopic",
    "Check",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Durability",
    "IntRange",
    "LimitsConfig",
    "ListenAddress",
    "ListenAddresses",
    "ListenerConfig",
    "MqttConfig",
    "NumberRange",
    "OneListenAddress",
    "OneOf",
    "QueueConfig",
    "Section",
    "SectionArray",
    "SecurityConfig",
    "ServerConfig",
    "Setting",
    "SettingInfo",
    "StorageConfig",
    "SysConfig",
    "Text",
    "TopicRules",
    "iter_settings",
    "load_config",
    "parse_config",
    "parse_listen_address",
    "section",
    "section_array",
    "setting",
]

_T = TypeVar("_T")

# A location inside the TOML document: table names / keys, and indexes into arrays (of tables).
KeyPath = tuple[str | int, ...]

# Where each field's schema entry lives in ``dataclasses.Field.metadata``.
_SCHEMA_KEY: Final = "edgebus.config.schema"

MAX_PORT: Final = 65535
# Largest value a Four Byte Integer can carry (§1.5.3): Session Expiry Interval, Maximum Packet Size.
MAX_FOUR_BYTE_INTEGER: Final = 4_294_967_295
# Largest Remaining Length a Variable Byte Integer can encode (§1.5.5) plus the 5-byte maximum fixed header.
MAX_PACKET_SIZE_BYTES: Final = 268_435_455 + 5


# ----------------------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration: where (file, line, key) and what."""

    source: str
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.message}" if self.key is None else f"{where}: {self.key}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used. ``str(error)`` is one ``file:line: key: problem`` line per problem,
    in file order; ``problems`` holds them as data."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[tuple[ConfigProblem, ...]]]:
        # The constructor takes the problems, not the message; keep pickling (e.g. across processes) working.
        return (ConfigError, (self.problems,))

    @property
    def source(self) -> str:
        return self.problems[0].source

    @property
    def line(self) -> int | None:
        return self.problems[0].line

    @property
    def key(self) -> str | None:
        return self.problems[0].key


class Invalid(Exception):
    """Raised by a ``Check``: the value is unusable. ``at`` refines the key path (e.g. a list index)."""

    def __init__(self, problem: str, at: KeyPath = (), needle: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at
        self.needle = needle


def show(value: object) -> str:
    """A TOML-flavoured rendering of a value for error messages (``true``, ``"text"``, ``[1, 2]``)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, float) and not math.isfinite(value):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    elif isinstance(value, list):
        text = "[" + ", ".join(show(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------------------------------------
# Checks: each turns a raw TOML value into the Python value, or raises Invalid saying what was expected.


class Check:
    """Validates and converts one setting's TOML value."""

    __slots__ = ()

    def expected(self) -> str:
        """What a valid value is, as the tail of "must be ..."."""
        raise NotImplementedError

    def convert(self, value: object) -> object:
        """The Python value for the TOML ``value``; raises Invalid if it is unusable."""
        raise NotImplementedError

    def fail(self, value: object) -> Invalid:
        return Invalid(f"must be {self.expected()}, got {show(value)}")


@dataclass(frozen=True, slots=True)
class IntRange(Check):
    """An integer in ``low..high`` inclusive. TOML booleans are not integers here."""

    low: int
    high: int

    def expected(self) -> str:
        return f"an integer from {self.low} to {self.high}"

    def convert(self, value: object) -> object:
        # bool is a subclass of int in Python; `receive_maximum = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise self.fail(value)
        return value


@dataclass(frozen=True, slots=True)
class NumberRange(Check):
    """A number (TOML integer or float) in ``low..high`` inclusive, converted to float."""

    low: float
    high: float

    def expected(self) -> str:
        return f"a number from {self.low:g} to {self.high:g}"

    def convert(self, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(value)
        number = float(value)
        # NaN fails every comparison, so it is rejected here too.
        if not self.low <= number <= self.high:
            raise self.fail(value)
        return number


@dataclass(frozen=True, slots=True)
class Boolean(Check):
    """``true`` or ``false``."""

    def expected(self) -> str:
        return "true or false"

    def convert(self, value: object) -> object:
        if not isinstance(value, bool):
            raise self.fail(value)
        return value


@dataclass(frozen=True, slots=True)
class OneOf(Check):
    """One string out of a fixed set."""

    choices: tuple[str, ...]

    def expected(self) -> str:
        return "one of " + ", ".join(show(choice) for choice in self.choices)

    def convert(self, value: object) -> object:
        if not isinstance(value, str) or value not in self.choices:
            raise self.fail(value)
        return value


@dataclass(frozen=True, slots=True)
class Text(Check):
    """A string; empty only if ``allow_empty``."""

    allow_empty: bool = False

    def expected(self) -> str:
        return "a string" if self.allow_empty else "a non-empty string"

    def convert(self, value: object) -> object:
        if not isinstance(value, str) or not (value or self.allow_empty):
            raise self.fail(value)
        return value


@dataclass(frozen=True, slots=True)
class ListenAddresses(Check):
    """A non-empty list of distinct ``HOST:PORT`` strings, converted to a tuple of ``ListenAddress``."""

    def expected(self) -> str:
        return 'a non-empty list of "HOST:PORT" strings'

    def convert(self, value: object) -> object:
        if not isinstance(value, list) or not value:
            raise self.fail(value)
        addresses: list[ListenAddress] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise Invalid(f'must be a "HOST:PORT" string, got {show(item)}', at=(index,))
            try:
                address = parse_listen_address(item)
            except ValueError as error:
                raise Invalid(str(error), at=(index,), needle=item) from None
            if address in addresses:
                raise Invalid(f"{show(item)} is listed twice", at=(index,), needle=item)
            addresses.append(address)
        return tuple(addresses)


@dataclass(frozen=True, slots=True)
class OneListenAddress(Check):
    """One ``HOST:PORT`` string, converted to a ``ListenAddress``."""

    def expected(self) -> str:
        return 'a "HOST:PORT" string'

    def convert(self, value: object) -> object:
        if not isinstance(value, str):
            raise self.fail(value)
        try:
            return parse_listen_address(value)
        except ValueError as error:
            raise Invalid(str(error)) from None


# ----------------------------------------------------------------------------------------------------------
# Schema entries, attached to dataclass fields. A section is a dataclass whose fields are `setting(...)`s;
# the root `Config` is a dataclass whose fields are `section(...)`s / `section_array(...)`s. The loader only
# walks this metadata, so a new section is one dataclass plus one field on `Config`.


@dataclass(frozen=True, slots=True)
class Setting:
    """Schema entry of one key: how to check it and what it means (unit, effect)."""

    check: Check
    doc: str


@dataclass(frozen=True, slots=True)
class Section:
    """Schema entry of a ``[table]`` loaded into the dataclass ``cls``."""

    cls: type[Any]
    doc: str


@dataclass(frozen=True, slots=True)
class SectionArray:
    """Schema entry of an ``[[array of tables]]``, each element loaded into the dataclass ``cls``; the field
    holds a tuple."""

    cls: type[Any]
    doc: str


SchemaEntry = Setting | Section | SectionArray


def setting(default: _T, check: Check, doc: str) -> _T:
    """Declare a dataclass field as a TOML key with its default, check and documentation."""
    return field(default=default, metadata={_SCHEMA_KEY: Setting(check, doc)})


def section(cls: type[_T], doc: str) -> _T:
    """Declare a field of a configuration dataclass as a ``[table]`` whose default is ``cls()``."""
    return field(default=cls(), metadata={_SCHEMA_KEY: Section(cls, doc)})


def section_array(cls: type[Any], doc: str) -> Any:
    """Declare a field as an ``[[array of tables]]`` of ``cls``; it holds a tuple, empty by default."""
    return field(default=(), metadata={_SCHEMA_KEY: SectionArray(cls, doc)})


def _schema(cls: type[Any]) -> dict[str, SchemaEntry]:
    """The TOML keys of a configuration dataclass; fields without schema metadata (``source``) are none."""
    return {f.name: f.metadata[_SCHEMA_KEY] for f in dataclasses.fields(cls) if _SCHEMA_KEY in f.metadata}


# ----------------------------------------------------------------------------------------------------------
# Listen addresses


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A TCP address to listen on. ``host`` is kept without IPv6 brackets; port 0 means any free port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("listen address host must not be empty")
        if isinstance(self.port, bool) or not 0 <= self.port <= MAX_PORT:
            raise ValueError(f"listen address port must be from 0 to {MAX_PORT}, got {self.port!r}")

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_LISTEN_EXAMPLES: Final = "e.g. 0.0.0.0:1883, localhost:1883 or [::1]:1883"


def parse_listen_address(text: str) -> ListenAddress:
    """Parse ``HOST:PORT`` (IPv6 as ``[ADDR]:PORT``). Raises ValueError saying what is wrong."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"invalid listen address {show(text)}: missing ']' after the IPv6 address")
        if not rest.startswith(":"):
            raise ValueError(f"invalid listen address {show(text)}: expected ':PORT' after ']'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"invalid listen address {show(text)}: {show(host)} is not an IPv6 address"
            ) from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"invalid listen address {show(text)}: expected HOST:PORT, {_LISTEN_EXAMPLES}")
        if ":" in host:
            raise ValueError(
                f"invalid listen address {show(text)}: put an IPv6 address in brackets, e.g. [::1]:1883"
            )
        if not host:
            raise ValueError(
                f"invalid listen address {show(text)}: missing host (use 0.0.0.0 or [::] for all interfaces)"
            )
        if not _is_host(host):
            raise ValueError(
                f"invalid listen address {show(text)}: {show(host)} is not an IPv4 address or host name"
            )
    if not _PORT_RE.fullmatch(port_text) or int(port_text) > MAX_PORT:
        raise ValueError(
            f"invalid listen address {show(text)}: port must be an integer from 0 to {MAX_PORT}, "
            f"got {show(port_text)}"
        )
    return ListenAddress(host, int(port_text))


def _is_host(host: str) -> bool:
    """An IPv4 dotted quad or a DNS host name (RFC 1123 labels)."""
    labels = host.removesuffix(".").split(".")
    if all(label.isascii() and label.isdigit() for label in labels):
        # All-numeric: only a proper dotted quad makes sense ("999.1.1.1" and "1883" do not).
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 253 and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)


# ----------------------------------------------------------------------------------------------------------
# The sections


LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """[server]: where the broker listens and keeps its data."""

    listen: tuple[ListenAddress, ...] = setting(
        (ListenAddress("0.0.0.0", 1883),),
        ListenAddresses(),
        'TCP addresses to accept MQTT connections on, "HOST:PORT", IPv6 as "[::1]:1883"; port 0 = any free',
    )
    data_dir: str = setting("./edgebus-data", Text(), "directory of the durable state (sessions, messages)")
    gateway_id: str = setting(
        "", Text(allow_empty=True), "this gateway's name in bridged message ids; '' = the host name"
    )
    log_level: LogLevel = setting(  # noqa: RUF009 - setting() is dataclasses.field() with an immutable default
        "info", OneOf(get_args(LogLevel)), "least severe log level written"
    )


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """[mqtt]: protocol limits and the features the broker announces in CONNACK (v5)."""

    max_packet_size: int = setting(
        1_048_576,
        IntRange(16, MAX_PACKET_SIZE_BYTES),
        "largest packet accepted, in bytes; announced as Maximum Packet Size on v5 (§3.2.2.3.6)",
    )
    receive_maximum: int = setting(
        100,
        IntRange(1, 65535),
        "inbound QoS>0 PUBLISH window per client, announced on v5; exceeding it -> DISCONNECT 0x93 (§3.3.4)",
    )
    max_inflight: int = setting(
        100,
        IntRange(1, 65535),
        "cap on unacknowledged outbound QoS>0 PUBLISHes per client (min with the client's Receive Maximum)",
    )
    topic_alias_maximum: int = setting(
        64, IntRange(0, 65535), "inbound topic aliases accepted per connection on v5; 0 = none (§3.2.2.3.8)"
    )
    max_keep_alive: int = setting(
        65535,
        IntRange(1, 65535),
        "longest keep alive granted, in seconds; larger (or 0) requests get Server Keep Alive = this on v5",
    )
    max_session_expiry_interval: int = setting(
        MAX_FOUR_BYTE_INTEGER,
        IntRange(0, MAX_FOUR_BYTE_INTEGER),
        "cap on the Session Expiry Interval a client asks for, in seconds",
    )
    max_qos: int = setting(2, IntRange(0, 2), "highest QoS supported, announced as Maximum QoS on v5")
    retain_available: bool = setting(True, Boolean(), "whether retained messages are supported")
    wildcard_subscriptions: bool = setting(True, Boolean(), "whether subscriptions may use '+' and '#'")
    subscription_identifiers: bool = setting(True, Boolean(), "whether v5 Subscription Identifiers work")
    shared_subscriptions: bool = setting(True, Boolean(), "whether $share/<group>/<filter> is supported")


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """[queue]: the bounded per-session queue of messages waiting for delivery."""

    max_messages: int = setting(1000, IntRange(1, 10_000_000), "most messages queued per session")
    max_bytes: int = setting(16_777_216, IntRange(1024, 2**40), "most payload bytes queued per session")
    overflow: OverflowPolicy = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "drop-oldest",
        OneOf(get_args(OverflowPolicy)),
        "what a full queue does: drop its oldest message, drop the new one, or refuse it (v5 QoS>0: 0x97)",
    )


Durability = Literal["fsync", "os", "memory"]


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """[storage]: the durable state (sessions, queues, in-flight and retained messages) in server.data_dir."""

    durability: Durability = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "fsync",
        OneOf(get_args(Durability)),
        "when a QoS 1/2 message counts as safe: fsync = on disk before PUBACK/PUBREC (survives power loss);"
        " os = handed to the OS (survives a broker crash, not a power cut); memory = never stored",
    )
    max_bytes: int = setting(0, IntRange(0, 2**50), "cap on the store's size on disk, in bytes; 0 = no cap")


@dataclass(frozen=True, slots=True)
class SysConfig:
    """[sys]: the $SYS status topics."""

    interval: float = setting(10.0, NumberRange(0, 86400), "seconds between $SYS publications; 0 disables")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """[security]: who may connect (password file, anonymous access) and what they may do (ACL file)."""

    allow_anonymous: bool = setting(True, Boolean(), "whether clients without a user name may connect")
    password_file: str = setting(
        "", Text(allow_empty=True), "password file (mosquitto_passwd, edgebus passwd); '' = none"
    )
    acl_file: str = setting("", Text(allow_empty=True), "Mosquitto-format ACL file; '' = no restrictions")
    auth_failure_delay: float = setting(
        1.0, NumberRange(0, 60), "seconds a refused CONNECT waits for its CONNACK; doubles per repeat"
    )
    auth_failure_delay_max: float = setting(
        30.0, NumberRange(0, 3600), "cap on the doubled delay of repeated authentication failures, in seconds"
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """[limits]: bounds that keep one client (or many) from exhausting the gateway."""

    max_connections: int = setting(0, IntRange(0, 10_000_000), "most open connections in all; 0 = no limit")
    connect_timeout: float = setting(
        10.0, NumberRange(0.1, 3600), "seconds a new connection has to send CONNECT (and finish TLS)"
    )
    max_topic_length: int = setting(65535, IntRange(1, 65535), "longest topic name or filter, in bytes")
    max_topic_levels: int = setting(0, IntRange(0, 65535), "most levels in a topic or filter; 0 = no limit")
    max_subscriptions_per_client: int = setting(
        0, IntRange(0, 10_000_000), "most subscriptions one session may hold; 0 = no limit"
    )
    max_message_rate: float = setting(
        0.0, NumberRange(0, 1e9), "PUBLISH packets per second one client may send; 0 = no limit"
    )
    max_byte_rate: float = setting(0.0, NumberRange(0, 1e12), "bytes per second a client may send; 0 = none")


BridgeKind = Literal["mqtt", "nats-jetstream"]
BridgeDirection = Literal["out", "in", "both"]
BridgeTransform = Literal["none", "cbor-json"]
BridgeOverflow = Literal["refuse", "drop-oldest"]
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
class BridgeConfig:
    """[[bridge]]: store-and-forward to an upstream MQTT broker or a NATS JetStream stream."""

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
        "", Text(allow_empty=True), "MQTT client id / NATS connection name; '' = edgebus-<gateway>-<name>"
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
    keep_alive: float = setting(10.0, NumberRange(1, 3600), "seconds between keep-alive pings")
    ack_timeout: float = setting(
        10.0,
        NumberRange(0.1, 3600),
        "seconds a batch may wait for its acknowledgements before the link is dead",
    )
    connect_timeout: float = setting(5.0, NumberRange(0.1, 3600), "seconds to connect and be accepted")
    backoff_initial: float = setting(0.5, NumberRange(0.01, 3600), "first reconnect delay, in seconds")
    backoff_max: float = setting(30.0, NumberRange(0.01, 86400), "cap on the (doubling, jittered) delay")
    window: int = setting(1000, IntRange(1, 30000), "most messages in flight upstream at once")
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
    stream: str = setting("", Text(allow_empty=True), "the JetStream stream the subjects belong to")
    topics: tuple[BridgeTopic, ...] = setting((), TopicRules(), "topic rules: what goes out, what comes in")

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


ListenerType = Literal["tcp", "tls", "ws", "wss"]
TlsVersion = Literal["1.2", "1.3"]


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """[[listener]]: a listener besides server.listen: plain TCP, TLS, WebSocket or WebSocket over TLS."""

    type: ListenerType = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "tcp", OneOf(get_args(ListenerType)), "what the listener speaks"
    )
    address: ListenAddress = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        ListenAddress("0.0.0.0", 8883), OneListenAddress(), '"HOST:PORT" to listen on, IPv6 as "[::1]:8883"'
    )
    certfile: str = setting("", Text(allow_empty=True), "PEM certificate chain of the server (tls, wss)")
    keyfile: str = setting("", Text(allow_empty=True), "PEM private key of the server (tls, wss)")
    cafile: str = setting("", Text(allow_empty=True), "PEM CA certificates client certificates must chain to")
    require_certificate: bool = setting(
        False, Boolean(), "whether clients must present a certificate signed by cafile (mutual TLS)"
    )
    use_identity_as_username: bool = setting(
        False, Boolean(), "take the user name from the client certificate's Common Name (no password check)"
    )
    min_tls_version: TlsVersion = setting(  # noqa: RUF009 - dataclasses.field() with an immutable default
        "1.2", OneOf(get_args(TlsVersion)), "oldest TLS version accepted"
    )
    max_connections: int = setting(0, IntRange(0, 10_000_000), "most connections on this listener; 0 = none")
    path: str = setting("/mqtt", Text(), "HTTP path of the WebSocket endpoint (ws, wss)")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole broker configuration. ``Config()`` is the built-in default the broker runs on without a file;
    ``source`` names the file it was loaded from (not a TOML key)."""

    # section() is dataclasses.field() whose default is a frozen (immutable) instance, hence the noqa.
    server: ServerConfig = section(ServerConfig, "addresses, data directory, logging")  # noqa: RUF009
    mqtt: MqttConfig = section(MqttConfig, "protocol limits and announced features")  # noqa: RUF009
    queue: QueueConfig = section(QueueConfig, "per-session delivery queue bounds")  # noqa: RUF009
    storage: StorageConfig = section(StorageConfig, "durable state")  # noqa: RUF009
    sys: SysConfig = section(SysConfig, "$SYS topics")  # noqa: RUF009
    security: SecurityConfig = section(SecurityConfig, "authentication and authorization")  # noqa: RUF009
    limits: LimitsConfig = section(LimitsConfig, "connection, topic and rate limits")  # noqa: RUF009
    listener: tuple[ListenerConfig, ...] = section_array(ListenerConfig, "extra listeners: tls, ws, wss, tcp")
    bridge: tuple[BridgeConfig, ...] = section_array(BridgeConfig, "upstream bridges (store-and-forward)")
    source: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        names = [bridge.name for bridge in self.bridge]
        twice = sorted({name for name in names if names.count(name) > 1})
        return [("bridge", f"bridge name {name!r} is used twice") for name in twice]


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One key of the schema, for documentation and tests."""

    key: str  # dotted, e.g. "mqtt.receive_maximum"; array-of-tables members as "bridges[].host"
    default: object
    check: Check
    doc: str


def iter_settings(cls: type[Any] = Config, prefix: str = "") -> Iterator[SettingInfo]:
    """Every key of the schema rooted at ``cls``, in declaration order."""
    for f in dataclasses.fields(cls):
        entry = f.metadata.get(_SCHEMA_KEY)
        if isinstance(entry, Setting):
            yield SettingInfo(prefix + f.name, f.default, entry.check, entry.doc)
        elif isinstance(entry, Section):
            yield from iter_settings(entry.cls, f"{prefix}{f.name}.")
        elif isinstance(entry, SectionArray):
            yield from iter_settings(entry.cls, f"{prefix}{f.name}[].")


# ----------------------------------------------------------------------------------------------------------
# Line numbers: tomllib gives none, so a light scan of the text records where each table and key is first
# written. The text is valid TOML by then (tomllib parsed it), which keeps the scan simple.

_BARE_KEY = r"[A-Za-z0-9_-]+"
_BASIC_KEY = r'"(?:[^"\\\n]|\\.)*"'
_LITERAL_KEY = r"'[^'\n]*'"
_SIMPLE_KEY = rf"(?:{_BARE_KEY}|{_BASIC_KEY}|{_LITERAL_KEY})"
_DOTTED_KEY = rf"{_SIMPLE_KEY}(?:[ \t]*\.[ \t]*{_SIMPLE_KEY})*"
_SIMPLE_KEY_RE: Final = re.compile(_SIMPLE_KEY)
_ARRAY_HEADER_RE: Final = re.compile(rf"[ \t]*\[\[[ \t]*({_DOTTED_KEY})[ \t]*\]\]")
_TABLE_HEADER_RE: Final = re.compile(rf"[ \t]*\[[ \t]*({_DOTTED_KEY})[ \t]*\]")
_KEY_VALUE_RE: Final = re.compile(rf"[ \t]*({_DOTTED_KEY})[ \t]*=")
_SYNTAX_POSITION_RE: Final = re.compile(r" \(at (?:line (\d+), column (\d+)|end of document)\)$")


def _key_parts(key: str) -> list[str]:
    parts = []
    for simple in _SIMPLE_KEY_RE.findall(key):
        if simple.startswith('"'):
            # Let tomllib decode the escapes of a quoted key exactly as it did for the data.
            parts.append(next(iter(tomllib.loads(f"{simple} = 0"))))
        elif simple.startswith("'"):
            parts.append(simple[1:-1])
        else:
            parts.append(simple)
    return parts


def _multiline_string_after(text: str, open_delimiter: str | None) -> str | None:
    """Scan one line of TOML values, skipping strings and comments; return the delimiter of a multi-line
    string left open at its end (so the following lines are string content, not keys), else None."""
    position, length = 0, len(text)
    delimiter = open_delimiter
    while position < length:
        if delimiter is not None:
            # Inside a string: find its end; backslash escapes exist only in basic ("...") strings.
            char = text[position]
            if char == "\\" and delimiter.startswith('"'):
                position += 2
            elif text.startswith(delimiter, position):
                position += len(delimiter)
                delimiter = None
            else:
                position += 1
            continue
        if text[position] == "#":
            return None
        for opener in ('"""', "'''", '"', "'"):
            if text.startswith(opener, position):
                delimiter = opener
                position += len(opener)
                break
        else:
            position += 1
    # A single-line string cannot span lines; only a multi-line one stays open.
    return delimiter if delimiter in ('"""', "'''") else None


class LineIndex:
    """First line (1-based) at which each key path is written in a TOML text."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.first_line: dict[KeyPath, int] = {}
        array_lengths: dict[KeyPath, int] = {}
        table: KeyPath = ()
        open_string: str | None = None

        def resolve(names: list[str]) -> KeyPath:
            # `[a.b]` after `[[a]]` means a table inside the last element of a.
            path: KeyPath = ()
            for name in names:
                path += (name,)
                if path in array_lengths:
                    path += (array_lengths[path] - 1,)
            return path

        for number, line in enumerate(self.lines, start=1):
            if open_string is not None:
                open_string = _multiline_string_after(line, open_string)
                continue
            if match := _ARRAY_HEADER_RE.match(line):
                names = _key_parts(match[1])
                parent = resolve(names[:-1])
                array = (*parent, names[-1])
                array_lengths[array] = array_lengths.get(array, 0) + 1
                table = (*array, array_lengths[array] - 1)
                self._record(table, number)
            elif match := _TABLE_HEADER_RE.match(line):
                table = resolve(_key_parts(match[1]))
                self._record(table, number)
            elif match := _KEY_VALUE_RE.match(line):
                self._record(table + tuple(_key_parts(match[1])), number)
                open_string = _multiline_string_after(line[match.end() :], None)
            else:
                # A line inside a multi-line array may open a multi-line string too.
                open_string = _multiline_string_after(line, None)

    def _record(self, path: KeyPath, number: int) -> None:
        for end in range(1, len(path) + 1):
            self.first_line.setdefault(path[:end], number)

    def find(self, path: KeyPath, needle: str | None = None) -> int:
        """The line of ``path``, else of its nearest written parent, else 1. With ``needle`` (a string value
        inside a multi-line array), the first line from there on that contains it quoted."""
        for end in range(len(path), 0, -1):
            if (number := self.first_line.get(path[:end])) is not None:
                break
        else:
            return 1
        if needle is not None:
            quoted = (show(needle), f"'{needle}'")
            for candidate in range(number, min(number + 1000, len(self.lines) + 1)):
                if any(q in self.lines[candidate - 1] for q in quoted):
                    return candidate
        return number


def dotted(path: KeyPath) -> str:
    """A key path as the user would write it: ``mqtt.receive_maximum``, ``bridges[0].host``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if re.fullmatch(_BARE_KEY, part) else show(part)
            text += f".{name}" if text else name
    return text


# ----------------------------------------------------------------------------------------------------------
# The loader: walks the schema metadata, collecting every problem before raising.


class _Loader:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines = LineIndex(text)
        self.problems: list[ConfigProblem] = []

    def report(self, path: KeyPath, message: str, needle: str | None = None) -> None:
        line = self.lines.find(path, needle)
        self.problems.append(ConfigProblem(self.source, line, dotted(path), message))

    def build(self, cls: type[Any], table: Mapping[str, object], path: KeyPath) -> Any | None:
        """An instance of the configuration dataclass ``cls`` from ``table``, or None after reporting."""
        schema = _schema(cls)
        values: dict[str, object] = {}
        failed = False
        for key, raw in table.items():
            entry = schema.get(key)
            if entry is None:
                self.report((*path, key), self._unknown(cls, key, raw, path))
                failed = True
                continue
            value = self.load(entry, raw, (*path, key))
            if value is _FAILED:
                failed = True
            else:
                values[key] = value
        if failed:
            return None
        built = cls(**values)
        problems = getattr(built, "problems", None)
        if problems is not None:
            for key, message in problems():
                self.report((*path, key), message)
            if problems():
                return None
        return built

    def load(self, entry: SchemaEntry, raw: object, path: KeyPath) -> object:
        if isinstance(entry, Setting):
            try:
                return entry.check.convert(raw)
            except Invalid as invalid:
                self.report(path + invalid.at, invalid.problem, invalid.needle)
                return _FAILED
        if isinstance(entry, Section):
            if not isinstance(raw, dict):
                self.report(path, f"must be a table ([{dotted(path)}]), got {show(raw)}")
                return _FAILED
            built = self.build(entry.cls, raw, path)
            return _FAILED if built is None else built
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            self.report(path, f"must be an array of tables ([[{dotted(path)}]]), got {show(raw)}")
            return _FAILED
        items = [self.build(entry.cls, item, (*path, index)) for index, item in enumerate(raw)]
        return _FAILED if any(item is None for item in items) else tuple(items)

    def _unknown(self, cls: type[Any], key: str, raw: object, path: KeyPath) -> str:
        known = list(_schema(cls))
        if not path:
            message = "unknown section" if isinstance(raw, dict) else "unknown top-level key"
            homes = [info.key for info in iter_settings(cls) if info.key.rsplit(".", 1)[-1] == key]
            if homes and not isinstance(raw, dict):
                return f"{message}; did you mean {homes[0]} (in its [section])?"
        else:
            message = "unknown key"
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
        hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(known)
        return f"{message}; {hint}"


_FAILED: Final = object()


def parse_config(text: str, source: str = "<string>") -> Config:
    """The configuration in the TOML ``text``; ``source`` names it in errors and in ``Config.source``."""
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        line = max(1, len(text.splitlines()))
        if match := _SYNTAX_POSITION_RE.search(message):
            message = message[: match.start()]
            if match[1] is not None:
                line = int(match[1])
                message += f" (column {match[2]})"
            else:
                message += " (at end of file)"
        raise ConfigError([ConfigProblem(source, line, None, f"invalid TOML: {message}")]) from None
    loader = _Loader(text, source)
    config: Config | None = loader.build(Config, data, ())
    if loader.problems:
        raise ConfigError(sorted(loader.problems, key=lambda problem: problem.line or 0))
    assert config is not None  # no problems means every section was built
    return dataclasses.replace(config, source=source)


def load_config(path: str | os.PathLike[str]) -> Config:
    """The configuration in the TOML file at ``path``; every problem is a ConfigError naming the file."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError([ConfigProblem(source, None, None, f"cannot read config file: {reason}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        problem = ConfigProblem(source, line, None, f"not valid UTF-8 (at byte offset {error.start})")
        raise ConfigError([problem]) from None
    return parse_config(text, source)

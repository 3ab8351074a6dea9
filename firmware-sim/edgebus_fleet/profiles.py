"""Device profiles and fleet files (TOML) into frozen dataclasses; errors name the file, line and key.

The checks and the line finder are edgebus.config's, so a profile error reads like a broker config
error: ``devices/meter.toml:12: publish[0].qos: must be an integer from 0 to 2, got 3``.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edgebus.config import (
    Boolean,
    Check,
    ConfigError,
    ConfigProblem,
    IntRange,
    Invalid,
    KeyPath,
    LineIndex,
    NumberRange,
    OneOf,
    Text,
    dotted,
    show,
)
from edgebus.config.addresses import OneListenAddress
from edgebus_fleet.cloud_log import READERS, LogSettings

MAX_FOUR_BYTE_INTEGER: Final = 4_294_967_295
PROTOCOLS: Final = {"3.1": 3, "3.1.1": 4, "5": 5}
ENCODINGS: Final = ("cbor", "json")
FIELD_TYPES: Final = ("float", "int", "bool", "choice", "counter")
#: Keys every message carries in its payload for the audit; a schema field may not reuse them.
AUDIT_KEYS: Final = frozenset({"dev", "seq", "ts", "run"})
TEMPLATE_NAMES: Final = frozenset({"device_id", "index", "profile"})

__all__ = [
    "ChaosSettings",
    "CommandSettings",
    "DeviceGroup",
    "DeviceProfile",
    "FieldSpec",
    "Fleet",
    "ProfileError",
    "ReconnectSettings",
    "SleepSettings",
    "StreamSpec",
    "WillSpec",
    "load_fleet",
    "load_profile",
]

ProfileError = ConfigError


# --------------------------------------------------------------------------------------------------------
# The data


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a payload schema."""

    name: str
    type: str  # one of FIELD_TYPES
    min: float = 0.0
    max: float = 1.0
    decimals: int = 2  # float
    values: tuple[str, ...] = ()  # choice
    step_min: float = 0.0  # counter: each reading adds a step in step_min..step_max
    step_max: float = 1.0


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A kind of message a device publishes periodically."""

    name: str
    topic: str
    qos: int = 0
    retain: bool = False
    interval: float = 10.0
    jitter: float = 0.1
    encoding: str = "cbor"
    on_connect: bool = False  # also publish once right after every (re)connect
    fields: tuple[FieldSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class WillSpec:
    topic: str
    payload: str = "offline"
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class CommandSettings:
    """Commands the backend sends to each device of the profile, and the device's execution reports."""

    topic: str
    qos: int = 1
    interval: float = 10.0
    jitter: float = 0.1
    report_topic: str = ""
    report_qos: int = 1
    execution_time: float = 0.05


@dataclass(frozen=True, slots=True)
class SleepSettings:
    """Duty cycle: awake for ``awake`` seconds, then disconnected for ``asleep`` seconds."""

    awake: float
    asleep: float
    jitter: float = 0.1


@dataclass(frozen=True, slots=True)
class ReconnectSettings:
    """Exponential backoff between failed connection attempts."""

    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    name: str
    source: str
    description: str = ""
    protocol_level: int = 5
    client_id: str = "{device_id}"
    keep_alive: int = 60
    clean_start: bool = True
    session_expiry: int = 0
    publish: tuple[StreamSpec, ...] = ()
    will: WillSpec | None = None
    commands: CommandSettings | None = None
    sleep: SleepSettings | None = None
    reconnect: ReconnectSettings = field(default_factory=ReconnectSettings)


@dataclass(frozen=True, slots=True)
class DeviceGroup:
    profile: DeviceProfile
    count: int
    id_prefix: str


@dataclass(frozen=True, slots=True)
class ChaosSettings:
    disconnects_per_minute: float = 0.0
    reboots_per_minute: float = 0.0
    reboot_delay: float = 2.0
    flap_interval: float = 0.0
    flap_duration: float = 1.0
    broker_restart_interval: float = 0.0
    burst_interval: float = 0.0
    burst_size: int = 10
    burst_fraction: float = 0.1
    drop_deliveries: int = 0
    duplicate_deliveries: int = 0
    drop_wills: int = 0  # the fault proxy swallows this many QoS 0/1 wills on their way to the backend
    overwrite_retained: int = 0  # after the run, this many retained state topics get a foreign value
    uplink_flap_interval: float = 0.0  # [log] uplink_proxy: cut the gateway's uplink every this many s
    uplink_flap_duration: float = 1.0
    # The uplink goes silent every this many s: the log still gets the gateway's packets, its answers (the
    # acknowledgements) are dropped, as on a link that dies without FIN or RST.
    uplink_mute_interval: float = 0.0
    uplink_mute_duration: float = 1.0

    @property
    def needs_proxy(self) -> bool:
        return self.flap_interval > 0

    @property
    def active(self) -> bool:
        return any(
            (
                self.disconnects_per_minute,
                self.reboots_per_minute,
                self.flap_interval,
                self.broker_restart_interval,
                self.burst_interval,
                self.drop_deliveries,
                self.duplicate_deliveries,
                self.drop_wills,
                self.overwrite_retained,
                self.uplink_flap_interval,
                self.uplink_mute_interval,
            )
        )


@dataclass(frozen=True, slots=True)
class BackendSettings:
    protocol_level: int = 5
    qos: int = 2
    session_expiry: int = 3600
    client_id: str = "fleet-backend"


@dataclass(frozen=True, slots=True)
class AuditSettings:
    qos0_max_loss: float = 1.0  # fraction of QoS 0 messages that may be lost (at most once allows all)
    max_p99_latency: float = 0.0  # seconds; 0 means no limit


@dataclass(frozen=True, slots=True)
class Fleet:
    name: str
    source: str
    groups: tuple[DeviceGroup, ...]
    seed: int = 1
    ramp_up: float = 1.0
    drain: float = 3.0
    connect_concurrency: int = 200
    backend: BackendSettings = field(default_factory=BackendSettings)
    chaos: ChaosSettings = field(default_factory=ChaosSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    log: LogSettings | None = None  # [log]: the backend audits the cloud log instead of the broker

    @property
    def device_count(self) -> int:
        return sum(group.count for group in self.groups)


# --------------------------------------------------------------------------------------------------------
# A small schema language over edgebus.config's checks


@dataclass(frozen=True, slots=True)
class Table:
    """A TOML table with known keys; ``required`` keys must be present."""

    keys: Mapping[str, Check | Table | ArrayOfTables | NamedTables]
    required: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ArrayOfTables:
    item: Table
    min_items: int = 0


@dataclass(frozen=True, slots=True)
class NamedTables:
    """A table whose keys are free names (payload fields), each value a ``item`` table."""

    item: Table


Schema = Check | Table | ArrayOfTables | NamedTables


@dataclass(frozen=True, slots=True)
class TextList(Check):
    """A non-empty list of non-empty strings."""

    def expected(self) -> str:
        return "a non-empty list of strings"

    def convert(self, value: object) -> object:
        if not isinstance(value, list) or not value:
            raise self.fail(value)
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise Invalid(f"must be a non-empty string, got {show(item)}", at=(index,))
        return tuple(value)


@dataclass(frozen=True, slots=True)
class Number(Check):
    """Any finite number (ranges checked across keys)."""

    def expected(self) -> str:
        return "a number"

    def convert(self, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(value)
        return float(value)


QOS = IntRange(0, 2)
SECONDS = NumberRange(0.001, 86_400.0)
FRACTION = NumberRange(0.0, 1.0)
PROTOCOL = OneOf(tuple(PROTOCOLS))

FIELD_SCHEMA = Table(
    {
        "type": OneOf(FIELD_TYPES),
        "min": Number(),
        "max": Number(),
        "decimals": IntRange(0, 9),
        "values": TextList(),
        "step_min": Number(),
        "step_max": Number(),
    },
    required=frozenset({"type"}),
)
STREAM_SCHEMA = Table(
    {
        "name": Text(),
        "topic": Text(),
        "qos": QOS,
        "retain": Boolean(),
        "interval": SECONDS,
        "jitter": FRACTION,
        "encoding": OneOf(ENCODINGS),
        "on_connect": Boolean(),
        "fields": NamedTables(FIELD_SCHEMA),
    },
    required=frozenset({"name", "topic", "interval"}),
)
PROFILE_SCHEMA = Table(
    {
        "device": Table(
            {
                "name": Text(),
                "description": Text(allow_empty=True),
                "protocol": PROTOCOL,
                "client_id": Text(),
                "keep_alive": IntRange(0, 65535),
            },
            required=frozenset({"name"}),
        ),
        "session": Table({"clean_start": Boolean(), "session_expiry": IntRange(0, MAX_FOUR_BYTE_INTEGER)}),
        "publish": ArrayOfTables(STREAM_SCHEMA),
        "will": Table(
            {"topic": Text(), "payload": Text(allow_empty=True), "qos": QOS, "retain": Boolean()},
            required=frozenset({"topic"}),
        ),
        "commands": Table(
            {
                "topic": Text(),
                "qos": QOS,
                "interval": SECONDS,
                "jitter": FRACTION,
                "report_topic": Text(),
                "report_qos": QOS,
                "execution_time": NumberRange(0.0, 3600.0),
            },
            required=frozenset({"topic"}),
        ),
        "sleep": Table(
            {"awake": SECONDS, "asleep": SECONDS, "jitter": FRACTION},
            required=frozenset({"awake", "asleep"}),
        ),
        "reconnect": Table(
            {
                "initial_delay": NumberRange(0.0, 3600.0),
                "max_delay": NumberRange(0.0, 86_400.0),
                "multiplier": NumberRange(1.0, 10.0),
            }
        ),
    },
    required=frozenset({"device"}),
)
FLEET_SCHEMA = Table(
    {
        "fleet": Table(
            {
                "name": Text(),
                "seed": IntRange(0, 2**31 - 1),
                "ramp_up": NumberRange(0.0, 3600.0),
                "drain": NumberRange(0.0, 600.0),
                "connect_concurrency": IntRange(1, 10_000),
            }
        ),
        "group": ArrayOfTables(
            Table(
                {"profile": Text(), "count": IntRange(1, 100_000), "id_prefix": Text()},
                required=frozenset({"profile", "count"}),
            ),
            min_items=1,
        ),
        "backend": Table(
            {
                "protocol": PROTOCOL,
                "qos": QOS,
                "session_expiry": IntRange(0, MAX_FOUR_BYTE_INTEGER),
                "client_id": Text(),
            }
        ),
        "chaos": Table(
            {
                "disconnects_per_minute": NumberRange(0.0, 100_000.0),
                "reboots_per_minute": NumberRange(0.0, 100_000.0),
                "reboot_delay": NumberRange(0.0, 600.0),
                "flap_interval": NumberRange(0.0, 86_400.0),
                "flap_duration": NumberRange(0.0, 600.0),
                "broker_restart_interval": NumberRange(0.0, 86_400.0),
                "burst_interval": NumberRange(0.0, 86_400.0),
                "burst_size": IntRange(1, 10_000),
                "burst_fraction": FRACTION,
                "drop_deliveries": IntRange(0, 1_000_000),
                "duplicate_deliveries": IntRange(0, 1_000_000),
                "drop_wills": IntRange(0, 1_000_000),
                "overwrite_retained": IntRange(0, 1_000_000),
                "uplink_flap_interval": NumberRange(0.0, 86_400.0),
                "uplink_flap_duration": NumberRange(0.0, 600.0),
                "uplink_mute_interval": NumberRange(0.0, 86_400.0),
                "uplink_mute_duration": NumberRange(0.0, 600.0),
            }
        ),
        "log": Table(
            {
                "kind": OneOf(tuple(READERS)),
                "address": OneListenAddress(),
                "stream": Text(),
                "remote_prefix": Text(allow_empty=True),
                "uplink_proxy": OneListenAddress(),
                "uplink_target": OneListenAddress(),
                "isolation": OneOf(("read_committed", "read_uncommitted")),
            },
            required=frozenset({"kind", "address", "stream"}),
        ),
        "audit": Table({"qos0_max_loss": FRACTION, "max_p99_latency": NumberRange(0.0, 3600.0)}),
    },
    required=frozenset({"group"}),
)


class _Validator:
    """Walks a TOML document against a schema, collecting every problem with its line."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines = LineIndex(text)
        self.problems: list[ConfigProblem] = []

    def report(self, path: KeyPath, message: str, needle: str | None = None) -> None:
        self.problems.append(
            ConfigProblem(self.source, self.lines.find(path, needle), dotted(path), message)
        )

    def check(self, schema: Schema, raw: object, path: KeyPath) -> Any:
        """The converted value (dicts and lists of converted values), or None after reporting."""
        if isinstance(schema, Check):
            try:
                return schema.convert(raw)
            except Invalid as invalid:
                self.report(path + invalid.at, invalid.problem, invalid.needle)
                return None
        if isinstance(schema, ArrayOfTables):
            if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
                self.report(path, f"must be an array of tables ([[{dotted(path)}]]), got {show(raw)}")
                return None
            if len(raw) < schema.min_items:
                self.report(path, f"needs at least {schema.min_items} [[{dotted(path)}]] table")
                return None
            return [self.check(schema.item, item, (*path, index)) for index, item in enumerate(raw)]
        if not isinstance(raw, dict):
            self.report(path, f"must be a table, got {show(raw)}")
            return None
        if isinstance(schema, NamedTables):
            return {name: self.check(schema.item, value, (*path, name)) for name, value in raw.items()}
        out: dict[str, Any] = {}
        for key, value in raw.items():
            entry = schema.keys.get(key)
            if entry is None:
                close = difflib.get_close_matches(key, list(schema.keys), n=1, cutoff=0.7)
                hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(schema.keys)
                self.report((*path, key), f"unknown key; {hint}")
                continue
            out[key] = self.check(entry, value, (*path, key))
        for key in sorted(schema.required - raw.keys()):
            self.report(path, f"missing required key {key!r}" if path else f"missing required [{key}] table")
        return out

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ConfigError(sorted(self.problems, key=lambda problem: problem.line or 0))


def _read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    source = os.fspath(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            [ConfigProblem(source, None, None, f"cannot read: {error.strerror or error}")]
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError([ConfigProblem(source, None, None, f"not valid UTF-8: {error}")]) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line = getattr(error, "lineno", None) or 1
        message = getattr(error, "msg", str(error))
        raise ConfigError([ConfigProblem(source, line, None, f"invalid TOML: {message}")]) from None


def _check_template(v: _Validator, template: str, path: KeyPath) -> None:
    """``{device_id}`` style templates: only known names, and balanced braces."""
    import string

    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        v.report(path, f"bad template {show(template)}: {error}")
        return
    unknown = names - TEMPLATE_NAMES
    if unknown:
        v.report(
            path,
            f"unknown template name {{{sorted(unknown)[0]}}}; known: {{device_id}}, {{index}}, {{profile}}",
        )
    elif "+" in template or "#" in template:
        v.report(path, f"a topic name cannot contain wildcards, got {show(template)}")


def _field(v: _Validator, name: str, raw: dict[str, Any], path: KeyPath) -> FieldSpec | None:
    if name in AUDIT_KEYS:
        v.report(path, f"field name {name!r} is reserved for the audit ({', '.join(sorted(AUDIT_KEYS))})")
        return None
    kind = raw.get("type")
    if kind is None:
        return None
    allowed = {
        "float": {"min", "max", "decimals"},
        "int": {"min", "max"},
        "bool": set(),
        "choice": {"values"},
        "counter": {"min", "step_min", "step_max", "decimals"},
    }[kind]
    for key in raw:
        if key != "type" and key not in allowed:
            v.report(
                (*path, key), f"not used by a {kind} field (uses: {', '.join(sorted(allowed)) or 'nothing'})"
            )
    low = raw.get("min", 0.0)
    high = raw.get("max", 100.0 if kind != "counter" else 0.0)
    if kind in ("float", "int") and low is not None and high is not None and low > high:
        v.report((*path, "max"), f"must be at least min ({low:g}), got {high:g}")
    step_min, step_max = raw.get("step_min", 0.0), raw.get("step_max", 1.0)
    if kind == "counter" and step_min is not None and step_max is not None:
        if step_min < 0:
            v.report((*path, "step_min"), f"a counter never decreases: must be at least 0, got {step_min:g}")
        if step_max < step_min:
            v.report((*path, "step_max"), f"must be at least step_min ({step_min:g}), got {step_max:g}")
    if kind == "choice" and "values" not in raw:
        v.report(path, "a choice field needs values = [...]")
    if None in (low, high, step_min, step_max) or (kind == "choice" and raw.get("values") is None):
        return None
    return FieldSpec(
        name=name,
        type=kind,
        min=float(low),
        max=float(high),
        decimals=int(raw.get("decimals", 2) or 0),
        values=tuple(raw.get("values") or ()),
        step_min=float(step_min),
        step_max=float(step_max),
    )


def load_profile(path: str | os.PathLike[str]) -> DeviceProfile:
    """The device profile in the TOML file at ``path``; ConfigError lists every problem with its line."""
    path = Path(path)
    source = os.fspath(path)
    text, data = _read_toml(path)
    v = _Validator(text, source)
    doc = v.check(PROFILE_SCHEMA, data, ())
    v.raise_if_problems()
    device = doc["device"]
    session = doc.get("session", {})
    protocol_level = PROTOCOLS[device.get("protocol", "5")]
    clean_start = session.get("clean_start", True)
    session_expiry = session.get("session_expiry", 0)
    client_id = device.get("client_id", "{device_id}")
    _check_template(v, client_id, ("device", "client_id"))
    if protocol_level != 5 and session_expiry:
        v.report(
            ("session", "session_expiry"),
            'MQTT 3.1/3.1.1 have no session expiry: set protocol = "5" or remove it',
        )
    streams: list[StreamSpec] = []
    names: set[str] = set()
    for index, raw in enumerate(doc.get("publish", [])):
        if raw is None or raw.get("name") is None or raw.get("topic") is None or raw.get("interval") is None:
            continue
        base: KeyPath = ("publish", index)
        if raw["name"] in names:
            v.report((*base, "name"), f"stream name {raw['name']!r} is used twice")
        names.add(raw["name"])
        _check_template(v, raw["topic"], (*base, "topic"))
        fields = [
            _field(v, name, spec, (*base, "fields", name)) for name, spec in (raw.get("fields") or {}).items()
        ]
        streams.append(
            StreamSpec(
                name=raw["name"],
                topic=raw["topic"],
                qos=raw.get("qos", 0),
                retain=raw.get("retain", False),
                interval=raw["interval"],
                jitter=raw.get("jitter", 0.1),
                encoding=raw.get("encoding", "cbor"),
                on_connect=raw.get("on_connect", False),
                fields=tuple(f for f in fields if f is not None),
            )
        )
    will = None
    if "will" in doc:
        raw = doc["will"]
        _check_template(v, raw["topic"], ("will", "topic"))
        will = WillSpec(
            raw["topic"], raw.get("payload", "offline"), raw.get("qos", 1), raw.get("retain", True)
        )
    commands = None
    if "commands" in doc:
        raw = doc["commands"]
        _check_template(v, raw["topic"], ("commands", "topic"))
        report_topic = raw.get("report_topic", raw["topic"] + "/result")
        _check_template(v, report_topic, ("commands", "report_topic"))
        commands = CommandSettings(
            topic=raw["topic"],
            qos=raw.get("qos", 1),
            interval=raw.get("interval", 10.0),
            jitter=raw.get("jitter", 0.1),
            report_topic=report_topic,
            report_qos=raw.get("report_qos", 1),
            execution_time=raw.get("execution_time", 0.05),
        )
    sleep = None
    if "sleep" in doc:
        raw = doc["sleep"]
        sleep = SleepSettings(raw["awake"], raw["asleep"], raw.get("jitter", 0.1))
        persistent = not clean_start and (protocol_level != 5 or session_expiry > 0)
        if commands is not None and commands.qos > 0 and not persistent:
            v.report(
                ("session", "clean_start") if "session" in doc else ("sleep",),
                "a sleeping device that receives QoS 1/2 commands needs a persistent session "
                "(clean_start = false, and session_expiry > 0 on MQTT 5)",
            )
        elif persistent and protocol_level == 5 and session_expiry < sleep.asleep * (1 + sleep.jitter):
            v.report(
                ("session", "session_expiry"),
                f"must outlast a sleep of up to {sleep.asleep * (1 + sleep.jitter):g} s, "
                f"got {session_expiry}",
            )
    reconnect_raw = doc.get("reconnect", {})
    reconnect = ReconnectSettings(
        reconnect_raw.get("initial_delay", 0.5),
        reconnect_raw.get("max_delay", 30.0),
        reconnect_raw.get("multiplier", 2.0),
    )
    if reconnect.max_delay < reconnect.initial_delay:
        v.report(("reconnect", "max_delay"), f"must be at least initial_delay ({reconnect.initial_delay:g})")
    if not streams and commands is None:
        v.report((), "a profile needs at least one [[publish]] stream or a [commands] table")
    v.raise_if_problems()
    return DeviceProfile(
        name=device["name"],
        source=source,
        description=device.get("description", ""),
        protocol_level=protocol_level,
        client_id=client_id,
        keep_alive=device.get("keep_alive", 60),
        clean_start=clean_start,
        session_expiry=session_expiry,
        publish=tuple(streams),
        will=will,
        commands=commands,
        sleep=sleep,
        reconnect=reconnect,
    )


def load_fleet(path: str | os.PathLike[str]) -> Fleet:
    """The fleet in the TOML file at ``path``, its profiles loaded (paths relative to the fleet file)."""
    path = Path(path)
    source = os.fspath(path)
    text, data = _read_toml(path)
    v = _Validator(text, source)
    doc = v.check(FLEET_SCHEMA, data, ())
    v.raise_if_problems()
    groups: list[DeviceGroup] = []
    errors: list[ConfigProblem] = []
    prefixes: dict[str, int] = {}
    for index, raw in enumerate(doc["group"]):
        profile_path = path.parent / raw["profile"]
        if not profile_path.is_file():
            v.report(("group", index, "profile"), f"no such profile file: {profile_path}")
            continue
        try:
            profile = load_profile(profile_path)
        except ConfigError as error:
            errors.extend(error.problems)
            continue
        prefix = raw.get("id_prefix", profile.name)
        if prefix in prefixes:
            v.report(
                ("group", index, "id_prefix"),
                f"id_prefix {prefix!r} is already used by group {prefixes[prefix]}",
            )
        prefixes[prefix] = index
        groups.append(DeviceGroup(profile, raw["count"], prefix))
    fleet_raw = doc.get("fleet", {})
    backend_raw = doc.get("backend", {})
    chaos = ChaosSettings(**doc.get("chaos", {}))
    if chaos.flap_interval and chaos.flap_duration >= chaos.flap_interval:
        v.report(
            ("chaos", "flap_duration"), f"must be shorter than flap_interval ({chaos.flap_interval:g} s)"
        )
    if chaos.uplink_flap_interval and chaos.uplink_flap_duration >= chaos.uplink_flap_interval:
        v.report(
            ("chaos", "uplink_flap_duration"),
            f"must be shorter than uplink_flap_interval ({chaos.uplink_flap_interval:g} s)",
        )
    if chaos.uplink_mute_interval and chaos.uplink_mute_duration >= chaos.uplink_mute_interval:
        v.report(
            ("chaos", "uplink_mute_duration"),
            f"must be shorter than uplink_mute_interval ({chaos.uplink_mute_interval:g} s)",
        )
    log_raw = doc.get("log")
    log_settings = None
    if log_raw is not None:
        proxy = log_raw.get("uplink_proxy")
        target = log_raw.get("uplink_target")
        log_settings = LogSettings(
            kind=log_raw["kind"],
            host=log_raw["address"].host,
            port=log_raw["address"].port,
            stream=log_raw["stream"],
            remote_prefix=log_raw.get("remote_prefix", ""),
            uplink_proxy_port=proxy.port if proxy is not None else 0,
            uplink_target_port=target.port if target is not None else 0,
            isolation=log_raw.get("isolation", "read_committed"),
        )
    if chaos.uplink_flap_interval and (log_settings is None or not log_settings.uplink_proxy_port):
        v.report(("chaos", "uplink_flap_interval"), "needs [log] uplink_proxy (the proxy it cuts)")
    if chaos.uplink_mute_interval and (log_settings is None or not log_settings.uplink_proxy_port):
        v.report(("chaos", "uplink_mute_interval"), "needs [log] uplink_proxy (the proxy it silences)")
    v.problems.extend(errors)
    v.raise_if_problems()
    return Fleet(
        name=fleet_raw.get("name", path.stem),
        source=source,
        groups=tuple(groups),
        seed=fleet_raw.get("seed", 1),
        ramp_up=fleet_raw.get("ramp_up", 1.0),
        drain=fleet_raw.get("drain", 3.0),
        connect_concurrency=fleet_raw.get("connect_concurrency", 200),
        backend=BackendSettings(
            protocol_level=PROTOCOLS[backend_raw.get("protocol", "5")],
            qos=backend_raw.get("qos", 2),
            session_expiry=backend_raw.get("session_expiry", 3600),
            client_id=backend_raw.get("client_id", "fleet-backend"),
        ),
        chaos=chaos,
        audit=AuditSettings(**doc.get("audit", {})),
        log=log_settings,
    )

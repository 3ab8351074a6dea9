"""Tests of edgebus.config: defaults, the documented example file, and errors naming file, line and key."""

from __future__ import annotations

import dataclasses
import pickle
import re
import tomllib
from pathlib import Path

import pytest

from edgebus.config import (
    Boolean,
    Config,
    ConfigError,
    IntRange,
    ListenAddress,
    MqttConfig,
    NumberRange,
    OneOf,
    QueueConfig,
    ServerConfig,
    SettingInfo,
    SysConfig,
    iter_settings,
    load_config,
    parse_config,
    parse_listen_address,
    section,
    section_array,
    setting,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO_ROOT / "configs" / "edgebus.toml"


def write(tmp_path: Path, text: str, name: str = "edgebus.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


def parse_error(text: str, source: str = "test.toml") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source)
    return caught.value


# ---------------------------------------------------------------------------------------------------------
# Defaults and the documented example file


def test_defaults_are_the_documented_values() -> None:
    config = Config()
    assert config.server == ServerConfig(
        listen=(ListenAddress("0.0.0.0", 1883),), data_dir="./edgebus-data", log_level="info"
    )
    assert config.mqtt == MqttConfig(
        max_packet_size=1_048_576,
        receive_maximum=100,
        max_inflight=100,
        topic_alias_maximum=64,
        max_keep_alive=65535,
        max_session_expiry_interval=4_294_967_295,
        max_qos=2,
        retain_available=True,
        wildcard_subscriptions=True,
        subscription_identifiers=True,
        shared_subscriptions=True,
    )
    assert config.queue == QueueConfig(max_messages=1000, max_bytes=16_777_216, overflow="drop-oldest")
    assert config.sys == SysConfig(interval=10.0)
    assert config.source is None


def test_empty_text_gives_the_defaults() -> None:
    config = parse_config("", "empty.toml")
    assert config.source == "empty.toml"
    assert dataclasses.replace(config, source=None) == Config()


def test_empty_sections_give_the_defaults() -> None:
    config = parse_config("[server]\n[mqtt]\n[queue]\n[sys]\n")
    assert dataclasses.replace(config, source=None) == Config()


def test_example_file_loads_to_exactly_the_defaults() -> None:
    config = load_config(EXAMPLE_CONFIG)
    assert config.source == str(EXAMPLE_CONFIG)
    assert dataclasses.replace(config, source=None) == Config()


def _example_with_arrays_uncommented() -> str:
    """The example file with its commented-out ``# [[listener]]`` block (arrays of tables have no entries by
    default, so the example shows them as comments) turned into TOML."""
    lines = EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# [[") and line.endswith("]]"))
    block = [line[2:] if line.startswith("# ") else line.removeprefix("#") for line in lines[start:]]
    return "\n".join(lines[:start] + block) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    return str(value)


def test_example_file_sets_every_schema_key() -> None:
    data = tomllib.loads(_example_with_arrays_uncommented())
    keys = [info.key for info in iter_settings()]
    # server, mqtt, queue, storage, sys, security, limits, [[listener]], [[bridge]]
    assert len(keys) == 4 + 11 + 3 + 2 + 1 + 5 + 7 + 14 + 30
    for key in keys:
        table: object = data
        for part in key.split("."):
            if part.endswith("[]"):
                elements = table[part[:-2]] if isinstance(table, dict) else None
                assert isinstance(elements, list) and elements, f"{key}: no [[{part[:-2]}]] example"
                table = elements[0]
                continue
            assert isinstance(table, dict), key
            assert part in table, f"{key} is missing from {EXAMPLE_CONFIG}"
            table = table[part]


def test_example_arrays_of_tables_are_commented_out_with_their_defaults() -> None:
    # The [[listener]] example is a comment (no extra listener by default) and shows every default.
    data = tomllib.loads(_example_with_arrays_uncommented())
    (listener,) = data["listener"]
    assert parse_config("[[listener]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in listener.items())) == (
        parse_config("[[listener]]\n")
    )


def _comment_above(lines: list[str], key: str) -> str:
    """The comment block right above `key = ...` inside its [section] of the example file."""
    section_name, name = key.split(".")
    header = f"[[{section_name[:-2]}]]" if section_name.endswith("[]") else f"[{section_name}]"
    start = lines.index(header)
    index = next(i for i in range(start, len(lines)) if re.match(rf"{name}\s*=", lines[i]))
    block = []
    while lines[index - 1].startswith("#"):
        index -= 1
        block.append(lines[index])
    return "\n".join(reversed(block))


@pytest.mark.parametrize("info", list(iter_settings()), ids=lambda info: info.key)
def test_example_file_documents_range_and_default_of(info: SettingInfo) -> None:
    # The comment above each key must state the schema's actual range / choices and default, so the
    # reference cannot drift from the code.
    lines = _example_with_arrays_uncommented().splitlines()
    comment = _comment_above(lines, info.key)
    assert comment, f"{info.key} has no comment"
    check, default = info.check, info.default
    if isinstance(check, IntRange):
        assert f"{check.low} to {check.high}" in comment
        assert f"Default: {default}" in comment
    elif isinstance(check, NumberRange):
        assert f"{check.low:g} to {check.high:g}" in comment
        assert f"Default: {default:g}" in comment
    elif isinstance(check, OneOf):
        assert ", ".join(f'"{choice}"' for choice in check.choices) in comment
        assert f'Default: "{default}"' in comment
    elif isinstance(check, Boolean):
        assert f"Default: {str(default).lower()}" in comment
    else:
        assert "Default: " in comment


# ---------------------------------------------------------------------------------------------------------
# Valid files


FULL_VALID = """\
[server]
listen = ["127.0.0.1:0", "[::1]:8883", "gateway.local:1884"]
data_dir = "/var/lib/edgebus"
log_level = "debug"

[mqtt]
max_packet_size = 268435460
receive_maximum = 1
max_inflight = 65535
topic_alias_maximum = 0
max_keep_alive = 60
max_session_expiry_interval = 0
max_qos = 1
retain_available = false
wildcard_subscriptions = false
subscription_identifiers = false
shared_subscriptions = false

[queue]
max_messages = 10_000_000
max_bytes = 1024
overflow = "refuse"

[sys]
interval = 0.5
"""


def test_full_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_VALID)
    config = load_config(path)
    assert config == Config(
        server=ServerConfig(
            listen=(
                ListenAddress("127.0.0.1", 0),
                ListenAddress("::1", 8883),
                ListenAddress("gateway.local", 1884),
            ),
            data_dir="/var/lib/edgebus",
            log_level="debug",
        ),
        mqtt=MqttConfig(
            max_packet_size=268_435_460,
            receive_maximum=1,
            max_inflight=65535,
            topic_alias_maximum=0,
            max_keep_alive=60,
            max_session_expiry_interval=0,
            max_qos=1,
            retain_available=False,
            wildcard_subscriptions=False,
            subscription_identifiers=False,
            shared_subscriptions=False,
        ),
        queue=QueueConfig(max_messages=10_000_000, max_bytes=1024, overflow="refuse"),
        sys=SysConfig(interval=0.5),
        source=str(path),
    )


def test_keys_left_out_keep_their_defaults() -> None:
    config = parse_config('[mqtt]\nmax_qos = 1\n[queue]\noverflow = "drop-newest"\n')
    assert config.mqtt == dataclasses.replace(MqttConfig(), max_qos=1)
    assert config.queue == dataclasses.replace(QueueConfig(), overflow="drop-newest")
    assert config.server == ServerConfig()
    assert config.sys == SysConfig()


def test_integer_interval_becomes_float() -> None:
    config = parse_config("[sys]\ninterval = 30\n")
    assert config.sys.interval == 30.0
    assert isinstance(config.sys.interval, float)


def test_quoted_dotted_and_inline_forms_are_accepted() -> None:
    text = 'mqtt.max_qos = 1\n["server"]\n"log_level" = \'warning\'\n[queue]\nsys = 1\n'
    # `sys = 1` inside [queue] is an unknown key of [queue], not the [sys] section.
    error = parse_error(text)
    assert str(error).startswith("test.toml:5: queue.sys: unknown key")
    config = parse_config('mqtt.max_qos = 1\nsys = { interval = 1 }\n["server"]\n"log_level" = \'warning\'\n')
    assert config.mqtt.max_qos == 1
    assert config.sys.interval == 1.0
    assert config.server.log_level == "warning"


def test_config_works_with_dataclasses_replace_and_is_frozen() -> None:
    config = Config()
    overridden = dataclasses.replace(
        config, server=dataclasses.replace(config.server, listen=(parse_listen_address("127.0.0.1:0"),))
    )
    assert overridden.server.listen == (ListenAddress("127.0.0.1", 0),)
    assert config.server.listen == (ListenAddress("0.0.0.0", 1883),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mqtt.max_qos = 1  # type: ignore[misc]


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[mqtt]\nmax_qos = 0\n")
    assert load_config(path).mqtt.max_qos == 0


# ---------------------------------------------------------------------------------------------------------
# Errors: each names the file, the line and the key


def test_out_of_range_message_has_the_documented_format(tmp_path: Path) -> None:
    text = "\n".join(["# edgebus", "", "[server]", 'log_level = "info"', "", "[mqtt]"])
    text += "\n" + "\n" * 5 + "receive_maximum = 0\n"
    path = write(tmp_path, text, "x.toml")
    assert text.splitlines()[11] == "receive_maximum = 0"
    error = load_error(path)
    assert str(error) == f"{path}:12: mqtt.receive_maximum: must be an integer from 1 to 65535, got 0"
    assert (error.source, error.line, error.key) == (str(path), 12, "mqtt.receive_maximum")


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nlog_level = 'info'\n\n[servre]\nlisten = []\n")
    error = load_error(path)
    assert str(error) == f"{path}:4: servre: unknown section; did you mean server?"


def test_unknown_section_lists_the_known_ones() -> None:
    error = parse_error("[mqtt]\nmax_qos = 1\n[plugins]\nx = 1\n")
    assert str(error) == (
        "test.toml:3: plugins: unknown section; "
        "known: server, mqtt, queue, storage, sys, security, limits, listener, bridge"
    )


def test_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nmax_qos = 1\n# comment\nrecieve_maximum = 10\n")
    error = load_error(path)
    assert str(error) == f"{path}:4: mqtt.recieve_maximum: unknown key; did you mean receive_maximum?"


def test_unknown_subtable_points_at_its_header() -> None:
    error = parse_error("[server]\n\n[server.tls]\ncert = 'x'\n")
    assert str(error).startswith(
        "test.toml:3: server.tls: unknown key; known: listen, data_dir, gateway_id, log_level"
    )


def test_setting_outside_its_section_is_named() -> None:
    error = parse_error('\n\nlog_level = "debug"\n')
    assert str(error) == (
        "test.toml:3: log_level: unknown top-level key; did you mean server.log_level (in its [section])?"
    )


def test_section_that_is_not_a_table() -> None:
    error = parse_error("[server]\n\nmqtt = 5\n")
    assert (
        str(error) == "test.toml:3: server.mqtt: unknown key; known: listen, data_dir, gateway_id, log_level"
    )
    error = parse_error("\nmqtt = 5\n")
    assert str(error) == "test.toml:2: mqtt: must be a table ([mqtt]), got 5"


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, '[queue]\nmax_bytes = 2048\n\nmax_messages = "100"\n')
    error = load_error(path)
    assert str(error) == f'{path}:4: queue.max_messages: must be an integer from 1 to 10000000, got "100"'


def test_float_is_not_an_integer() -> None:
    error = parse_error("[mqtt]\nmax_keep_alive = 60.0\n")
    assert str(error) == "test.toml:2: mqtt.max_keep_alive: must be an integer from 1 to 65535, got 60.0"


def test_boolean_is_not_an_integer(tmp_path: Path) -> None:
    # Python's bool is an int; the loader must still reject `true` where an integer is expected.
    path = write(tmp_path, "[mqtt]\nretain_available = true\nmax_qos = true\n")
    error = load_error(path)
    assert str(error) == f"{path}:3: mqtt.max_qos: must be an integer from 0 to 2, got true"


def test_integer_is_not_a_boolean() -> None:
    error = parse_error("[mqtt]\nretain_available = 1\n")
    assert str(error) == "test.toml:2: mqtt.retain_available: must be true or false, got 1"


def test_boolean_is_not_a_number() -> None:
    error = parse_error("[sys]\ninterval = false\n")
    assert str(error) == "test.toml:2: sys.interval: must be a number from 0 to 86400, got false"


@pytest.mark.parametrize("bad", ["-1", "86400.5", "nan", "inf"])
def test_interval_out_of_range(bad: str) -> None:
    error = parse_error(f"[sys]\n\ninterval = {bad}\n")
    assert str(error) == f"test.toml:3: sys.interval: must be a number from 0 to 86400, got {bad}"


def _integer_bounds() -> list[tuple[str, int, int]]:
    return [
        (info.key, info.check.low, info.check.high)
        for info in iter_settings()
        if isinstance(info.check, IntRange)
    ]


INTEGER_BOUNDS = _integer_bounds()


#: Keys an array-of-tables element cannot do without, added after the key under test.
REQUIRED_KEYS = {"[[bridge]]": 'name = "b"\naddresses = ["cloud:1883"]\ntopics = [{ pattern = "#" }]\n'}


@pytest.mark.parametrize(("key", "low", "high"), INTEGER_BOUNDS, ids=[key for key, _, _ in INTEGER_BOUNDS])
def test_integer_range_bounds(key: str, low: int, high: int) -> None:
    section_name, name = key.split(".")
    array = section_name.endswith("[]")
    header = f"[[{section_name[:-2]}]]" if array else f"[{section_name}]"
    shown = key.replace("[]", "[0]")
    required = REQUIRED_KEYS.get(header, "")
    for accepted in (low, high):
        config = parse_config(f"{header}\n{name} = {accepted}\n{required}")
        table = getattr(config, section_name[:-2])[0] if array else getattr(config, section_name)
        assert getattr(table, name) == accepted
    for rejected in (low - 1, high + 1):
        error = parse_error(f"{header}\n\n{name} = {rejected}\n{required}")
        assert str(error) == f"test.toml:3: {shown}: must be an integer from {low} to {high}, got {rejected}"


def test_brief_ranges_are_the_schema_ranges() -> None:
    bounds = {key: (low, high) for key, low, high in INTEGER_BOUNDS}
    assert bounds == {
        "mqtt.max_packet_size": (16, 268_435_460),
        "mqtt.receive_maximum": (1, 65535),
        "mqtt.max_inflight": (1, 65535),
        "mqtt.topic_alias_maximum": (0, 65535),
        "mqtt.max_keep_alive": (1, 65535),
        "mqtt.max_session_expiry_interval": (0, 4_294_967_295),
        "mqtt.max_qos": (0, 2),
        "queue.max_messages": (1, 10_000_000),
        "queue.max_bytes": (1024, 2**40),
        "storage.max_bytes": (0, 2**50),
        "limits.max_connections": (0, 10_000_000),
        "limits.max_topic_length": (1, 65535),
        "limits.max_topic_levels": (0, 65535),
        "limits.max_subscriptions_per_client": (0, 10_000_000),
        "listener[].max_connections": (0, 10_000_000),
        "bridge[].protocol_level": (4, 5),
        "bridge[].max_qos": (1, 2),
        "bridge[].window": (0, 30000),
        "bridge[].max_messages": (1, 100_000_000),
        "bridge[].max_bytes": (1024, 2**50),
        "bridge[].session_expiry": (0, 4_294_967_295),
    }


def test_bad_enum_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[queue]\n\n\noverflow = "drop-all"\n')
    error = load_error(path)
    assert str(error) == (
        f'{path}:4: queue.overflow: must be one of "drop-oldest", "drop-newest", "refuse", got "drop-all"'
    )


def test_bad_log_level() -> None:
    error = parse_error('[server]\nlog_level = "INFO"\n')
    assert str(error) == (
        'test.toml:2: server.log_level: must be one of "debug", "info", "warning", "error", got "INFO"'
    )


def test_bad_listen_address_points_at_its_line(tmp_path: Path) -> None:
    text = '[server]\nlisten = [\n  "127.0.0.1:1883",\n  "[::1]:1883",\n  "localhost:70000",\n]\n'
    path = write(tmp_path, text)
    error = load_error(path)
    assert str(error) == (
        f'{path}:5: server.listen[2]: invalid listen address "localhost:70000": '
        'port must be an integer from 0 to 65535, got "70000"'
    )


def test_listen_entry_that_is_not_a_string() -> None:
    error = parse_error("[server]\nlisten = [1883]\n")
    assert str(error) == 'test.toml:2: server.listen[0]: must be a "HOST:PORT" string, got 1883'


def test_duplicate_listen_address() -> None:
    error = parse_error('[server]\nlisten = ["127.0.0.1:1883", "127.0.0.1:1883"]\n')
    assert str(error) == 'test.toml:2: server.listen[1]: "127.0.0.1:1883" is listed twice'


def test_empty_listen_list(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\ndata_dir = 'x'\nlisten = []\n")
    error = load_error(path)
    assert str(error) == f'{path}:3: server.listen: must be a non-empty list of "HOST:PORT" strings, got []'


def test_listen_must_be_a_list() -> None:
    error = parse_error('[server]\nlisten = "0.0.0.0:1883"\n')
    assert str(error) == (
        'test.toml:2: server.listen: must be a non-empty list of "HOST:PORT" strings, got "0.0.0.0:1883"'
    )


def test_empty_data_dir() -> None:
    error = parse_error('[server]\ndata_dir = ""\n')
    assert str(error) == 'test.toml:2: server.data_dir: must be a non-empty string, got ""'


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nmax_qos = 1\nreceive_maximum = = 3\n")
    error = load_error(path)
    assert str(error) == f"{path}:3: invalid TOML: Invalid value (column 19)"
    assert error.line == 3
    assert error.key is None


def test_toml_syntax_error_at_end_of_file() -> None:
    error = parse_error("[mqtt]\nmax_qos =")
    assert str(error) == "test.toml:2: invalid TOML: Invalid value (at end of file)"


def test_config_error_survives_pickling() -> None:
    error = parse_error("[mqtt]\nmax_qos = 3\n")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == "test.toml:2: mqtt.max_qos: must be an integer from 0 to 2, got 3"
    assert copy.problems == error.problems


def test_duplicate_key_is_a_syntax_error() -> None:
    error = parse_error("[mqtt]\nmax_qos = 1\n[sys]\n[mqtt]\nmax_qos = 2\n")
    assert str(error) == "test.toml:4: invalid TOML: Cannot declare ('mqtt',) twice (column 6)"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    error = load_error(path)
    assert str(error) == f"{path}: cannot read config file: No such file or directory"
    assert error.line is None


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    error = load_error(tmp_path)
    assert str(error).startswith(f"{tmp_path}: cannot read config file: ")


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[server]\ndata_dir = '/d\xe9p\xf4t'\n")
    error = load_error(path)
    assert str(error) == f"{path}:2: not valid UTF-8 (at byte offset 23)"


def test_every_problem_is_reported_in_file_order() -> None:
    text = '[sys]\ninterval = -1\n[mqtt]\nmax_qos = 3\nbogus = 1\n[server]\nlog_level = "loud"\n'
    error = parse_error(text)
    assert [(problem.line, problem.key) for problem in error.problems] == [
        (2, "sys.interval"),
        (4, "mqtt.max_qos"),
        (5, "mqtt.bogus"),
        (7, "server.log_level"),
    ]
    assert str(error).splitlines()[1] == "test.toml:4: mqtt.max_qos: must be an integer from 0 to 2, got 3"


# ---------------------------------------------------------------------------------------------------------
# Line numbers of the less common TOML spellings


def test_line_of_quoted_key_and_quoted_header() -> None:
    error = parse_error('[ "mqtt" ]  # the MQTT section\n\n"max_qos" = 9\n')
    assert str(error) == "test.toml:3: mqtt.max_qos: must be an integer from 0 to 2, got 9"


def test_line_of_dotted_key_at_top_level() -> None:
    error = parse_error("# top\nmqtt.max_qos = 1\nmqtt . max_inflight = 0\n")
    assert str(error) == "test.toml:3: mqtt.max_inflight: must be an integer from 1 to 65535, got 0"


def test_line_of_key_inside_inline_table_is_the_table_line() -> None:
    error = parse_error("\n\nqueue = { max_messages = 0 }\n")
    assert str(error) == "test.toml:3: queue.max_messages: must be an integer from 1 to 10000000, got 0"


def test_lookalike_lines_inside_multiline_strings_are_ignored() -> None:
    # Lines inside a multi-line string are content, not keys: the error must point at the real key.
    text = '[server]\ndata_dir = """\n[mqtt]\nmax_qos = 1\n"""\n[mqtt]\n\nmax_qos = 3\n'
    error = parse_error(text)
    assert str(error) == "test.toml:8: mqtt.max_qos: must be an integer from 0 to 2, got 3"
    text = "[server]\ndata_dir = '''x\nmax_qos = 1'''\nlog_level = 5\n"
    assert parse_error(text).line == 4


def test_single_line_string_with_triple_quote_does_not_open_a_multiline_string() -> None:
    text = '[server]\ndata_dir = \'"""\'\nlog_level = 5\n'
    assert parse_error(text).line == 3


# ---------------------------------------------------------------------------------------------------------
# The loader is driven by the schema: an array of tables section needs only a dataclass and a field.


@dataclasses.dataclass(frozen=True, slots=True)
class _TlsConfig:
    verify: bool = setting(True, Boolean(), "test-only")


@dataclasses.dataclass(frozen=True, slots=True)
class _BridgeConfig:
    host: str = setting("upstream", OneOf(("upstream", "cloud")), "test-only")
    port: int = setting(1883, IntRange(1, 65535), "test-only")
    tls: _TlsConfig = section(_TlsConfig, "test-only")  # noqa: RUF009


@dataclasses.dataclass(frozen=True, slots=True)
class _RootConfig:
    mqtt: MqttConfig = section(MqttConfig, "test-only")  # noqa: RUF009
    bridges: tuple[_BridgeConfig, ...] = section_array(_BridgeConfig, "test-only")


def _load_test_root(text: str) -> object:
    from edgebus.config.load import _Loader

    loader = _Loader(text, "t.toml")
    built = loader.build(_RootConfig, tomllib.loads(text), ())
    if loader.problems:
        raise ConfigError(loader.problems)
    return built


def test_array_of_tables_section_loads_without_loader_changes() -> None:
    text = '[[bridges]]\nhost = "cloud"\n[[bridges]]\nport = 8883\n[mqtt]\nmax_qos = 1\n'
    assert _load_test_root(text) == _RootConfig(
        mqtt=dataclasses.replace(MqttConfig(), max_qos=1),
        bridges=(_BridgeConfig(host="cloud"), _BridgeConfig(port=8883)),
    )
    assert _RootConfig().bridges == ()


def test_array_of_tables_errors_point_at_the_right_element() -> None:
    text = "[[bridges]]\nport = 1\n\n[[bridges]]\nhost = 'cloud'\nport = 0\n"
    with pytest.raises(ConfigError) as caught:
        _load_test_root(text)
    assert str(caught.value) == "t.toml:6: bridges[1].port: must be an integer from 1 to 65535, got 0"


def test_table_inside_an_array_element_points_at_that_element() -> None:
    # `[bridges.tls]` belongs to the last `[[bridges]]` above it (TOML 1.0, "Array of Tables").
    text = "[[bridges]]\n[bridges.tls]\nverify = true\n[[bridges]]\n[bridges.tls]\n\nverify = 1\n"
    with pytest.raises(ConfigError) as caught:
        _load_test_root(text)
    assert str(caught.value) == "t.toml:7: bridges[1].tls.verify: must be true or false, got 1"
    assert _load_test_root("[[bridges]]\n[bridges.tls]\nverify = false\n") == _RootConfig(
        bridges=(_BridgeConfig(tls=_TlsConfig(verify=False)),)
    )


# ---------------------------------------------------------------------------------------------------------
# parse_listen_address


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:1883", "0.0.0.0", 1883),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::1]:1883", "::1", 1883),
        ("[::]:65535", "::", 65535),
        ("[fe80::1%eth0]:8883", "fe80::1%eth0", 8883),
        ("localhost:1883", "localhost", 1883),
        ("broker-1.example.com:8883", "broker-1.example.com", 8883),
    ],
)
def test_parse_listen_address_valid(text: str, host: str, port: int) -> None:
    address = parse_listen_address(text)
    assert address == ListenAddress(host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected HOST:PORT"),
        ("1883", "expected HOST:PORT"),
        ("localhost", "expected HOST:PORT"),
        (":1883", "missing host"),
        ("::1:1883", "put an IPv6 address in brackets"),
        ("[::1]", "expected ':PORT' after ']'"),
        ("[::1]1883", "expected ':PORT' after ']'"),
        ("[::1:1883", "missing ']'"),
        ("[1.2.3.4]:1883", "is not an IPv6 address"),
        ("[localhost]:1883", "is not an IPv6 address"),
        ("999.1.1.1:1883", "is not an IPv4 address or host name"),
        ("bad_host:1883", "is not an IPv4 address or host name"),
        ("-bad.example:1883", "is not an IPv4 address or host name"),
        ("a b:1883", "is not an IPv4 address or host name"),
        ("localhost:", "port must be an integer from 0 to 65535"),
        ("localhost:65536", "port must be an integer from 0 to 65535"),
        ("localhost:-1", "port must be an integer from 0 to 65535"),
        ("localhost:+1", "port must be an integer from 0 to 65535"),
        ("localhost: 1883", "port must be an integer from 0 to 65535"),
        ("localhost:1883 ", "port must be an integer from 0 to 65535"),
        ("localhost:http", "port must be an integer from 0 to 65535"),
        ("localhost:\u0661\u0668\u0668\u0663", "port must be"),  # Arabic-Indic digits: str.isdigit() is True
        ("[::1]:99999", "port must be an integer from 0 to 65535"),
    ],
)
def test_parse_listen_address_invalid(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid listen address") as caught:
        parse_listen_address(text)
    assert reason in str(caught.value)


def test_listen_address_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="port"):
        ListenAddress("localhost", 65536)
    with pytest.raises(ValueError, match="host"):
        ListenAddress("", 1883)
    assert str(ListenAddress("::", 0)) == "[::]:0"


# ---------------------------------------------------------------------------------------------------------
# [[bridge]]

BRIDGE = '[[bridge]]\nname = "cloud"\naddresses = ["cloud.example.com:8883"]\n'


def test_bridge_with_topic_rules() -> None:
    config = parse_config(
        BRIDGE + 'topics = [{ pattern = "sensors/#", remote_prefix = "gw/", transform = "cbor-json" },\n'
        '  { pattern = "cmd/+", direction = "in", qos = 1, local_prefix = "dev/" }]\n'
    )
    (bridge,) = config.bridge
    out, inbound = bridge.topics
    assert (out.pattern, out.direction, out.qos, out.remote_prefix, out.transform) == (
        "sensors/#",
        "out",
        2,
        "gw/",
        "cbor-json",
    )
    assert (inbound.direction, inbound.qos, inbound.local_prefix) == ("in", 1, "dev/")


def test_bridge_window_defaults_per_kind() -> None:
    # window = 0 (the default) is the kind's batch size: Kafka's batches are transactions, so larger.
    rule = 'topics = [{ pattern = "sensors/#", remote_prefix = "t" }]\n'
    mqtt = parse_config(BRIDGE + rule).bridge[0]
    kafka = parse_config(BRIDGE + 'kind = "kafka"\n' + rule).bridge[0]
    chosen = parse_config(BRIDGE + 'kind = "kafka"\nwindow = 200\n' + rule).bridge[0]
    assert (mqtt.window, mqtt.batch_window) == (0, 1000)
    assert (kafka.window, kafka.batch_window) == (0, 5000)
    assert chosen.batch_window == 200


def test_bridge_needs_name_addresses_and_topics() -> None:
    error = parse_error("[mqtt]\nmax_qos = 1\n[[bridge]]\nkind = 'mqtt'\n")
    assert [(p.line, p.key) for p in error.problems] == [
        (3, "bridge[0].name"),
        (3, "bridge[0].addresses"),
        (3, "bridge[0].topics"),
    ]


def test_bridge_topic_rule_errors_name_the_rule() -> None:
    error = parse_error(BRIDGE + 'topics = [{ pattern = "a/#" }, { pattern = "b", qos = 3 }]\n')
    assert str(error) == "test.toml:4: bridge[0].topics[1].qos: must be an integer from 0 to 2, got 3"
    error = parse_error(BRIDGE + 'topics = [{ pattern = "a/#", direction = "up" }]\n')
    assert 'bridge[0].topics[0].direction: must be one of "out", "in", "both", got "up"' in str(error)
    error = parse_error(BRIDGE + 'topics = [{ pattern = "a/#", prefix = "x" }]\n')
    assert "bridge[0].topics[0].prefix: unknown key" in str(error)
    error = parse_error(BRIDGE + 'topics = [{ pattern = "a/#/b" }]\n')
    assert "pattern 'a/#/b' is not a valid topic filter" in str(error)
    error = parse_error(BRIDGE + 'topics = [{ pattern = "a/#", remote_prefix = "x/+/" }]\n')
    assert "must not contain wildcards" in str(error)


def test_bridge_max_qos_is_1_or_2() -> None:
    # A QoS-1-only cloud (AWS IoT Core, RabbitMQ MQTT) is told so with max_qos = 1; 0 would forward nothing
    # at least once, so it is no choice.
    assert parse_config(BRIDGE + 'topics = [{ pattern = "#" }]\n').bridge[0].max_qos == 2
    assert parse_config(BRIDGE + 'max_qos = 1\ntopics = [{ pattern = "#" }]\n').bridge[0].max_qos == 1
    error = parse_error(BRIDGE + 'max_qos = 0\ntopics = [{ pattern = "#" }]\n')
    assert str(error) == "test.toml:4: bridge[0].max_qos: must be an integer from 1 to 2, got 0"


def test_jetstream_bridge_needs_a_stream_and_names_are_unique() -> None:
    error = parse_error(BRIDGE + 'kind = "nats-jetstream"\ntopics = [{ pattern = "#" }]\n')
    assert "bridge[0].stream: a nats-jetstream bridge needs the stream name" in str(error)
    twice = BRIDGE + 'topics = [{ pattern = "#" }]\n'
    error = parse_error(twice + twice)
    assert "bridge name 'cloud' is used twice" in str(error)


def test_redis_stream_bridge_takes_out_rules_and_an_optional_stream() -> None:
    config = parse_config(BRIDGE + 'kind = "redis-stream"\ntopics = [{ pattern = "sensors/#", qos = 1 }]\n')
    assert config.bridge[0].kind == "redis-stream" and config.bridge[0].stream == ""
    named = parse_config(BRIDGE + 'kind = "redis-stream"\nstream = "plant:7"\ntopics = [{ pattern = "#" }]\n')
    assert named.bridge[0].stream == "plant:7"
    inbound = 'topics = [{ pattern = "cmd/#", direction = "in" }]\n'
    error = parse_error(BRIDGE + 'kind = "redis-stream"\n' + inbound)
    assert "bridge[0].topics: a redis-stream bridge forwards out rules only (no in rules yet)" in str(error)
    error = parse_error(BRIDGE + 'kind = "redis"\ntopics = [{ pattern = "#" }]\n')
    assert str(error).startswith("test.toml:4: bridge[0].kind: must be one of")

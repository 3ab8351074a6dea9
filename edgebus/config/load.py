"""Load a TOML text or file into ``Config``: walk the schema, collect every problem, raise them together."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from edgebus.config.broker import Config
from edgebus.config.lines import LineIndex, dotted
from edgebus.config.schema import (
    Check,
    ConfigError,
    ConfigProblem,
    Invalid,
    KeyPath,
    SchemaEntry,
    Section,
    SectionArray,
    Setting,
    schema_fields,
    show,
)

# tomllib ends a syntax error with " (at line L, column C)"; the problem carries the line itself.
_SYNTAX_POSITION_RE: Final = re.compile(r" \(at (?:line (\d+), column (\d+)|end of document)\)$")


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One key of the schema, for documentation and tests."""

    key: str  # dotted, e.g. "mqtt.receive_maximum"; array-of-tables members as "bridges[].host"
    default: object
    check: Check
    doc: str


def iter_settings(cls: type[Any] = Config, prefix: str = "") -> Iterator[SettingInfo]:
    """Every key of the schema rooted at ``cls``, in declaration order."""
    for f, entry in schema_fields(cls):
        if isinstance(entry, Setting):
            yield SettingInfo(prefix + f.name, f.default, entry.check, entry.doc)
        elif isinstance(entry, Section):
            yield from iter_settings(entry.cls, f"{prefix}{f.name}.")
        elif isinstance(entry, SectionArray):
            yield from iter_settings(entry.cls, f"{prefix}{f.name}[].")


# ----------------------------------------------------------------------------------------------------------
# The loader: walks the schema metadata, collecting every problem before raising.


def _schema(cls: type[Any]) -> dict[str, SchemaEntry]:
    """The TOML keys of a configuration dataclass, by name."""
    return {f.name: entry for f, entry in schema_fields(cls)}


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

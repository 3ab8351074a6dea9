"""The checker framework of TOML configurations: checks, schema entries on dataclass fields, and errors."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

_T = TypeVar("_T")

# A location inside the TOML document: table names / keys, and indexes into arrays (of tables).
KeyPath = tuple[str | int, ...]

# Where each field's schema entry lives in ``dataclasses.Field.metadata``.
_SCHEMA_KEY: Final = "edgebus.config.schema"

# Largest value a Four Byte Integer can carry (§1.5.3): Session Expiry Interval, Maximum Packet Size.
MAX_FOUR_BYTE_INTEGER: Final = 4_294_967_295


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
class TextList(Check):
    """An array of non-empty strings, converted to a tuple."""

    def expected(self) -> str:
        return "an array of non-empty strings"

    def convert(self, value: object) -> object:
        if not isinstance(value, list):
            raise self.fail(value)
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise Invalid(f"must be a non-empty string, got {show(item)}", (index,))
        return tuple(value)


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


def schema_fields(cls: type[Any]) -> Iterator[tuple[dataclasses.Field[Any], SchemaEntry]]:
    """The fields of a configuration dataclass that are TOML keys, in declaration order, each with its schema
    entry; fields without one (``Config.source``) are none."""
    for f in dataclasses.fields(cls):
        if _SCHEMA_KEY in f.metadata:
            yield f, f.metadata[_SCHEMA_KEY]

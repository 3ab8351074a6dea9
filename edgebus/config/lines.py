"""Where each key is written in a TOML text: the line numbers tomllib does not give, for error messages.

A light scan of the text records where each table and key is first written. The text is valid TOML by then
(tomllib parsed it), which keeps the scan simple.
"""

from __future__ import annotations

import re
import tomllib
from typing import Final

from edgebus.config.schema import KeyPath, show

_BARE_KEY = r"[A-Za-z0-9_-]+"
_BASIC_KEY = r'"(?:[^"\\\n]|\\.)*"'
_LITERAL_KEY = r"'[^'\n]*'"
_SIMPLE_KEY = rf"(?:{_BARE_KEY}|{_BASIC_KEY}|{_LITERAL_KEY})"
_DOTTED_KEY = rf"{_SIMPLE_KEY}(?:[ \t]*\.[ \t]*{_SIMPLE_KEY})*"
_SIMPLE_KEY_RE: Final = re.compile(_SIMPLE_KEY)
_ARRAY_HEADER_RE: Final = re.compile(rf"[ \t]*\[\[[ \t]*({_DOTTED_KEY})[ \t]*\]\]")
_TABLE_HEADER_RE: Final = re.compile(rf"[ \t]*\[[ \t]*({_DOTTED_KEY})[ \t]*\]")
_KEY_VALUE_RE: Final = re.compile(rf"[ \t]*({_DOTTED_KEY})[ \t]*=")


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

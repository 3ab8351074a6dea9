"""The codec is sans-IO: no module of edgebus/protocol imports networking, storage, clocks or threads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import edgebus.protocol

FORBIDDEN = {"trio", "socket", "sqlite3", "time", "logging", "asyncio", "threading"}
PROTOCOL_DIR = Path(edgebus.protocol.__file__).parent
MODULES = sorted(PROTOCOL_DIR.glob("*.py"))


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module imported anywhere in ``source`` (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_the_walk_sees_every_kind_of_import() -> None:
    # The checker itself must catch what it is meant to catch.
    source = "import time\nfrom trio import sleep\ndef f():\n    import socket.x\n__import__('sqlite3')\n"
    assert imported_modules(source) == {"time", "trio", "socket", "sqlite3"}


def test_the_protocol_package_has_the_expected_modules() -> None:
    names = {path.stem for path in MODULES}
    assert {"primitives", "properties", "decoder", "encoder", "enums", "errors", "packets"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_nothing_with_io(path: Path) -> None:
    used = imported_modules(path.read_text(encoding="utf-8"))
    assert not used & FORBIDDEN, f"{path.name} imports {sorted(used & FORBIDDEN)}"

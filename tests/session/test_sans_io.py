"""The sans-IO core stays sans-IO: no trio, sockets, store or clock imports (ARCHITECTURE.md §1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EDGEBUS = Path(__file__).resolve().parents[2] / "edgebus"
PURE_MODULES = ["session.py", "flows.py", "router.py", "topics.py", "message.py", "outbox.py", "stats.py"]
FORBIDDEN = {"trio", "socket", "sqlite3", "time", "logging", "asyncio", "threading", "selectors"}


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_module_imports_no_io(name: str) -> None:
    tree = ast.parse((EDGEBUS / name).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{name} imports {sorted(imported & FORBIDDEN)}"

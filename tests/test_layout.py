"""The house rules of edgebus/ (README, Design): the sans-IO core imports no I/O, no module imports
itself back through others, and no file is too long to read in one sitting. Each rule is checked by
reading the source (ast), so it holds for every code path, not just the ones a test happens to run."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

EDGEBUS = Path(__file__).resolve().parents[1] / "edgebus"

#: What the sans-IO folders may not import (ARCHITECTURE.md convention 1): the network, the event
#: loop, threads, the store and the clock. Time comes in as an argument.
FORBIDDEN_IN_CORE = {
    *("trio", "asyncio", "threading", "selectors", "socket", "ssl"),
    *("sqlite3", "os", "time", "logging"),
}
#: The sans-IO folders, and the edgebus packages each may import from.
SANS_IO = {
    "protocol": ("edgebus.protocol",),
    "core": ("edgebus.core", "edgebus.protocol"),
}
#: Longest module, in lines: one a newcomer can read in one sitting.
MAX_MODULE_LINES = 500
#: Modules still over the limit, each with the line count it may not grow past. The issue that
#: splits them removes them from here; a module that shrinks under the limit must leave this list.
OVERSIZED: dict[str, int] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(EDGEBUS.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(EDGEBUS.rglob("*.py"))}


def imports_of(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, wherever the import stands (top level, a function, a
    TYPE_CHECKING block): a lazy import still ties the two modules together."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative imports hide what is imported"
            assert node.module is not None
            yield node.module
            # `from edgebus.pkg import submodule` imports the submodule too.
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def edgebus_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        graph[name] = {target for target in imports_of(path) if target in known and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target in on_stack:
                return [*stack[stack.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


@pytest.mark.parametrize("folder", sorted(SANS_IO))
def test_sans_io_folders_import_no_io(folder: str) -> None:
    files = sorted((EDGEBUS / folder).rglob("*.py"))
    assert len(files) > 3  # the walk sees the folder at all
    seen_edgebus = False
    for path in files:
        imported = set(imports_of(path))
        seen_edgebus = seen_edgebus or any(name.startswith("edgebus.") for name in imported)
        roots = {name.split(".")[0] for name in imported}
        where = path.relative_to(EDGEBUS)
        assert not roots & FORBIDDEN_IN_CORE, f"{where} imports {sorted(roots & FORBIDDEN_IN_CORE)}"
        outside = {
            name
            for name in imported
            if name.startswith("edgebus") and not name.startswith(SANS_IO[folder]) and name != "edgebus"
        }
        assert not outside, f"{where} imports {sorted(outside)} from outside {folder}/"
    assert seen_edgebus  # the walk sees imports at all


def test_edgebus_has_no_import_cycle() -> None:
    graph = edgebus_graph()
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the graph is really read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The rule above can fail: a lazy import back from a leaf is a cycle too.
    graph = edgebus_graph()
    graph["edgebus.protocol.errors"].add("edgebus.server.broker")
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]


def test_no_module_is_too_long_to_read() -> None:
    lengths = {
        str(path.relative_to(EDGEBUS)): len(path.read_text(encoding="utf-8").splitlines())
        for path in EDGEBUS.rglob("*.py")
    }
    too_long = {
        name: count for name, count in lengths.items() if count > OVERSIZED.get(name, MAX_MODULE_LINES)
    }
    assert not too_long, f"over {MAX_MODULE_LINES} lines (or past their recorded size): {too_long}"
    shrunk = {name for name in OVERSIZED if lengths.get(name, 0) <= MAX_MODULE_LINES}
    assert not shrunk, f"under the limit now (or gone): remove from OVERSIZED: {sorted(shrunk)}"

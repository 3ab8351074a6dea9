"""The ``edgebus-fleet`` entry point: names the extra to install when the simulator's libraries are missing.

`pip install .` installs the command but not the `fleet` extra; without this the command would end in an
ImportError traceback."""

from __future__ import annotations

import importlib
import sys

#: Libraries the simulator imports at start beyond edgebus's own dependencies: the `fleet` extra.
REQUIRED = ("rich", "cbor2")


def missing_libraries() -> list[str]:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(argv: list[str] | None = None) -> int:
    missing = missing_libraries()
    if missing:
        print(
            f"edgebus-fleet needs {' and '.join(missing)}, from the fleet extra: "
            "pip install 'edgebus[fleet]' (in the virtualenv edgebus is installed in)",
            file=sys.stderr,
        )
        return 2
    from edgebus_fleet.cli import main as run

    return run(argv)

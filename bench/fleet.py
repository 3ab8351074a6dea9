"""Runs one fleet against edgebus and Mosquitto in one run; prints devices sustained, msgs/s and p99 latency.

    python -m bench.fleet [--fleet firmware-sim/fleets/bench.toml] [--devices N] [--duration S]

Each broker is started as a plain process on a free loopback port (edgebus with ``python -m edgebus
serve``, Mosquitto from /usr/sbin/mosquitto with a generated config), the fleet runs against it in
this process, and the broker is stopped before the next one starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import tempfile
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "firmware-sim"))

from edgebus_fleet.engine import Engine, RunResult  # noqa: E402
from edgebus_fleet.profiles import load_fleet  # noqa: E402

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def broker_commands(workdir: Path) -> dict[str, str]:
    commands = {
        "edgebus": (
            f"{sys.executable} -m edgebus serve --listen 127.0.0.1:{{port}} --data-dir {workdir}/edgebus"
        ),
    }
    if os.access(MOSQUITTO, os.X_OK):
        config = workdir / "mosquitto.conf"
        # The listener line is written per run (the port changes); max_connections unlimited.
        commands["mosquitto"] = f"{MOSQUITTO} -c {config}"
    return commands


async def run_one(
    name: str, command: str, fleet_path: Path, devices: int | None, duration: float, workdir: Path
) -> RunResult:
    port = free_port()
    if name == "mosquitto":
        (workdir / "mosquitto.conf").write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 10000\n"
            "max_inflight_messages 100\npersistence false\n"
        )
    fleet = load_fleet(fleet_path)
    if devices is not None:
        total = fleet.device_count
        groups = tuple(
            dataclasses.replace(g, count=max(1, round(g.count * devices / total))) for g in fleet.groups
        )
        fleet = dataclasses.replace(fleet, groups=groups)
    engine = Engine(fleet, "127.0.0.1", port, duration, broker_command=command)
    return await engine.run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, default=ROOT / "firmware-sim" / "fleets" / "bench.toml")
    parser.add_argument("--devices", type=int, help="scale the fleet's groups to about this many devices")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--brokers", default="edgebus,mosquitto")
    args = parser.parse_args()
    results: dict[str, RunResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "edgebus").mkdir()
        commands = broker_commands(workdir)
        for name in args.brokers.split(","):
            if name not in commands:
                print(f"{name}: not available, skipped")
                continue
            print(f"== {name}: {args.fleet.name}, {args.duration:g} s", flush=True)
            results[name] = trio.run(
                run_one, name, commands[name], args.fleet, args.devices, args.duration, workdir
            )
    print()
    header = ("broker", "devices", "sustained", "msgs/s", "p99 ms", "lost", "dup")
    print(
        f"{header[0]:<10} "
        + " ".join(f"{h:>{w}}" for h, w in zip(header[1:], (8, 10, 9, 9, 6, 6), strict=True))
        + "  audit"
    )
    for name, result in results.items():
        delivered = result.ledger.delivered
        # Device-to-backend latency; commands wait in the broker while their valve sleeps, by design.
        lats = sorted(
            v for (_, stream, _), values in result.latencies.items() if stream != "command" for v in values
        )
        p99 = lats[max(0, int(len(lats) * 0.99) - 1)] * 1000 if lats else float("nan")
        lost = sum(s.lost for s in result.summaries)
        dup = sum(s.duplicated for s in result.summaries)
        print(
            f"{name:<10} {result.devices:>8} {result.peak_connected:>10} {delivered / result.duration:>9.0f} "
            f"{p99:>9.1f} {lost:>6} {dup:>6}  {'PASS' if result.passed else 'FAIL'}"
        )
    return 0 if all(r.passed for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

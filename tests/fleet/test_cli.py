"""``edgebus-fleet run`` as a user runs it: a subprocess against a real broker, its exit status and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

from tests.conftest import BrokerHandle
from tests.fleet.conftest import FIRMWARE_SIM, ROOT

FLEETS = FIRMWARE_SIM / "fleets"
CLI_TIMEOUT_S = 45.0


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(FIRMWARE_SIM)]))
    with trio.fail_after(CLI_TIMEOUT_S):
        return await trio.run_process(
            [sys.executable, "-m", "edgebus_fleet", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )


async def test_smoke_fleet_passes_with_report_and_plots(any_broker: BrokerHandle, tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = await run_cli(
        "run",
        "--broker",
        f"{any_broker.host}:{any_broker.port}",
        "--fleet",
        str(FLEETS / "smoke.toml"),
        "--duration",
        "3",
        "--report",
        str(report),
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "PASS" in out and "smart-meter" in out
    data = json.loads((report / "report.json").read_text())
    assert data["passed"] and data["devices"] == 30
    assert data["totals"]["sent"] > 0 and data["totals"]["delivered"] == data["totals"]["sent"]
    groups = {(g["profile"], g["stream"], g["qos"]) for g in data["groups"]}
    assert ("valve", "command", 2) in groups and ("door-sensor", "event", 2) in groups
    for name in ("latency_cdf.png", "throughput.png", "connected.png", "losses.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_injected_loss_and_duplication_fail_the_run(broker: BrokerHandle, tmp_path: Path) -> None:
    # The audit must be able to fail: the fault proxy drops QoS 1 deliveries (acknowledging them itself)
    # and duplicates QoS 2 ones; at least once / exactly once are broken, so the exit status is 1.
    result = await run_cli(
        "run",
        "--broker",
        f"{broker.host}:{broker.port}",
        "--fleet",
        str(FLEETS / "faulty.toml"),
        "--duration",
        "3",
        "--report",
        str(tmp_path),
        "--no-plots",
    )
    out = result.stdout.decode()
    assert result.returncode == 1, out
    data = json.loads((tmp_path / "report.json").read_text())
    assert not data["passed"]
    assert any("acknowledged but never delivered" in v for v in data["violations"])
    assert any("duplicate deliveries at QoS 2" in v for v in data["violations"])


async def test_unreachable_broker_is_a_clear_error() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await run_cli(
        "run", "--broker", f"127.0.0.1:{port}", "--fleet", str(FLEETS / "smoke.toml"), "--duration", "1"
    )
    err = result.stderr.decode()
    assert result.returncode == 3
    assert f"cannot reach the broker at 127.0.0.1:{port}" in err
    assert "Traceback" not in err


async def test_bad_fleet_file_is_refused(tmp_path: Path) -> None:
    fleet = tmp_path / "bad.toml"
    fleet.write_text('[[group]]\nprofile = "../nowhere.toml"\ncount = 1\ncolour = "red"\n')
    result = await run_cli("run", "--broker", "127.0.0.1:1883", "--fleet", str(fleet), "--duration", "1")
    err = result.stderr.decode()
    assert result.returncode == 2
    assert f"{fleet}:4: group[0].colour: unknown key" in err
    assert "Traceback" not in err

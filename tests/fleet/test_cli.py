"""``edgebus-fleet run`` as a user runs it: a subprocess against a real broker, its exit status and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def door_fleet(tmp_path: Path, *faults: str) -> Path:
    """Door sensors (retained QoS 1 state, QoS 1 will) under frequent abrupt disconnects and reboots."""
    fleet = tmp_path / "doors.toml"
    profile = ROOT / "devices" / "door_sensor.toml"
    fleet.write_text(
        '[fleet]\nname = "doors"\nramp_up = 0.3\ndrain = 3.0\n'
        f"[[group]]\nprofile = {json.dumps(str(profile))}\ncount = 4\n"
        "[chaos]\ndisconnects_per_minute = 120.0\nreboots_per_minute = 30.0\nreboot_delay = 0.5\n"
        + "".join(f"{fault}\n" for fault in faults)
    )
    return fleet


async def test_retained_state_and_wills_match(any_broker: BrokerHandle, tmp_path: Path) -> None:
    # After the run a new subscriber must read each door's last acknowledged state [MQTT-3.3.1-6], and
    # every connection cut without DISCONNECT must have produced the door's will [MQTT-3.1.2-8], no more.
    result = await run_cli(
        "run",
        "--broker",
        f"{any_broker.host}:{any_broker.port}",
        "--fleet",
        str(door_fleet(tmp_path)),
        "--duration",
        "3",
        "--report",
        str(tmp_path),
        "--no-plots",
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    data = json.loads((tmp_path / "report.json").read_text())
    [retained] = data["retained"]
    assert retained["checked"] == 4 and retained["matched"] == 4
    [wills] = data["wills"]
    cuts = data["events"]["disconnects"] + data["events"]["reboots"]
    assert wills["required"] == cuts > 0
    assert wills["seen"] == wills["required"] and wills["missing"] == wills["unexpected"] == 0


async def test_wrong_retained_state_and_missing_will_fail_the_run(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    # Injected faults: another client overwrites one retained state after the run, and the fault proxy
    # swallows two wills on their way to the backend. Both checks must fail the run (exit status 1).
    result = await run_cli(
        "run",
        "--broker",
        f"{broker.host}:{broker.port}",
        "--fleet",
        str(door_fleet(tmp_path, "overwrite_retained = 1", "drop_wills = 2")),
        "--duration",
        "3",
        "--report",
        str(tmp_path),
        "--no-plots",
    )
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["events"]["wills_dropped_by_proxy"] == 2
    [retained] = data["retained"]
    assert retained["mismatched"] == 1 and retained["matched"] == 3
    [wills] = data["wills"]
    assert wills["missing"] == 2
    assert any(v.startswith("door-sensor/state QoS 1: retained mismatch") for v in data["violations"])
    assert "door-sensor: will missing: 2 abrupt disconnect(s) without the will" in data["violations"]
    assert "retained mismatch" in out and "will missing" in out


@pytest.mark.parametrize("durability", ["fsync", "memory"])
async def test_persistent_qos1_qos2_survive_a_broker_restart(tmp_path: Path, durability: str) -> None:
    # edgebus started by the simulator and restarted mid-run on the same data dir: acknowledged QoS 1/2
    # messages to persistent sessions (the backend's, the sleeping valves' queued commands) survive the
    # restart, because the session resumes with its state [MQTT-3.1.2-4]. The control: with
    # durability = "memory" the same run loses them, and the audit must fail it.
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "edgebus.toml"
    config.write_text(f'[storage]\ndurability = "{durability}"\n')
    data_dir = tmp_path / "data"
    command = f"{sys.executable} -m edgebus serve --config {config} --data-dir {data_dir}"
    command += " --listen {host}:{port}"  # the simulator fills these in
    result = await run_cli(
        "run",
        "--broker",
        f"127.0.0.1:{port}",
        "--fleet",
        str(FLEETS / "broker_restart.toml"),
        "--duration",
        "8",
        "--broker-cmd",
        command,
        "--report",
        str(tmp_path),
        "--no-plots",
    )
    out = result.stdout.decode()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["events"]["broker_restarts"] == 1
    groups = {(g["profile"], g["stream"]): g for g in data["groups"]}
    commands = groups[("valve", "command")]
    if durability == "memory":
        assert result.returncode == 1, out
        assert commands["lost"] > 0
        return
    assert result.returncode == 0, out + result.stderr.decode()
    assert commands["delivered_after_wake"] > 0  # queued while the valve slept, across the restart
    persistent_qos12 = [("smart-meter", "reading"), ("door-sensor", "state"), ("door-sensor", "event")]
    for key in [*persistent_qos12, ("valve", "command")]:
        group = groups[key]
        assert group["acknowledged"] > 0 and group["lost"] == 0 and group["unconfirmed"] == 0, group
        assert group["delivered"] == group["sent"]
    assert groups[("door-sensor", "event")]["duplicated"] == commands["duplicated"] == 0  # QoS 2
    [retained] = data["retained"]
    assert retained["checked"] == 5 and retained["matched"] == 5


async def test_without_the_fleet_extra_the_command_names_it(tmp_path: Path) -> None:
    # `pip install .` gives the command without the `fleet` extra: it must say what to install, not
    # end in a traceback. rich is hidden from a real interpreter (a None entry in sys.modules makes its
    # import fail exactly as a missing package does).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(FIRMWARE_SIM)]))
    program = (
        "import sys; sys.modules['rich'] = None; "
        "from edgebus_fleet.launch import main; sys.exit(main(['--help']))"
    )
    with trio.fail_after(CLI_TIMEOUT_S):
        result = await trio.run_process(
            [sys.executable, "-c", program], capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert b"edgebus-fleet needs rich, from the fleet extra: pip install 'edgebus[fleet]'" in result.stderr
    helped = await run_cli("--help")
    assert helped.returncode == 0 and b"edgebus-fleet" in helped.stdout  # with the extra it runs

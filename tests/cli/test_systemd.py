"""systemd's notify protocol on a real AF_UNIX datagram socket the test owns: READY=1 once edgebus serves,
WATCHDOG=1 at half of $WATCHDOG_USEC, STOPPING=1 on SIGTERM (sd_notify(3), systemd.service(5) Type=notify)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from edgebus.systemd import Notifier
from tests.processes import REPO, edgebus_env, free_port

WATCHDOG_USEC = 200_000


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines() if line)


async def test_ready_watchdog_and_stopping_reach_the_notify_socket(tmp_path: Path) -> None:
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify")
    await notify.bind(address)
    port = free_port()
    env = dict(edgebus_env(), NOTIFY_SOCKET=address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    command = [
        sys.executable,
        "-m",
        "edgebus",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(tmp_path),
    ]
    process = await trio.lowlevel.open_process(command, env=env)
    try:
        with trio.fail_after(15):
            ready = _fields(await notify.recv(4096))
        assert ready["READY"] == "1"
        assert ready["STATUS"] == f"serving MQTT on 127.0.0.1:{port}"
        assert ready["MAINPID"] == str(process.pid)
        # READY=1 means serving: the listener takes connections now, without waiting.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
        started = trio.current_time()
        with trio.fail_after(5):
            for _ in range(3):
                assert _fields(await notify.recv(4096)) == {"WATCHDOG": "1"}
        # Three pings at half of 0.2 s: about 0.2 s; far less than the interval would mean a busy loop.
        assert trio.current_time() - started >= 0.15
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            while True:
                fields = _fields(await notify.recv(4096))
                if "STOPPING" in fields:
                    break
                assert fields == {"WATCHDOG": "1"}
            assert fields["STATUS"] == "shutting down (SIGTERM)"
            assert await process.wait() == 0
    finally:
        notify.close()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_abstract_socket_names_and_no_socket_at_all() -> None:
    # '@name' is the abstract namespace (a leading NUL on the wire); without $NOTIFY_SOCKET nothing is sent.
    name = "edgebus-test-" + secrets.token_hex(6)
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await receiver.bind("\0" + name)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
    try:
        assert notifier.enabled and notifier.watchdog_usec == 1_000_000
        notifier.ready("up")
        with trio.fail_after(5):
            assert _fields(await receiver.recv(4096)) == {
                "READY": "1",
                "STATUS": "up",
                "MAINPID": str(os.getpid()),
            }
    finally:
        notifier.close()
        receiver.close()
    silent = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not silent.enabled and silent.watchdog_usec == 0
    silent.ready("nobody listens")  # no socket: nothing to do, nothing raised
    other = Notifier.from_environment({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"})
    assert other.watchdog_usec == 0  # the watchdog was meant for another process


def test_the_shipped_unit_file_verifies(tmp_path: Path) -> None:
    # configs/edgebus.service as systemd itself reads it (systemd-analyze verify), with ExecStart pointed
    # at this virtualenv's edgebus instead of /opt/edgebus (verify checks that the program exists).
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (REPO / "configs" / "edgebus.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "StateDirectory=edgebus" in unit
    here = Path(sys.executable).parent / "edgebus"
    assert here.exists()
    (tmp_path / "edgebus.service").write_text(unit.replace("/opt/edgebus/.venv/bin/edgebus", str(here)))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "edgebus.service")], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

"""The command line: `edgebus passwd`, `check-config` on the security files, and SIGHUP reloading the
password file of a running `edgebus serve` without dropping connections."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import trio

from edgebus.auth import read_password_file, verify_password
from edgebus.protocol import PingReq, PingResp
from tests.clients import MQTT_5
from tests.conftest import BrokerHandle
from tests.processes import free_port
from tests.security.helpers import connack_code, connect_with, password_file

REPO_ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": REPO_ROOT}


async def edgebus(*args: str) -> tuple[int, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "edgebus", *args],
        check=False,
        capture_stdout=True,
        capture_stderr=True,
        env=ENV,
    )
    return result.returncode, (result.stdout + result.stderr).decode()


async def test_passwd_batch_creates_and_updates(tmp_path: Path) -> None:
    """`edgebus passwd -b FILE USER PASSWORD`, like `mosquitto_passwd -b`; without -b a password argument
    is refused (it would end up in the shell history)."""
    path = tmp_path / "pw"
    assert (await edgebus("passwd", "-b", "-I", "1000", str(path), "u1", "one"))[0] == 0
    assert (await edgebus("passwd", "-b", "-I", "1000", str(path), "u1", "two"))[0] == 0
    entries = read_password_file(path)
    assert list(entries) == ["u1"] and verify_password(b"two", entries["u1"])
    code, output = await edgebus("passwd", str(path), "u2", "three")
    assert code == 2 and "needs -b" in output


async def test_check_config_reports_bad_security_files(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic maybe x\n")
    config = tmp_path / "edgebus.toml"
    config.write_text(
        f'[security]\nacl_file = "{acl}"\n\n[[listener]]\ntype = "tls"\naddress = "127.0.0.1:0"\n'
        f'certfile = "{tmp_path / "missing.pem"}"\nkeyfile = "{tmp_path / "missing.key"}"\n'
    )
    code, output = await edgebus("check-config", str(config))
    assert code == 2
    assert "unknown access 'maybe'" in output
    assert "listener[0] (tls 127.0.0.1:0)" in output


async def test_sighup_reloads_the_password_file_and_keeps_connections(tmp_path: Path) -> None:
    """SIGHUP: the running broker re-reads password_file; an open connection stays open."""
    path = password_file(tmp_path, {"old": "1"})
    port = free_port()
    config = tmp_path / "edgebus.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[storage]\ndurability = "memory"\n'
        f'[security]\nallow_anonymous = false\npassword_file = "{path}"\nauth_failure_delay = 0\n'
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "edgebus", "serve", "--config", str(config)], env=ENV
    )
    try:
        handle = BrokerHandle("127.0.0.1", port, "edgebus", None, tmp_path, _no_stop)
        with trio.fail_after(10):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)
        kept, answer = await connect_with(handle, MQTT_5, "kept", "old", b"1")
        assert connack_code(answer) == 0
        path.unlink()
        password_file(tmp_path, {"new": "2"})
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(5):
            while True:
                client, answer = await connect_with(handle, MQTT_5, "new", "new", b"2")
                await client.aclose()
                if connack_code(answer) == 0:
                    break
                await trio.sleep(0.05)
        refused, answer = await connect_with(handle, MQTT_5, "c", "old", b"1")
        assert connack_code(answer) == 0x86
        await refused.aclose()
        await kept.send_packet(PingReq())
        assert isinstance(await kept.receive_packet(), PingResp)
        await kept.aclose()
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _no_stop() -> None:
    return None


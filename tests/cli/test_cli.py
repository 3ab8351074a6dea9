"""The `edgebus` command as a user runs it: a real process, real signals, real sockets."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import pytest
import trio

from edgebus.protocol import MQTT_5, ConnAck, Connect, Disconnect, PacketDecoder, ReasonCode, encode
from tests.processes import edgebus_env, free_port

REPO = Path(__file__).resolve().parents[2]


async def _connect_when_up(port: int) -> trio.SocketStream:
    with trio.fail_after(15):
        while True:
            try:
                return await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)




@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_shuts_down_cleanly_and_v5_clients_get_0x8b(tmp_path: Path, signum: int) -> None:
    # [MQTT-3.14.2-1] / §4.13.2: a server closing the connection sends DISCONNECT with a reason code
    # on v5 first; 0x8B is "Server shutting down".
    port = free_port()
    with (tmp_path / "stderr.log").open("wb") as stderr:
        await _serve_then_signal(port, tmp_path, stderr, signum)


async def _serve_then_signal(port: int, tmp_path: Path, stderr: BinaryIO, signum: int) -> None:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "edgebus",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path),
        ],
        env=edgebus_env(),
        stderr=stderr,
    )
    try:
        stream = await _connect_when_up(port)
        await _shutdown_by_signal(stream, process, signum)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _shutdown_by_signal(stream: trio.SocketStream, process: trio.Process, signum: int) -> None:
    async with stream:
        decoder = PacketDecoder(role="client", protocol_level=MQTT_5)
        await stream.send_all(encode(Connect(client_id="sig", protocol_level=MQTT_5), MQTT_5))
        packets: list[object] = []
        with trio.fail_after(5):
            while not packets:
                packets += decoder.receive_data(await stream.receive_some())
        assert isinstance(packets[0], ConnAck)
        process.send_signal(signum)
        with trio.fail_after(10):
            while True:
                data = await stream.receive_some()
                if not data:
                    break
                packets += decoder.receive_data(data)
            returncode = await process.wait()
        disconnects = [p for p in packets if isinstance(p, Disconnect)]
        assert [d.reason_code for d in disconnects] == [ReasonCode.SERVER_SHUTTING_DOWN]
        assert returncode == 0


def test_check_config_ok_and_error(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "edgebus", "check-config", str(REPO / "configs" / "edgebus.toml")],
        env=edgebus_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[mqtt]\nmax_qos = 1\nreceive_maximum = 0\n")
    bad = subprocess.run(
        [sys.executable, "-m", "edgebus", "check-config", str(bad_file)],
        env=edgebus_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert f"{bad_file}:3: mqtt.receive_maximum" in bad.stderr


def test_serve_refuses_a_bad_listen_address() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgebus", "serve", "--listen", "127.0.0.1:99999"],
        env=edgebus_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2
    assert "99999" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_a_port_in_use_says_so_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgebus",
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(tmp_path),
            ],
            env=edgebus_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_names_the_redis_extra_when_redis_py_is_missing(tmp_path: Path) -> None:
    # redis-py is hidden from a real interpreter: a None entry in sys.modules fails its import as a missing
    # package does.
    config = tmp_path / "redis.toml"
    config.write_text(
        '[[bridge]]\nname = "cloud"\nkind = "redis-stream"\naddresses = ["127.0.0.1:6379"]\n'
        'topics = [{ pattern = "sensors/#" }]\n'
    )
    program = (
        "import sys; sys.modules['redis'] = None; "
        f"from edgebus.cli import main; sys.exit(main(['check-config', {str(config)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], env=edgebus_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert 'bridge cloud: a redis-stream bridge needs redis-py: pip install "edgebus[redis]"' in result.stderr

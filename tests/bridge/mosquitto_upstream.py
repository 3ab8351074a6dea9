"""Mosquitto as a bridge's upstream, run as a process: persistent, restartable on its port, pausable, TLS.

`open_upstreams(tmp_path)` (an async context manager; tests wrap it in a fixture) yields a factory that
starts one Mosquitto per call on a free 127.0.0.1 port, with ``persistence
true`` in its own directory, so a SIGTERM restart keeps sessions (and their inbound QoS 2 state) and
retained messages. An `Upstream` can stop (SIGTERM), start again on the same port, pause (SIGSTOP) and
continue (SIGCONT); leaving the context kills every process it started. With ``tls=True`` a second
listener speaks TLS with a certificate for 127.0.0.1 from a throw-away trustme CA.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trustme

from tests.processes import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
#: Bounds on Mosquitto starting (listening) and stopping.
START_S = 10.0
STOP_S = 10.0

__all__ = ["MOSQUITTO", "TlsFiles", "Upstream", "UpstreamFactory", "free_port", "open_upstreams"]




@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS listener: the CA that signed everything, the server's chain and key, and a
    client certificate (mutual TLS) signed by the same CA."""

    cafile: Path
    certfile: Path
    keyfile: Path
    client_certfile: Path
    client_keyfile: Path


def make_tls_files(directory: Path, server_name: str = "127.0.0.1") -> TlsFiles:
    """A fresh trustme CA with a server certificate for ``server_name`` and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(server_name)
    client = ca.issue_cert("edgebus-bridge@example.org")
    files = TlsFiles(
        cafile=directory / "ca.pem",
        certfile=directory / "server.pem",
        keyfile=directory / "server.key",
        client_certfile=directory / "client.pem",
        client_keyfile=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.cafile))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(files.certfile), append=True)
    server.private_key_pem.write_to_path(str(files.keyfile))
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(files.client_certfile), append=True)
    client.private_key_pem.write_to_path(str(files.client_keyfile))
    return files


@dataclass
class Upstream:
    """One Mosquitto process (and its successors after `restart`) on fixed ports in ``data_dir``."""

    data_dir: Path
    port: int
    tls_port: int | None = None
    tls: TlsFiles | None = None
    process: trio.Process | None = None
    _paused: bool = field(default=False, repr=False)

    @property
    def config_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> None:
        """Start Mosquitto and wait until it accepts TCP connections on its port(s)."""
        if self.process is not None and self.process.returncode is None:
            raise RuntimeError("mosquitto is already running")
        log = self.log_path.open("ab")
        try:
            self.process = await trio.lowlevel.open_process(
                [MOSQUITTO, "-c", str(self.config_path)], stdout=log, stderr=log
            )
        finally:
            log.close()  # the child holds its own descriptor
        self._paused = False
        ports = [self.port] + ([self.tls_port] if self.tls_port is not None else [])
        try:
            with trio.fail_after(START_S):
                for port in ports:
                    while True:
                        if self.process.poll() is not None:
                            raise RuntimeError(f"mosquitto exited:\n{self.log_text()}")
                        try:
                            probe = await trio.open_tcp_stream("127.0.0.1", port)
                        except OSError:
                            await trio.sleep(0.02)
                            continue
                        await probe.aclose()
                        break
        except BaseException:
            await self.kill()
            raise

    async def stop(self) -> None:
        """SIGTERM (Mosquitto saves its persistence file) and wait for the exit."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        if self._paused:
            self.cont()
        process.terminate()
        try:
            with trio.fail_after(STOP_S):
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()

    async def kill(self) -> None:
        """SIGKILL: no save, every connection cut by the kernel."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
        self._paused = False

    async def restart(self) -> None:
        """Stop gracefully and start again on the same port(s), from the saved state."""
        await self.stop()
        await self.start()

    def pause(self) -> None:
        """SIGSTOP: the process reads, writes and answers nothing; the kernel still buffers bytes."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self._paused = True

    def cont(self) -> None:
        """SIGCONT after `pause`."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self._paused = False


def _config(
    upstream: Upstream,
    password_file: Path | None,
    require_certificate: bool,
    max_inflight_messages: int | None,
) -> str:
    lines = [
        # Started as root, Mosquitto switches to the user "mosquitto", who could not write the persistence
        # file under the test's private tmp dir; as another user the option has no effect.
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
        "per_listener_settings false",
        "persistence true",
        f"persistence_location {upstream.data_dir}/",
        "log_type all",
        "log_dest stderr",
        "allow_anonymous " + ("false" if password_file is not None else "true"),
    ]
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    if max_inflight_messages is not None:
        lines.append(f"max_inflight_messages {max_inflight_messages}")
    lines.append(f"listener {upstream.port} 127.0.0.1")
    if upstream.tls is not None and upstream.tls_port is not None:
        tls = upstream.tls
        lines += [
            f"listener {upstream.tls_port} 127.0.0.1",
            f"cafile {tls.cafile}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
            "require_certificate " + ("true" if require_certificate else "false"),
        ]
    return "\n".join(lines) + "\n"


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file (hashed by mosquitto_passwd -b) for ``users``."""
    path.touch()
    for user, password in users.items():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), user, password], check=True, capture_output=True)
    return path


UpstreamFactory = Callable[..., Awaitable[Upstream]]


@asynccontextmanager
async def open_upstreams(tmp_path: Path) -> AsyncIterator[UpstreamFactory]:
    """Yields ``start(tls=False, users=None, require_certificate=False, max_inflight_messages=None,
    extra_config="")`` (``extra_config``: more mosquitto.conf lines, e.g. ``max_qos 1\n``)
    -> a running `Upstream` in a directory under ``tmp_path``; every one is killed on exit."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto is not installed")
    started: list[Upstream] = []

    async def start(
        *,
        tls: bool = False,
        users: dict[str, str] | None = None,
        require_certificate: bool = False,
        max_inflight_messages: int | None = None,
        extra_config: str = "",
    ) -> Upstream:
        data_dir = tmp_path / f"upstream{len(started)}"
        data_dir.mkdir()
        upstream = Upstream(data_dir, free_port())
        if tls:
            upstream.tls = make_tls_files(data_dir / "tls")
            upstream.tls_port = free_port()
        password_file = make_password_file(data_dir / "passwd", users) if users is not None else None
        upstream.config_path.write_text(
            _config(upstream, password_file, require_certificate, max_inflight_messages) + extra_config
        )
        started.append(upstream)
        await upstream.start()
        return upstream

    try:
        yield start
    finally:
        for upstream in started:
            await upstream.kill()

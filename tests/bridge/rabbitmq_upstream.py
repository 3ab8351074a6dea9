"""A real RabbitMQ (Debian's rabbitmq-server) for the bridge tests, started as a plain process rather than the
system service: its own node name, config, enabled-plugins file (streams and MQTT), data and log dirs, HOME
(for the Erlang cookie), epmd and distribution ports; listeners on 127.0.0.1 free ports. Stopped by PID
(the node and the epmd this helper started), SIGKILLed and restarted on the same data.

`StreamAdmin` creates and reads streams through rstream on an asyncio thread of its own.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    amqp_decoder,
)
from rstream.client import Addr, Client, ClientPool

from edgebus.bridge.aio import LoopThread, open_loop_thread
from tests.processes import free_port

__all__ = [
    "RABBITMQ_SERVER",
    "RabbitServer",
    "StoredMessage",
    "StreamAdmin",
    "open_stream_admin",
    "running_rabbitmq",
    "shared_rabbitmq",
]

#: The broker's start script in Debian's package (the /usr/sbin wrapper would switch to the rabbitmq user).
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EPMD = "/usr/bin/epmd"
#: Seconds a starting node has to open its listeners (Erlang boots in 3-6 s on an idle test machine).
START_TIMEOUT_S = 60.0


class RabbitServer:
    """One RabbitMQ node with the stream and MQTT plugins on 127.0.0.1, its data in ``directory``."""

    def __init__(self, directory: Path, mqtt_config: str = "") -> None:
        self.directory = directory
        self.mqtt_config = mqtt_config  # extra rabbitmq.conf lines (mqtt.* settings)
        self.amqp_port = free_port()
        self.port = free_port()  # the stream protocol's: the bridge's upstream
        self.mqtt_port = free_port()
        self.node = f"edgebus-test-{os.getpid()}-{self.port}@localhost"
        self._epmd_port = free_port()
        self._dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def _environment(self) -> dict[str, str]:
        directory = self.directory
        return {
            **os.environ,
            "HOME": str(directory),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
            "ERL_EPMD_PORT": str(self._epmd_port),
            # The start script then execs the Erlang VM itself: our child's PID is the node's.
            "RUNNING_UNDER_SYSTEMD": "1",
        }

    def _write_config(self) -> None:
        directory = self.directory
        (directory / "mnesia").mkdir(parents=True, exist_ok=True)
        (directory / "log").mkdir(parents=True, exist_ok=True)
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"stream.listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"mqtt.listeners.tcp.1 = 127.0.0.1:{self.mqtt_port}\n"
            "loopback_users = none\n"
            "log.console = false\nlog.file.level = info\n"
            f"{self.mqtt_config}"
        )
        (directory / "enabled_plugins").write_text("[rabbitmq_stream,rabbitmq_mqtt].\n")

    def _launch(self) -> subprocess.Popen[bytes]:
        if self.process is not None:
            raise RuntimeError("RabbitMQ is already running")
        self._write_config()
        self._log = (self.directory / "rabbitmq-server.out").open("ab")
        if self._epmd is None:
            self._epmd = subprocess.Popen(
                [EPMD, "-port", str(self._epmd_port), "-address", "127.0.0.1"],
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        self.process = subprocess.Popen(
            [RABBITMQ_SERVER], env=self._environment(), stdout=self._log, stderr=subprocess.STDOUT
        )
        return self.process

    def _ready(self, process: subprocess.Popen[bytes]) -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited with {process.returncode}; see {self.directory}/log")
        return all(_accepts(port) for port in (self.amqp_port, self.port, self.mqtt_port))

    async def start(self) -> None:
        """Start the node (and, the first time, its epmd); wait until every listener accepts."""
        process = self._launch()
        with trio.fail_after(START_TIMEOUT_S):
            while not self._ready(process):  # noqa: ASYNC110 - polling another process's listeners
                await trio.sleep(0.1)

    def start_blocking(self) -> None:
        """`start` for a synchronous (module- or session-scoped) fixture. A node that does not come up is
        stopped, its epmd too, before the error goes on."""
        process = self._launch()
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while not self._ready(process):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"RabbitMQ did not open its listeners within {START_TIMEOUT_S:g} s")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL the node: it dies without a word; the kernel resets its sockets."""
        process = self.process
        if process is None:
            return
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def restart(self) -> None:
        """SIGKILL, then start again on the same ports and data."""
        self.kill()
        await self.start()

    def stop(self) -> None:
        """Stop for good: the node, then our epmd; idempotent."""
        self.kill()
        if self._epmd is not None:
            self._epmd.send_signal(signal.SIGKILL)
            self._epmd.wait()
            self._epmd = None


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@asynccontextmanager
async def running_rabbitmq(directory: Path, mqtt_config: str = "") -> AsyncIterator[RabbitServer]:
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the server starts
    server = RabbitServer(directory, mqtt_config)
    try:
        await server.start()
        yield server
    finally:
        server.stop()


_shared: RabbitServer | None = None
#: Held while the shared node starts: a test asking for it waits for a start already under way (the
#: session may begin one in the background, tests/shared_engines.py).
_shared_lock = threading.Lock()
#: Fresh starts (new ports each) `shared_rabbitmq` tries before giving up.
SHARED_START_ATTEMPTS = 3


def shared_rabbitmq() -> RabbitServer:
    """One RabbitMQ for the whole test session (an Erlang node takes seconds to start): started on first
    use, stopped when the test process exits. Tests keep apart by using streams and MQTT topics of their own;
    a test that kills and restarts it leaves it running on the same data and ports."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.process is None:
            for attempt in range(SHARED_START_ATTEMPTS):
                server = RabbitServer(Path(tempfile.mkdtemp(prefix="edgebus-rabbitmq-")))
                try:
                    server.start_blocking()
                    break
                except RuntimeError:
                    # The node exited: most often another process took one of its free ports between
                    # free_port() and the node's bind (the machine is shared). New ports, once more.
                    if attempt == SHARED_START_ATTEMPTS - 1:
                        raise
            atexit.register(server.stop)
            _shared = server
        return _shared


# --- reading and writing streams --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredMessage:
    offset: int
    message: AMQPMessage

    def application_property(self, name: str) -> object:
        properties = self.message.application_properties or {}
        value = properties.get(name.encode(), properties.get(name))
        return value.decode() if isinstance(value, bytes) else value

    @property
    def body(self) -> bytes:
        body = self.message.body
        return b"".join(body) if isinstance(body, list) else bytes(body)


#: Seconds without a new delivery after which a read from the start counts as having reached the end.
READ_IDLE_S = 0.4


class StreamAdmin:
    """rstream on its own asyncio thread: create, delete and read streams of one server."""

    def __init__(self, loop_thread: LoopThread, port: int) -> None:
        self._loop = loop_thread
        self.port = port

    async def _client(self) -> Client:
        pool = ClientPool(
            "127.0.0.1",
            self.port,
            vhost="/",
            username="guest",
            password="guest",
            frame_max=1024 * 1024,
            heartbeat=60,
            load_balancer_mode=False,
            max_retries=1,
        )
        return await pool.new(connection_name="test-admin", addr=Addr("127.0.0.1", self.port))

    async def _create(self, stream: str) -> None:
        client = await self._client()
        try:
            if not await client.stream_exists(stream):
                await client.create_stream(stream)
        finally:
            await client.close()

    async def _delete(self, stream: str) -> None:
        client = await self._client()
        try:
            if await client.stream_exists(stream):
                await client.delete_stream(stream)
        finally:
            await client.close()

    async def _read(self, stream: str) -> list[StoredMessage]:
        import asyncio  # this runs on the admin's asyncio thread

        found: list[StoredMessage] = []
        arrived = asyncio.Event()

        def on_message(message: AMQPMessage, context: MessageContext) -> None:
            found.append(StoredMessage(context.offset, message))
            arrived.set()

        consumer = Consumer("127.0.0.1", self.port, username="guest", password="guest", max_retries=1)
        await consumer.start()
        try:
            await consumer.subscribe(
                stream,
                on_message,
                decoder=amqp_decoder,
                offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
                initial_credit=100,
            )
            while True:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), READ_IDLE_S if found else 2 * READ_IDLE_S)
                except TimeoutError:
                    break
        finally:
            await consumer.close()
        # A chunk can be delivered again at a subscription's start: one entry per offset, in offset order.
        return sorted({stored.offset: stored for stored in found}.values(), key=lambda stored: stored.offset)

    async def create_stream(self, stream: str) -> None:
        await self._loop.run(self._create, stream, timeout=20)

    async def delete_stream(self, stream: str) -> None:
        await self._loop.run(self._delete, stream, timeout=20)

    async def read(self, stream: str) -> list[StoredMessage]:
        return await self._loop.run(self._read, stream, timeout=60)


@asynccontextmanager
async def open_stream_admin(port: int) -> AsyncIterator[StreamAdmin]:
    async with open_loop_thread("stream-admin") as loop_thread:
        yield StreamAdmin(loop_thread, port)

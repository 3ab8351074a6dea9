"""The uplink outage of the bridge catch-up benchmark (bench/bridge.py, ``--outage uplink``).

In the default outage ("upstream") the cloud engine itself is down while the devices publish and is
started at t0, so the catch-up includes the engine's own restart (Kafka's transaction coordinator, a
RabbitMQ stream's leader). A gateway's usual outage is its uplink instead: the cloud engine runs on and
the gateway cannot reach it. Here the gateway dials a `Gate` instead of the engine; until t0 nothing
listens on the gate's port (every connect is refused, as from a host whose route is gone), at t0 the
gate starts forwarding to the running engine. What is timed is then the gateway's reconnect and the
forwarding alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.run import HOST, free_port

__all__ = ["Gate"]

PIPE_BUFFER_BYTES = 1 << 16


class Gate:
    """A TCP forwarder HOST:port -> HOST:target_port, closed (connections refused) until `open`."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port if port is not None else free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.answered = 0  # bytes the upstream sent back through the gate

    async def open(self) -> float:
        """Start forwarding; returns the moment the gate's port accepts (t0)."""
        self._server = await asyncio.start_server(self._connection, HOST, self.port, reuse_address=True)
        return time.monotonic()

    async def close(self) -> None:
        """Stop listening (connects are refused again) and close every forwarded connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        for task in list(self._pipes):
            with contextlib.suppress(BaseException):
                await task

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.close()
            return
        for source, sink, upstream in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(source, sink, upstream))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, upstream: bool) -> None:
        try:
            while data := await source.read(PIPE_BUFFER_BYTES):
                if upstream:
                    self.answered += len(data)
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()

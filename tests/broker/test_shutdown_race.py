"""Shutdown: output for a closed connection that comes after the connections' nursery has closed.

The broker's connection tasks (readers, writers) run in a nursery that closes with its last task at
shutdown; `Connections.stop_writers` runs only when the broker's task resumes after it. In between, the
flusher (in the outer nursery) may still be woken, e.g. by a store commit releasing a held PUBACK for a
connection that is already closing, and a closing connection's last bytes go through a writer task.
Starting it on the closed nursery raised "Nursery is closed to new arrivals" and ended the broker with
an error instead of a clean exit (seen once in `bench.offline_disk`, exit code 1 on SIGTERM).
"""

from __future__ import annotations

import socket

import trio

from edgebus.core.server import Connection
from edgebus.core.server_events import ConnectionLimits
from edgebus.core.stats import Stats
from edgebus.server.connection import ClientConnection, Connections
from edgebus.server.timers import Timers
from edgebus.transport.tcp import TcpStream


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


async def _after_read(_client: ClientConnection, _received: int) -> None:
    return None


async def test_a_closing_connection_woken_after_the_tasks_nursery_closed_is_cut() -> None:
    limits, stats = ConnectionLimits(), Stats()
    lost: list[ClientConnection] = []
    connections = Connections(limits, stats, Timers(), 10.0, lambda _: None, _after_read, lost.append)
    peer, accepted = _tcp_pair()
    with peer:
        stream = TcpStream(accepted, "test")
        client = ClientConnection(connections, Connection(limits, stats), stream, 0.0, None)
        connections.clients[client.conn] = client
        connections.close(client)  # closing: its last bytes go through a writer task
        async with trio.open_nursery() as tasks:
            connections.start_writers_in(tasks)
        # The nursery has closed; `stop_writers` has not run: the broker's task is not back yet.
        client.writer_running = False  # as after a writer that finished before the nursery closed
        client.wake()
        connections.flush_dirty()  # raised RuntimeError("Nursery is closed to new arrivals")
        assert client.conn not in connections.clients, "the connection was not cut"
        peer.settimeout(5)
        assert peer.recv(16) == b"", "the socket is still open"
        assert lost == [client]

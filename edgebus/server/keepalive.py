"""The keep-alive sweep: one pass over all connections twice a second, instead of a timer per connection."""

from __future__ import annotations

import logging

import trio

from edgebus.core.server import ConnectionState
from edgebus.protocol.enums import ReasonCode
from edgebus.server.connection import Connections

log = logging.getLogger("edgebus.server.keepalive")

#: How often keep-alive deadlines are checked.
KEEP_ALIVE_SWEEP_S = 0.5


async def sweep_forever(connections: Connections) -> None:
    """Close connections that sent nothing for 1.5 x Keep Alive [MQTT-3.1.2-24] (0x8D on v5), or no
    CONNECT within [limits] connect_timeout."""
    while True:
        await trio.sleep(KEEP_ALIVE_SWEEP_S)
        now = trio.current_time()
        connect_timeout = connections.connect_timeout  # a reload may change it
        for client in list(connections.clients.values()):
            conn = client.conn
            if client.closing:
                continue
            if conn.state is ConnectionState.AWAIT_CONNECT:
                if now - client.opened > connect_timeout:  # slowloris: counted from the open
                    log.info("%s: no CONNECT within %g s", client.stream.remote, connect_timeout)
                    client.close()
                continue
            timeout = conn.keep_alive_timeout
            if timeout is not None and now - client.last_read > timeout:
                log.info("client %s: keep-alive timeout", conn.client_id)
                client.close(ReasonCode.KEEP_ALIVE_TIMEOUT)

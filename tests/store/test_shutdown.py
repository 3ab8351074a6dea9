"""Shutdown order (ARCHITECTURE.md, structured concurrency): clients are told first (v5: DISCONNECT
0x8B), then serve() returns, the listener is gone and the store is closed cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from edgebus.protocol import MQTT_5, Disconnect, ReasonCode
from edgebus.store import DB_NAME
from tests.clients import PEER, RawClient
from tests.conftest import StartBroker

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's shutdown sequence")


async def test_shutdown_tells_clients_then_stops_listening_and_closes_the_store(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    broker = await start_broker(data_dir=tmp_path)
    assert (tmp_path / f"{DB_NAME}.open").exists()  # the store is open while serving
    v5 = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await v5.mqtt_connect("v5-client")
    v311 = await RawClient.connect(broker.host, broker.port, 4)
    await v311.mqtt_connect("v311-client")

    with trio.fail_after(10):
        await broker.shutdown()  # returns once serve() has returned

    # [MQTT-4.13.2-1] / §3.14: the v5 client was told why, the 3.1.1 client just closed.
    assert await v5.expect_closed() == [Disconnect(ReasonCode.SERVER_SHUTTING_DOWN)]
    assert await v311.expect_closed() == []
    with pytest.raises(OSError, match="onnect"):  # connection refused: nobody listens
        await trio.open_tcp_stream(broker.host, broker.port)
    assert not (tmp_path / f"{DB_NAME}.open").exists(), "store not closed cleanly"
    for client in (v5, v311):
        await client.aclose()

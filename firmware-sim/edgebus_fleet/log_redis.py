"""A Redis Streams reader for the fleet backend (`edgebus_fleet.cloud_log`): XREAD after the entry that was on
top when the run started, a batch per crossing to redis-py's asyncio loop thread."""

from __future__ import annotations

from typing import Any

import redis.asyncio

from edgebus.bridge.aio import LoopThread
from edgebus_fleet.cloud_log import LogSettings, OnMessage

__all__ = ["RedisStreamReader"]

BATCH = 1000
BLOCK_MS = 500
CALL_TIMEOUT_S = 10.0


class RedisStreamReader:
    def __init__(self, settings: LogSettings) -> None:
        self.settings = settings
        self._loop = LoopThread(f"fleet-log-{settings.stream}")
        self._client: Any = None
        self._after = "0-0"

    async def start(self) -> None:
        await self._loop.start()
        self._client = await self._loop.run(self._connect, timeout=CALL_TIMEOUT_S)
        top: Any = await self._loop.run(self._client.xrevrange, self.settings.stream, "+", "-", 1,
                                        timeout=CALL_TIMEOUT_S)
        if top:
            self._after = top[0][0].decode()

    async def _connect(self) -> Any:
        settings = self.settings
        client = redis.asyncio.Redis(host=settings.host, port=settings.port, socket_connect_timeout=5)
        await client.ping()
        return client

    async def _read(self) -> list[tuple[str, bytes]]:
        settings = self.settings
        found: Any = await self._client.xread({settings.stream: self._after}, count=BATCH, block=BLOCK_MS)
        entries: list[tuple[str, bytes]] = []
        for _, page in found or ():
            for entry_id, fields in page:
                self._after = entry_id.decode()
                topic = fields.get(b"topic", b"").decode("utf-8", "replace")
                entries.append((topic.removeprefix(settings.remote_prefix), fields.get(b"payload", b"")))
        return entries

    async def run(self, on_message: OnMessage) -> None:
        while True:
            for topic, payload in await self._loop.run(self._read, timeout=CALL_TIMEOUT_S):
                on_message(topic, payload)

    async def close(self) -> None:
        if self._client is not None and self._loop.running:
            await self._loop.run(self._client.aclose, timeout=CALL_TIMEOUT_S)
        await self._loop.stop()

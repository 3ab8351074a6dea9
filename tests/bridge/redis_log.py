"""Redis Streams as the outage campaign's log (test_outages.py): a real redis-server with its append-only file
fsynced on every write; the log is the gateway's stream, read back with XRANGE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from edgebus.bridge.redis_stream import default_stream
from edgebus.bridge.sink import MESSAGE_ID_PROPERTY
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.outage_logs import FAST_LINK, FAST_LINK_TOML, GATEWAY
from tests.bridge.redis_upstream import RedisServer, read_stream, running_redis_server, stream_length

__all__ = ["RedisLog", "redis_log"]


@dataclass
class RedisLog:
    server: RedisServer
    exactly_once: bool = True
    prefix: str = f"gw/{GATEWAY}/"
    stream: str = default_stream(GATEWAY)  # the bridge's default: one stream per gateway

    def bridge(self, port: int, **overrides: object) -> BridgeConfig:
        values: dict[str, object] = {
            "name": "cloud",
            "kind": "redis-stream",
            "addresses": (ListenAddress("127.0.0.1", port),),
            "topics": (BridgeTopic("sensors/#", qos=1, remote_prefix=self.prefix),),
            **FAST_LINK,
        }
        values.update(overrides)
        return BridgeConfig(**values)  # type: ignore[arg-type]

    def bridge_toml(self, port: int) -> str:
        return (
            f'[[bridge]]\nname = "cloud"\nkind = "redis-stream"\naddresses = ["127.0.0.1:{port}"]\n'
            f"{FAST_LINK_TOML}"
            f'topics = [{{ pattern = "sensors/#", qos = 1, remote_prefix = "{self.prefix}" }}]\n'
        )

    async def count(self) -> int:
        return await trio.to_thread.run_sync(stream_length, self.server.port, self.stream)

    async def read(self) -> list[tuple[str, int]]:
        stored = await trio.to_thread.run_sync(read_stream, self.server.port, self.stream)
        found = []
        for entry in stored:
            topic = entry.fields["topic"].decode()
            assert topic.startswith(self.prefix), topic
            assert entry.fields[MESSAGE_ID_PROPERTY].decode().startswith(f"{GATEWAY}:")
            found.append((topic[len(self.prefix) :], int(entry.fields["payload"])))
        return found

    async def restart(self) -> None:
        self.server.kill()  # SIGKILL: appendfsync always, so what it answered is in its AOF
        await trio.sleep(0.5)
        await self.server.start()


@asynccontextmanager
async def redis_log(tmp_path: Path) -> AsyncIterator[RedisLog]:
    async with running_redis_server(tmp_path / "redis") as server:
        yield RedisLog(server)

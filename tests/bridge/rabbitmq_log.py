"""A RabbitMQ stream as the outage campaign's log (tests/bridge/outage_logs.py has the shape): the shared
RabbitMQ node of the test session, a stream of its own per test, read back from its first offset."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from edgebus.bridge.amqp_message import MQTT_TOPIC_PROPERTY
from edgebus.bridge.sink import MESSAGE_ID_PROPERTY
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.outage_logs import FAST_LINK, FAST_LINK_TOML, GATEWAY
from tests.bridge.rabbitmq_upstream import RabbitServer, StreamAdmin, open_stream_admin, shared_rabbitmq

_numbers = itertools.count()


@dataclass
class RabbitStreamLog:
    server: RabbitServer
    admin: StreamAdmin
    stream: str
    exactly_once: bool = True
    prefix: str = f"gw/{GATEWAY}/"

    def bridge(self, port: int, **overrides: object) -> BridgeConfig:
        values: dict[str, object] = {
            "name": "cloud",
            "kind": "rabbitmq-stream",
            "addresses": (ListenAddress("127.0.0.1", port),),
            "stream": self.stream,
            "topics": (BridgeTopic("sensors/#", qos=1, remote_prefix=self.prefix),),
            **FAST_LINK,
        }
        values.update(overrides)
        return BridgeConfig(**values)  # type: ignore[arg-type]

    def bridge_toml(self, port: int) -> str:
        return (
            f'[[bridge]]\nname = "cloud"\nkind = "rabbitmq-stream"\naddresses = ["127.0.0.1:{port}"]\n'
            f'stream = "{self.stream}"\n{FAST_LINK_TOML}'
            f'topics = [{{ pattern = "sensors/#", qos = 1, remote_prefix = "{self.prefix}" }}]\n'
        )

    async def count(self) -> int:
        return len(await self.read())

    async def read(self) -> list[tuple[str, int]]:
        found = []
        for stored in await self.admin.read(self.stream):
            topic = stored.application_property(MQTT_TOPIC_PROPERTY)
            assert isinstance(topic, str) and topic.startswith(self.prefix), topic
            message_id = stored.application_property(MESSAGE_ID_PROPERTY)
            assert isinstance(message_id, str) and message_id.startswith(f"{GATEWAY}:"), message_id
            found.append((topic[len(self.prefix) :], int(stored.body)))
        return found

    async def restart(self) -> None:
        # SIGKILL: a stream confirms what it wrote to its segment files, which a killed process leaves behind.
        self.server.kill()
        await trio.sleep(0.5)
        await self.server.start()


@asynccontextmanager
async def rabbitmq_log(tmp_path: Path) -> AsyncIterator[RabbitStreamLog]:
    server = shared_rabbitmq()
    async with open_stream_admin(server.port) as admin:
        stream = f"log-{time.monotonic_ns()}-{next(_numbers)}"
        await admin.create_stream(stream)
        try:
            yield RabbitStreamLog(server, admin, stream)
        finally:
            with trio.move_on_after(10) as cleanup:
                cleanup.shield = True
                try:
                    await admin.delete_stream(stream)
                except Exception:  # a test that ends with the server down: its data dir goes with it
                    pass

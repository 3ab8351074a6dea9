"""A NATS JetStream reader for the fleet backend (`edgebus_fleet.cloud_log`): an ephemeral pull consumer that
delivers what arrives after the run started, a batch per crossing to nats-py's asyncio loop thread. Subjects
map back to MQTT topics as the bridge made them (`edgebus.bridge.rules.subject_to_topic`)."""

from __future__ import annotations

from typing import Any

import nats
import nats.js.api

from edgebus.bridge.aio import LoopThread
from edgebus.bridge.rules import subject_to_topic
from edgebus_fleet.cloud_log import LogSettings, OnMessage

__all__ = ["JetStreamReader"]

BATCH = 500
WAIT_S = 0.5
CALL_TIMEOUT_S = 10.0


class JetStreamReader:
    def __init__(self, settings: LogSettings) -> None:
        self.settings = settings
        self._loop = LoopThread(f"fleet-log-{settings.stream}")
        self._client: Any = None
        self._pull: Any = None

    async def start(self) -> None:
        await self._loop.start()
        await self._loop.run(self._connect, timeout=CALL_TIMEOUT_S)

    async def _connect(self) -> None:
        settings = self.settings
        self._client = await nats.connect(f"nats://{settings.host}:{settings.port}", connect_timeout=5)
        prefix = settings.remote_prefix
        subject = (prefix if prefix.endswith(".") or not prefix else prefix + ".") + ">"
        config = nats.js.api.ConsumerConfig(
            deliver_policy=nats.js.api.DeliverPolicy.NEW, ack_policy=nats.js.api.AckPolicy.NONE
        )
        self._pull = await self._client.jetstream().pull_subscribe(
            subject, durable=None, stream=settings.stream, config=config
        )

    async def _read(self) -> list[tuple[str, bytes]]:
        try:
            messages = await self._pull.fetch(BATCH, timeout=WAIT_S)
        except TimeoutError:  # nats.errors.TimeoutError, or the bare asyncio one fetch() also raises
            return []
        prefix = self.settings.remote_prefix.rstrip(".")
        found = []
        for message in messages:
            subject = message.subject.removeprefix(prefix).removeprefix(".") if prefix else message.subject
            found.append((subject_to_topic(subject), message.data))
        return found

    async def run(self, on_message: OnMessage) -> None:
        while True:
            for topic, payload in await self._loop.run(self._read, timeout=CALL_TIMEOUT_S):
                on_message(topic, payload)

    async def close(self) -> None:
        if self._client is not None and self._loop.running:
            await self._loop.run(self._client.close, timeout=CALL_TIMEOUT_S)
        await self._loop.stop()

"""A RabbitMQ stream reader for the fleet backend (`edgebus_fleet.cloud_log`): an rstream consumer
subscribed at the stream's next offset when the run starts (``OffsetType.NEXT``), on an asyncio loop thread
of its own; deliveries collect there and cross to trio a batch at a time.

Each message is the AMQP 1.0 message the bridge's sink encoded (`edgebus.bridge.amqp_message`): the payload
is its data section, the remote MQTT topic its ``mqtt-topic`` application property (``[log]
remote_prefix`` taken off). A stream delivers whole chunks, so a chunk can come again after a resubscribe:
offsets at or below the last one handed on are not handed on twice (one offset is one entry of the log)."""

from __future__ import annotations

import asyncio
from typing import Any

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    amqp_decoder,
)

from edgebus.bridge.aio import LoopThread
from edgebus.bridge.amqp_message import MQTT_TOPIC_PROPERTY
from edgebus_fleet.cloud_log import LogSettings, OnMessage

__all__ = ["RabbitStreamReader", "body_of", "topic_of"]

WAIT_S = 0.5
CALL_TIMEOUT_S = 10.0
#: Messages the server may push ahead of our acknowledging them (credit per subscription, in chunks).
INITIAL_CREDIT = 10


def topic_of(message: AMQPMessage) -> str:
    properties: dict[Any, Any] = message.application_properties or {}
    value = properties.get(MQTT_TOPIC_PROPERTY.encode(), properties.get(MQTT_TOPIC_PROPERTY, b""))
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def body_of(message: AMQPMessage) -> bytes:
    """The data section(s): one vbin for what the bridge writes, a list if a producer split it."""
    body: Any = message.body
    return b"".join(body) if isinstance(body, list) else bytes(body)


class RabbitStreamReader:
    def __init__(self, settings: LogSettings) -> None:
        self.settings = settings
        self._loop = LoopThread(f"fleet-log-{settings.stream}")
        self._consumer: Consumer | None = None
        # Filled on the asyncio loop, emptied by `_read` (also on the loop): no lock needed.
        self._arrived: list[tuple[str, bytes]] = []
        self._wakeup: asyncio.Event | None = None
        self._last_offset = -1

    async def start(self) -> None:
        await self._loop.start()
        await self._loop.run(self._subscribe, timeout=CALL_TIMEOUT_S)

    async def _subscribe(self) -> None:
        settings = self.settings
        self._wakeup = asyncio.Event()
        self._consumer = Consumer(
            settings.host,
            settings.port,
            username="guest",
            password="guest",
            max_retries=1,
            connection_name="edgebus-fleet",
        )
        await self._consumer.start()
        await self._consumer.subscribe(
            settings.stream,
            self._on_message,
            decoder=amqp_decoder,
            offset_specification=ConsumerOffsetSpecification(OffsetType.NEXT, None),
            initial_credit=INITIAL_CREDIT,
        )

    def _on_message(self, message: AMQPMessage, context: MessageContext) -> None:
        if context.offset <= self._last_offset:
            return
        self._last_offset = context.offset
        self._arrived.append((topic_of(message).removeprefix(self.settings.remote_prefix), body_of(message)))
        assert self._wakeup is not None
        self._wakeup.set()

    async def _read(self) -> list[tuple[str, bytes]]:
        assert self._wakeup is not None
        if not self._arrived:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), WAIT_S)
            except TimeoutError:
                return []
        found, self._arrived = self._arrived, []
        return found

    async def run(self, on_message: OnMessage) -> None:
        while True:
            for topic, payload in await self._loop.run(self._read, timeout=CALL_TIMEOUT_S):
                on_message(topic, payload)

    async def close(self) -> None:
        if self._consumer is not None and self._loop.running:
            await self._loop.run(self._consumer.close, timeout=CALL_TIMEOUT_S)
        await self._loop.stop()

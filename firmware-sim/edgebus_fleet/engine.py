"""The fleet engine: thousands of simulated devices in one trio process, the backend, chaos, the timeline."""

from __future__ import annotations

import random
import resource
import secrets
import shlex
import signal
import socket
import subprocess
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from edgebus.client_trio import ConnectError, connect_mqtt
from edgebus.core.client import ClientOptions, Event, MessageReceived, MqttClient
from edgebus.protocol import Subscription
from edgebus.protocol.enums import MQTT_5
from edgebus_fleet.actors import Backend, Device, PublishedStream
from edgebus_fleet.audit import (
    GroupSummary,
    Ledger,
    RetainedSummary,
    WillSummary,
    acceptable_retained,
    summarize_wills,
)
from edgebus_fleet.cloud_log import LogReader, open_reader
from edgebus_fleet.profiles import Fleet
from edgebus_fleet.proxy import ChaosProxy

#: Seconds between two timeline samples.
SAMPLE_INTERVAL_S = 1.0
#: A message acknowledged this long ago and not delivered counts as "overdue" on the live display.
OVERDUE_AFTER_S = 5.0
BROKER_START_TIMEOUT_S = 15.0
#: After the last SUBACK of the retained check, how long to wait for retained messages still to come.
RETAINED_WAIT_S = 3.0
#: Retained topics per SUBSCRIBE of the retained check (keeps each packet small).
RETAINED_BATCH = 200
#: What ``chaos.overwrite_retained`` writes over a device's retained state: valid, but never sent by it.
FOREIGN_RETAINED = b'{"state": "tampered"}'

__all__ = ["BrokerUnreachable", "Engine", "RunResult", "Sample"]


class BrokerUnreachable(Exception):
    """The broker could not be reached at the start of the run."""


@dataclass(slots=True)
class Sample:
    t: float
    connected: int
    asleep: int
    sent: int
    acknowledged: int
    delivered: int
    in_flight: int
    overdue: int
    duplicates: int


@dataclass(slots=True)
class RunResult:
    fleet: Fleet
    broker: str
    run_id: str
    duration: float
    summaries: list[GroupSummary]
    samples: list[Sample]
    ledger: Ledger
    events: dict[str, int]
    peak_connected: int
    devices: int
    wall_seconds: float
    latencies: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    retained: list[RetainedSummary] = field(default_factory=list)
    wills: list[WillSummary] = field(default_factory=list)
    retained_error: str | None = None  # the retained check could not run

    @property
    def violations(self) -> list[str]:
        problems = [f"{s.profile}/{s.stream} QoS {s.qos}: {v}" for s in self.summaries for v in s.violations]
        problems += [f"{r.profile}/{r.stream} QoS {r.qos}: {v}" for r in self.retained for v in r.violations]
        problems += [f"{w.profile}: {v}" for w in self.wills for v in w.violations]
        if self.retained_error:
            problems.append(f"retained mismatch: the check could not run: {self.retained_error}")
        if self.ledger.unexpected:
            problems.append(f"{self.ledger.unexpected} delivered message(s) that were never sent")
        return problems

    @property
    def passed(self) -> bool:
        return not self.violations


class BrokerProcess:
    """A broker the engine starts (and restarts, for chaos) from a shell command."""

    def __init__(self, command: str, host: str, port: int) -> None:
        self.command = command.format(host=host, port=port)
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; we poll the port below
            shlex.split(self.command),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = trio.current_time() + BROKER_START_TIMEOUT_S
        while trio.current_time() < deadline:
            if self.process.poll() is not None:
                raise BrokerUnreachable(
                    f"broker command exited with status {self.process.returncode}: {self.command}"
                )
            if _port_open(self.host, self.port):
                return
            await trio.sleep(0.05)
        raise BrokerUnreachable(f"broker command did not listen on {self.host}:{self.port} within 15 s")

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        with trio.move_on_after(5.0):
            while process.poll() is None:  # noqa: ASYNC110 - a child's exit is only seen by polling here
                await trio.sleep(0.02)
        if process.poll() is None:
            process.kill()
            process.wait()

    async def restart(self) -> None:
        await self.stop()
        self.restarts += 1
        await self.start()


def _first(group: BaseExceptionGroup[BrokerUnreachable]) -> BrokerUnreachable:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, BrokerUnreachable)
    return error


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def raise_file_limit(needed: int) -> None:
    """Each device holds a socket (two more through the proxy): lift the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Engine:
    """Runs one fleet against one broker for a duration, then drains and audits."""

    def __init__(
        self,
        fleet: Fleet,
        host: str,
        port: int,
        duration: float,
        *,
        broker_command: str | None = None,
        on_progress: Callable[[Engine], None] | None = None,
        max_inflight: int = 20,
    ) -> None:
        self.fleet = fleet
        self.host = host
        self.port = port
        self.duration = duration
        self.broker_command = broker_command
        self.on_progress = on_progress
        self.max_inflight = max_inflight
        self.run_id = secrets.token_hex(4)
        self.ledger = Ledger()
        self.publishing = False
        self.stopped = trio.Event()
        self.final_wake = trio.Event()
        self.connected = 0
        self.asleep = 0
        self.peak_connected = 0
        self.failed_connects = 0
        self.events: dict[str, int] = {
            "disconnects": 0,
            "reboots": 0,
            "flaps": 0,
            "broker_restarts": 0,
            "bursts": 0,
            "uplink_flaps": 0,
            "uplink_mutes": 0,
            "dropped_by_proxy": 0,
            "duplicated_by_proxy": 0,
        }
        self.samples: list[Sample] = []
        # Every device PUBLISH as (topic, payload, QoS, retain) when a test asks for it.
        self.sent_log: list[tuple[str, bytes, int, bool]] | None = None
        self.started_at = 0.0
        self.phase = "starting"
        self.devices: list[Device] = []
        self.proxy: ChaosProxy | None = None
        self.fault_proxy: ChaosProxy | None = None
        self.uplink_proxy: ChaosProxy | None = None  # between the gateway and the cloud log ([log])
        self.broker_process: BrokerProcess | None = None
        self.device_target = (host, port)
        self.backend_target = (host, port)
        self.connect_limiter = trio.CapacityLimiter(fleet.connect_concurrency)
        self.connection_nursery: trio.Nursery
        self.retained: list[RetainedSummary] = []
        self.retained_error: str | None = None
        if fleet.chaos.broker_restart_interval and not broker_command:
            raise ValueError("chaos.broker_restart_interval needs the broker's start command (--broker-cmd)")

    def elapsed(self) -> float:
        return trio.current_time() - self.started_at if self.started_at else 0.0

    def state_changed(self) -> None:
        for device in self.devices:
            device.wake()

    async def run(self) -> RunResult:
        """Run the fleet; BrokerUnreachable (not wrapped in an exception group) when the broker cannot
        be reached at the start."""
        try:
            return await self._run()
        except* BrokerUnreachable as group:
            raise _first(group) from None

    async def _run(self) -> RunResult:
        fleet = self.fleet
        chaos = fleet.chaos
        wall_start = time.monotonic()
        raise_file_limit(fleet.device_count * 3 + 256)
        async with trio.open_nursery() as services:
            if self.broker_command:
                self.broker_process = BrokerProcess(self.broker_command, self.host, self.port)
                await self.broker_process.start()
            try:
                async with trio.open_nursery() as connections:
                    self.connection_nursery = connections
                    if chaos.needs_proxy:
                        self.proxy = ChaosProxy(self.host, self.port)
                        proxy_port = await services.start(self.proxy.serve)
                        self.device_target = ("127.0.0.1", proxy_port)
                    if chaos.drop_deliveries or chaos.duplicate_deliveries or chaos.drop_wills:
                        self.fault_proxy = ChaosProxy(self.host, self.port)
                        self.fault_proxy.drop_qos1_publishes = chaos.drop_deliveries
                        self.fault_proxy.duplicate_publishes = chaos.duplicate_deliveries
                        self.fault_proxy.drop_will_publishes = chaos.drop_wills
                        fault_port = await services.start(self.fault_proxy.serve)
                        self.backend_target = ("127.0.0.1", fault_port)
                    log = fleet.log
                    if log is not None and log.uplink_proxy_port:
                        target = log.uplink_target_port or log.port
                        self.uplink_proxy = ChaosProxy(log.host, target, log.uplink_proxy_port)
                        await services.start(self.uplink_proxy.serve)
                    await self._run_fleet(connections)
                    connections.cancel_scope.cancel()
            finally:
                if self.broker_process is not None:
                    with trio.CancelScope(shield=True):
                        await self.broker_process.stop()
            services.cancel_scope.cancel()
        latencies = {group: sorted(values) for group, values in self.ledger.latencies.items()}
        if self.fault_proxy is not None:
            self.events["dropped_by_proxy"] = self.fault_proxy.dropped
            self.events["duplicated_by_proxy"] = self.fault_proxy.duplicated
            self.events["wills_dropped_by_proxy"] = self.fault_proxy.dropped_wills
        return RunResult(
            fleet=fleet,
            broker=f"{self.host}:{self.port}",
            run_id=self.run_id,
            duration=self.duration,
            summaries=self.ledger.summarize(fleet.audit.qos0_max_loss, fleet.audit.max_p99_latency),
            samples=self.samples,
            ledger=self.ledger,
            events=dict(self.events, failed_connects=self.failed_connects),
            peak_connected=self.peak_connected,
            devices=len(self.devices),
            wall_seconds=time.monotonic() - wall_start,
            latencies=latencies,
            retained=self.retained,
            wills=summarize_wills(
                [(d.profile.name, d.will_ledger) for d in self.devices if d.will_ledger is not None]
            ),
            retained_error=self.retained_error,
        )

    async def _run_fleet(self, connections: trio.Nursery) -> None:
        fleet = self.fleet
        backend = Backend(self)
        seed = fleet.seed
        for group in fleet.groups:
            for index in range(group.count):
                device_id = f"{group.id_prefix}-{index:04d}"
                self.devices.append(
                    Device(self, group.profile, device_id, index, zlib.crc32(f"{seed}/{device_id}".encode()))
                )
        backend.plan(self.devices)
        if self.fault_proxy is not None:
            self.fault_proxy.will_topics = frozenset(topic.encode() for topic in backend.will_devices)
        try:
            await backend.connect()
        except ConnectError as exc:
            raise BrokerUnreachable(str(exc)) from None
        reader = None
        if fleet.log is not None:
            reader = open_reader(fleet.log)
            try:
                await reader.start()
            except Exception as exc:
                await reader.close()
                where = f"{fleet.log.kind} at {fleet.log.host}:{fleet.log.port}"
                raise BrokerUnreachable(f"cloud log {where}: {exc}") from None
        self.started_at = trio.current_time()
        self.publishing = True
        self.phase = "running"
        try:
            await self._run_actors(backend, reader)
        finally:
            if reader is not None:
                with trio.CancelScope(shield=True):
                    await reader.close()
        self.phase = "checking retained"
        await self._check_retained()
        self._sample()

    async def _run_actors(self, backend: Backend, reader: LogReader | None) -> None:
        fleet = self.fleet
        reading = trio.CancelScope()  # the log reader reads forever: cancelled once the run has drained

        async def read_log(reader: LogReader) -> None:
            with reading:
                await reader.run(backend.on_log_message)

        async with trio.open_nursery() as actors:
            actors.start_soon(backend.run)
            if reader is not None:
                actors.start_soon(read_log, reader)
            count = len(self.devices)
            for n, device in enumerate(self.devices):
                actors.start_soon(device.run, self.started_at + fleet.ramp_up * n / max(1, count))
            async with trio.open_nursery() as helpers:
                helpers.start_soon(self._sampler)
                helpers.start_soon(self._chaos)
                await trio.sleep_until(self.started_at + self.duration)
                # Stop publishing; wake every sleeping device to collect its queued commands; drain.
                self.publishing = False
                self.phase = "draining"
                for proxy in (self.proxy, self.uplink_proxy):
                    if proxy is not None:
                        proxy.down_until = 0.0
                self.final_wake.set()
                self.state_changed()
                await self._drain(backend)
                self.phase = "stopping"
                self.stopped.set()
                self.state_changed()
                helpers.cancel_scope.cancel()
                reading.cancel()

    async def _check_retained(self) -> None:
        """Read every retained state topic as a new subscriber would, now that every device is gone, and
        compare it with the last state its device had acknowledged: the broker must keep the last
        retained message of a topic and send it on subscribe [MQTT-3.3.1-5] [MQTT-3.3.1-6]."""
        targets: dict[str, tuple[Device, PublishedStream]] = {
            stream.topic: (device, stream)
            for device in self.devices
            for stream in device.streams
            if stream.payloads is not None
        }
        if not targets:
            return
        received: dict[str, bytes] = {}
        complete = trio.Event()

        def on_event(event: Event) -> None:
            if isinstance(event, MessageReceived) and event.publish.retain and event.publish.topic in targets:
                received[event.publish.topic] = event.publish.payload
                if len(received) == len(targets):
                    complete.set()

        client = MqttClient(
            ClientOptions(
                client_id=f"fleet-audit-{self.run_id}", protocol_level=MQTT_5, clean_start=True, keep_alive=30
            )
        )
        topics = sorted(targets)
        try:
            connection = await connect_mqtt(
                self.connection_nursery, self.host, self.port, client, on_event=on_event, connect_timeout=10.0
            )
            try:
                for topic in topics[: self.fleet.chaos.overwrite_retained]:
                    # Injected fault: another client replaces the state [MQTT-3.3.1-5]; the check must see it.
                    await connection.publish_and_wait(topic, FOREIGN_RETAINED, qos=1, retain=True)
                for start in range(0, len(topics), RETAINED_BATCH):
                    batch = topics[start : start + RETAINED_BATCH]
                    await connection.subscribe([Subscription(topic, 1) for topic in batch])
                with trio.move_on_after(RETAINED_WAIT_S):
                    await complete.wait()
            finally:
                connection.disconnect()
                with trio.move_on_after(1.0):
                    await connection.closed.wait()
        except (ConnectError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            self.retained_error = f"{type(error).__name__}: {error}"
            return
        by_group: dict[tuple[str, str], RetainedSummary] = {}
        for topic in topics:
            device, stream = targets[topic]
            spec = stream.spec
            summary = by_group.setdefault(
                (device.profile.name, spec.name), RetainedSummary(device.profile.name, spec.name, spec.qos)
            )
            assert stream.payloads is not None
            expected = acceptable_retained(stream.ledger, stream.payloads)
            if expected is None:
                summary.unchecked += 1
                continue
            summary.checked += 1
            actual = received.get(topic)
            if actual in expected:
                summary.matched += 1
                continue
            if actual is None:
                summary.missing += 1
            else:
                summary.mismatched += 1
            if len(summary.examples) < 3:
                summary.examples.append(f"{topic}: {actual!r}" if actual is not None else f"{topic}: none")
        self.retained = list(by_group.values())

    async def _drain(self, backend: Backend) -> None:
        """Wait until every message has settled (acknowledged and delivered), at most ``fleet.drain`` s,
        and at least until every awake device is connected again or the drain time is up."""
        deadline = trio.current_time() + self.fleet.drain
        while trio.current_time() < deadline:
            unsettled = sum(d.client.unacknowledged for d in self.devices) + backend.client.unacknowledged
            offline = sum(1 for d in self.devices if not d.online)
            if not unsettled and not offline and not self.ledger.in_flight():
                break
            await trio.sleep(0.1)
        # A last moment for deliveries already on their way.
        await trio.sleep(min(0.3, self.fleet.drain))

    def _sample(self) -> None:
        ledger = self.ledger
        now = trio.current_time()
        self.peak_connected = max(self.peak_connected, self.connected)
        self.samples.append(
            Sample(
                t=round(now - self.started_at, 3),
                connected=self.connected,
                asleep=self.asleep,
                sent=ledger.sent,
                acknowledged=ledger.acknowledged,
                delivered=ledger.delivered,
                in_flight=ledger.in_flight(),
                overdue=ledger.overdue(now, OVERDUE_AFTER_S),
                duplicates=ledger.duplicates,
            )
        )

    async def _sampler(self) -> None:
        while True:
            self._sample()
            if self.on_progress is not None:
                self.on_progress(self)
            await trio.sleep(SAMPLE_INTERVAL_S)

    async def _chaos(self) -> None:
        chaos = self.fleet.chaos
        if not chaos.active:
            return
        rng = random.Random(self.fleet.seed + 99)
        start = trio.current_time()
        next_at: dict[str, float] = {}

        def schedule(kind: str, per_minute: float = 0.0, interval: float = 0.0) -> None:
            if per_minute:
                next_at[kind] = trio.current_time() + rng.expovariate(per_minute / 60.0)
            elif interval:
                next_at[kind] = max(trio.current_time(), start + self.fleet.ramp_up) + interval

        schedule("disconnect", chaos.disconnects_per_minute)
        schedule("reboot", chaos.reboots_per_minute)
        schedule("flap", interval=chaos.flap_interval)
        schedule("restart", interval=chaos.broker_restart_interval)
        schedule("burst", interval=chaos.burst_interval)
        schedule("uplink_flap", interval=chaos.uplink_flap_interval)
        schedule("uplink_mute", interval=chaos.uplink_mute_interval)
        while self.publishing and next_at:
            kind, when = min(next_at.items(), key=lambda item: item[1])
            await trio.sleep_until(when)
            if not self.publishing:
                return
            online = [
                d for d in self.devices if d.connection is not None and not d.connection.closed.is_set()
            ]
            if kind == "disconnect":
                if online:
                    rng.choice(online).abort("chaos: disconnect")
                    self.events["disconnects"] += 1
                schedule(kind, chaos.disconnects_per_minute)
            elif kind == "reboot":
                if online:
                    device = rng.choice(online)
                    device.retry_at = trio.current_time() + chaos.reboot_delay
                    device.abort("chaos: reboot")
                    self.events["reboots"] += 1
                schedule(kind, chaos.reboots_per_minute)
            elif kind == "flap":
                if self.proxy is not None:
                    for device in online:
                        device.note_cut()  # the proxy closes both sides: the broker reads EOF at once
                    self.proxy.flap(chaos.flap_duration)
                    self.events["flaps"] += 1
                schedule(kind, interval=chaos.flap_interval)
            elif kind == "restart":
                if self.broker_process is not None:
                    await self.broker_process.restart()
                    self.events["broker_restarts"] += 1
                schedule(kind, interval=chaos.broker_restart_interval)
            elif kind == "uplink_flap":
                if self.uplink_proxy is not None:
                    self.uplink_proxy.flap(chaos.uplink_flap_duration)
                    self.events["uplink_flaps"] += 1
                schedule(kind, interval=chaos.uplink_flap_interval)
            elif kind == "uplink_mute":
                if self.uplink_proxy is not None:
                    self.uplink_proxy.mute(chaos.uplink_mute_duration)
                    self.events["uplink_mutes"] += 1
                schedule(kind, interval=chaos.uplink_mute_interval)
            elif kind == "burst":
                chosen = [d for d in online if rng.random() < chaos.burst_fraction]
                for device in chosen:
                    device.publish_burst(chaos.burst_size)
                self.events["bursts"] += 1
                schedule(kind, interval=chaos.burst_interval)


def result_to_dict(result: RunResult) -> dict[str, Any]:
    """The run as report.json holds it."""
    ledger = result.ledger
    return {
        "fleet": result.fleet.name,
        "fleet_file": result.fleet.source,
        "broker": result.broker,
        "run_id": result.run_id,
        "duration_s": result.duration,
        "wall_s": round(result.wall_seconds, 3),
        "devices": result.devices,
        "peak_connected": result.peak_connected,
        "passed": result.passed,
        "violations": result.violations,
        "totals": {
            "sent": ledger.sent,
            "acknowledged": ledger.acknowledged,
            "delivered": ledger.delivered,
            "duplicates": ledger.duplicates,
            "unexpected": ledger.unexpected,
            "stale": ledger.stale,
            "retained_replays": ledger.retained_replays,
            "wills": ledger.wills,
            "refused": ledger.refused,
        },
        "events": result.events,
        "groups": [summary.as_dict() for summary in result.summaries],
        "retained": [summary.as_dict() for summary in result.retained],
        "retained_error": result.retained_error,
        "wills": [summary.as_dict() for summary in result.wills],
        "timeline": [
            {
                "t": s.t,
                "connected": s.connected,
                "asleep": s.asleep,
                "sent": s.sent,
                "acknowledged": s.acknowledged,
                "delivered": s.delivered,
                "in_flight": s.in_flight,
                "overdue": s.overdue,
                "duplicates": s.duplicates,
            }
            for s in result.samples
        ],
    }

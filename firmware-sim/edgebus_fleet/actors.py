"""The simulated devices and the backend (the cloud consumer that audits and sends commands)."""

from __future__ import annotations

import heapq
import random
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from edgebus.client_trio import ConnectError, MqttConnection, connect_mqtt
from edgebus.core.client import (
    ClientOptions,
    Event,
    MessageReceived,
    MqttClient,
    PublishAcknowledged,
)
from edgebus.protocol import Subscription, Will
from edgebus.protocol.enums import MQTT_5
from edgebus_fleet.audit import Stream, WillLedger
from edgebus_fleet.payload import ReadingGenerator, decode_payload, encode_payload
from edgebus_fleet.profiles import DeviceProfile, StreamSpec

if TYPE_CHECKING:
    from edgebus_fleet.engine import Engine

CONNECT_TIMEOUT_S = 10.0
#: How long a device about to sleep waits for its QoS 1/2 messages to be acknowledged.
SLEEP_FLUSH_S = 2.0

__all__ = ["Backend", "Device"]


def jittered(rng: random.Random, interval: float, jitter: float) -> float:
    return interval * (1.0 + jitter * (2.0 * rng.random() - 1.0))


def expand(template: str, device_id: str, index: int, profile: str) -> str:
    return template.format(device_id=device_id, index=index, profile=profile)


class PublishedStream:
    """One periodic stream of one device: its topic, schedule, generator and audit ledger entry."""

    __slots__ = ("due", "generator", "ledger", "payloads", "spec", "topic")

    def __init__(self, spec: StreamSpec, topic: str, ledger: Stream, rng: random.Random) -> None:
        self.spec = spec
        self.topic = topic
        self.ledger = ledger
        self.generator = ReadingGenerator(spec, rng)
        self.due = 0.0
        # A retained QoS 1/2 state: every payload by seq, for the retained check after the run. (QoS 0
        # may be lost, so the broker may rightly hold an older state: not checked.)
        self.payloads: dict[int, bytes] | None = {} if spec.retain and spec.qos >= 1 else None


class Device:
    """A simulated device: its firmware loop (publish, sleep, reconnect with backoff) over a real client."""

    def __init__(self, engine: Engine, profile: DeviceProfile, device_id: str, index: int, seed: int) -> None:
        self.engine = engine
        self.profile = profile
        self.device_id = device_id
        self.rng = random.Random(seed)
        self.connection: MqttConnection | None = None
        self.online = False
        self.asleep = False
        self.woke_from_sleep = False
        self.wake_time = 0.0  # wall clock of the current awake period's start
        self.retry_at = 0.0
        self.backoff = profile.reconnect.initial_delay
        self.kick = trio.Event()  # chaos or the engine wants the loop to look again
        self.reports: list[tuple[float, int, int]] = []  # (due, command seq, command stream seq) heap
        self.connects = 0
        self.failed_connects = 0
        self.will_ledger = WillLedger() if profile.will is not None else None
        self.loss_accounted = False  # this connection's end is already in the will ledger
        self.disconnecting = False  # DISCONNECT queued on this connection: the broker drops the will
        level = profile.protocol_level
        names = {"device_id": device_id, "index": index, "profile": profile.name}
        will = None
        if profile.will is not None:
            will = Will(
                profile.will.topic.format(**names),
                profile.will.payload.encode(),
                profile.will.qos,
                profile.will.retain,
            )
        self.client = MqttClient(
            ClientOptions(
                client_id=profile.client_id.format(**names),
                protocol_level=level,
                clean_start=profile.clean_start,
                keep_alive=profile.keep_alive,
                session_expiry_interval=profile.session_expiry if level == MQTT_5 else 0,
                will=will,
                max_inflight=engine.max_inflight,
            )
        )
        ledger = engine.ledger
        self.streams = [
            PublishedStream(
                spec,
                topic := spec.topic.format(**names),
                ledger.stream(device_id, topic, profile.name, spec.name, spec.qos),
                self.rng,
            )
            for spec in profile.publish
        ]
        self.command_topic = ""
        self.report_stream: PublishedStream | None = None
        commands = profile.commands
        if commands is not None:
            self.command_topic = commands.topic.format(**names)
            report_topic = commands.report_topic.format(**names)
            spec = StreamSpec("command-report", report_topic, commands.report_qos, interval=commands.interval)
            self.report_stream = PublishedStream(
                spec,
                report_topic,
                ledger.stream(device_id, report_topic, profile.name, "command-report", commands.report_qos),
                self.rng,
            )

    # --- the firmware loop ----------------------------------------------------------------------------

    async def run(self, start_at: float) -> None:
        engine = self.engine
        await trio.sleep_until(start_at)
        now = trio.current_time()
        self._start_awake_period(now)
        sleep_at = self._next_sleep(now)
        while not engine.stopped.is_set():
            now = trio.current_time()
            if sleep_at is not None and now >= sleep_at and not engine.final_wake.is_set():
                await self._sleep()
                now = trio.current_time()
                self._start_awake_period(now)
                sleep_at = self._next_sleep(now)
                continue
            connection = self.connection
            if connection is not None and connection.closed.is_set():
                self._lost()
                connection = None
            if connection is None and now >= self.retry_at and not engine.stopped.is_set():
                await self._connect()
                continue
            if engine.publishing:
                self._publish_due(now)
            self._report_due(now)
            deadline = min(
                min((s.due for s in self.streams), default=float("inf"))
                if engine.publishing
                else float("inf"),
                self.reports[0][0] if self.reports else float("inf"),
                sleep_at if sleep_at is not None and not engine.final_wake.is_set() else float("inf"),
                self.retry_at if self.connection is None else float("inf"),
            )
            self.kick = trio.Event()
            with trio.move_on_at(deadline):
                await self.kick.wait()
        if self.connection is not None and not self.connection.closed.is_set():
            await self._disconnect(self.connection)
            self._lost()

    async def _disconnect(self, connection: MqttConnection) -> None:
        """A clean DISCONNECT (no will); if the close does not follow in time, the will may still come."""
        self.disconnecting = True
        connection.disconnect()
        with trio.move_on_after(1.0):
            await connection.closed.wait()
        if not connection.closed.is_set():
            self._account_loss(required=False)

    def abort(self, reason: str) -> None:
        """Drop the connection without DISCONNECT (chaos: a crash, a cut cable)."""
        connection = self.connection
        if connection is None or connection.closed.is_set():
            return
        self.note_cut()
        connection.abort(reason)

    def note_cut(self) -> None:
        """The accepted connection is about to be closed without DISCONNECT: the broker reads EOF at once
        and must publish the will, unless a DISCONNECT was already on its way."""
        connection = self.connection
        if connection is not None and not connection.closed.is_set():
            self._account_loss(required=not self.disconnecting)

    def _account_loss(self, required: bool) -> None:
        if self.will_ledger is None or self.loss_accounted:
            return
        self.loss_accounted = True
        if required:
            self.will_ledger.required += 1
        else:
            self.will_ledger.optional += 1

    def wake(self) -> None:
        """Make the firmware loop look again now (connection closed, chaos, the engine's phase)."""
        self.kick.set()

    def _start_awake_period(self, now: float) -> None:
        self.wake_time = time.time()
        for stream in self.streams:
            # Spread the first message over one interval, so a fleet does not publish in lockstep.
            stream.due = now + self.rng.random() * stream.spec.interval

    def _next_sleep(self, now: float) -> float | None:
        sleep = self.profile.sleep
        return None if sleep is None else now + jittered(self.rng, sleep.awake, sleep.jitter)

    async def _connect(self) -> None:
        engine = self.engine
        host, port = engine.device_target
        try:
            async with engine.connect_limiter:
                self.connection = await connect_mqtt(
                    engine.connection_nursery,
                    host,
                    port,
                    self.client,
                    on_event=self._on_event,
                    on_close=self.wake,
                    connect_timeout=CONNECT_TIMEOUT_S,
                )
        except ConnectError:
            self.failed_connects += 1
            engine.failed_connects += 1
            reconnect = self.profile.reconnect
            self.retry_at = trio.current_time() + self.rng.uniform(0.5, 1.0) * self.backoff
            self.backoff = min(reconnect.max_delay, max(self.backoff, 0.05) * reconnect.multiplier)
            return
        self.connects += 1
        self.online = True
        self.loss_accounted = False
        self.disconnecting = False
        engine.connected += 1
        self.backoff = self.profile.reconnect.initial_delay
        connack = self.connection.connack
        if self.command_topic and (connack is None or not connack.session_present):
            qos = self.profile.commands.qos if self.profile.commands is not None else 1
            self.client.subscribe([Subscription(self.command_topic, qos)])
            self.connection.wake()
        if engine.publishing:
            for stream in self.streams:
                if stream.spec.on_connect:
                    self._publish(stream, trio.current_time())

    def _lost(self) -> None:
        if self.connection is not None and not self.disconnecting:
            # Not a loss we caused and know about (a broker restart, a keep-alive timeout): the broker
            # may publish the will or may not (it may be the one that went away).
            self._account_loss(required=False)
        if self.online:
            self.online = False
            self.engine.connected -= 1
        self.connection = None
        self.retry_at = max(self.retry_at, trio.current_time() + self.rng.uniform(0.5, 1.0) * self.backoff)

    async def _sleep(self) -> None:
        """Duty cycle: flush what is in flight, DISCONNECT (normal: no will), stay away, wake up."""
        sleep = self.profile.sleep
        assert sleep is not None
        connection = self.connection
        if connection is not None and not connection.closed.is_set():
            with trio.move_on_after(SLEEP_FLUSH_S):
                while self.client.unacknowledged and not connection.closed.is_set():  # noqa: ASYNC110
                    await trio.sleep(0.05)  # acknowledgements change a count; polling it is simplest
            await self._disconnect(connection)
        if self.connection is not None:
            self._lost()
        self.asleep = True
        self.engine.asleep += 1
        with trio.move_on_after(jittered(self.rng, sleep.asleep, sleep.jitter)):
            await self.engine.final_wake.wait()
        self.asleep = False
        self.engine.asleep -= 1
        self.woke_from_sleep = True
        self.retry_at = 0.0

    def publish_burst(self, count: int) -> None:
        if not self.streams:
            return
        now = trio.current_time()
        for _ in range(count):
            self._publish(self.streams[0], now)

    def _publish_due(self, now: float) -> None:
        for stream in self.streams:
            if now >= stream.due:
                self._publish(stream, now)
                stream.due = max(
                    now, stream.due + jittered(self.rng, stream.spec.interval, stream.spec.jitter)
                )

    def _publish(self, stream: PublishedStream, now: float, extra: dict[str, Any] | None = None) -> None:
        spec = stream.spec
        if spec.qos == 0 and not self.client.is_connected:
            return  # at most once: a QoS 0 reading taken while offline is not kept
        ledger = self.engine.ledger
        seq = stream.ledger.next_seq()
        sent_at = time.time()
        values: dict[str, Any] = {"dev": self.device_id, "seq": seq, "ts": sent_at, "run": self.engine.run_id}
        values.update(stream.generator.reading())
        if extra:
            values.update(extra)
        payload = encode_payload(spec.encoding, values)
        if not self.client.publish(stream.topic, payload, spec.qos, spec.retain, token=(stream.ledger, seq)):
            return
        ledger.record_sent(stream.ledger, sent_at)
        if stream.payloads is not None:
            stream.payloads[seq] = payload
        if spec.qos == 0:
            ledger.record_acked(stream.ledger, seq, now)
        if self.engine.sent_log is not None:
            self.engine.sent_log.append((stream.topic, payload, spec.qos, spec.retain))
        if self.connection is not None:
            self.connection.wake()

    def _report_due(self, now: float) -> None:
        while self.reports and self.reports[0][0] <= now:
            _, command_seq, _ = heapq.heappop(self.reports)
            if self.report_stream is not None:
                self._publish(self.report_stream, now, {"command": command_seq})

    def _on_event(self, event: Event) -> None:
        engine = self.engine
        if isinstance(event, PublishAcknowledged):
            token = event.token
            if isinstance(token, tuple):
                engine.ledger.record_acked(token[0], token[1], trio.current_time(), event.success)
        elif isinstance(event, MessageReceived):
            publish = event.publish
            if publish.topic != self.command_topic:
                return
            values = decode_payload(publish.payload)
            if values is None or values.get("run") != engine.run_id:
                engine.ledger.stale += 1
                return
            try:
                seq = int(values["seq"])
                sent_ts = float(values["ts"])
                sender = str(values["dev"])
            except (KeyError, TypeError, ValueError):
                engine.ledger.unexpected += 1
                return
            stream = engine.ledger.record_delivered(sender, publish.topic, seq, sent_ts, time.time())
            if stream is None:
                return
            if self.woke_from_sleep and sent_ts < self.wake_time:
                stream.after_wake += 1
            commands = self.profile.commands
            delay = commands.execution_time if commands is not None else 0.0
            heapq.heappush(self.reports, (trio.current_time() + delay, seq, 0))
            self.kick.set()


class Backend:
    """The cloud side: one client subscribed to every device stream, sending commands and auditing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        settings = engine.fleet.backend
        self.client_id = f"{settings.client_id}-{engine.run_id}"
        self.client = MqttClient(
            ClientOptions(
                client_id=self.client_id,
                protocol_level=settings.protocol_level,
                clean_start=True,
                keep_alive=30,
                session_expiry_interval=settings.session_expiry if settings.protocol_level == MQTT_5 else 0,
                max_inflight=engine.max_inflight,
            )
        )
        self.connection: MqttConnection | None = None
        self.filters: list[str] = []
        self.will_devices: dict[str, Device] = {}  # will topic -> its device
        self.commands: list[tuple[float, int, str, Stream, int]] = []  # (due, n, topic, stream, qos) heap
        self.connected_once = False
        self.reconnects = 0

    def plan(self, devices: list[Device]) -> None:
        """Subscription filters from every profile's topics ({device_id} -> +), and the command schedule."""
        seen: dict[str, None] = {}
        for device in devices:
            profile = device.profile
            for spec in profile.publish:
                seen[_filter(spec.topic)] = None
            if profile.commands is not None:
                seen[_filter(profile.commands.report_topic)] = None
            if profile.will is not None:
                seen[_filter(profile.will.topic)] = None
                if device.client.options.will is not None:
                    self.will_devices[device.client.options.will.topic] = device
        if self.engine.fleet.log is not None:
            # Device messages are read from the cloud log; on the broker, only the wills.
            seen = {_filter(device.profile.will.topic): None for device in devices if device.profile.will}
        self.filters = list(seen)
        ledger = self.engine.ledger
        now = trio.current_time()
        for n, device in enumerate(devices):
            commands = device.profile.commands
            if commands is None:
                continue
            stream = ledger.stream(
                self.client_id, device.command_topic, device.profile.name, "command", commands.qos
            )
            due = now + device.rng.random() * commands.interval + self.engine.fleet.ramp_up
            self.commands.append((due, n, device.command_topic, stream, commands.qos))
        heapq.heapify(self.commands)
        self._intervals = {
            d.command_topic: d.profile.commands for d in devices if d.profile.commands is not None
        }

    async def connect(self) -> None:
        """Connect and subscribe; ConnectError when the broker cannot be reached."""
        engine = self.engine
        host, port = engine.backend_target
        self.connection = await connect_mqtt(
            engine.connection_nursery,
            host,
            port,
            self.client,
            on_event=self._on_event,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
        if not self.connected_once:
            # The first connection starts a fresh session; reconnects resume it, so messages the broker
            # queued for the backend while it was away are delivered.
            self.client.options = replace(self.client.options, clean_start=False)
            self.connected_once = True
        connack = self.connection.connack
        if connack is None or not connack.session_present:
            qos = engine.fleet.backend.qos
            no_local = self.client.protocol_level == MQTT_5
            await self.connection.subscribe([Subscription(f, qos, no_local=no_local) for f in self.filters])

    async def run(self) -> None:
        """Keep the backend connected and send the commands as they fall due, until the engine stops."""
        engine = self.engine
        rng = random.Random(engine.fleet.seed + 7)
        backoff = 0.2
        while not engine.stopped.is_set():
            if self.connection is None or self.connection.closed.is_set():
                try:
                    await self.connect()
                    self.reconnects += 1
                    backoff = 0.2
                except ConnectError:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            now = trio.current_time()
            while engine.publishing and self.commands and self.commands[0][0] <= now:
                due, n, topic, stream, qos = heapq.heappop(self.commands)
                self._send_command(topic, stream, qos)
                settings = self._intervals[topic]
                heapq.heappush(
                    self.commands,
                    (due + jittered(rng, settings.interval, settings.jitter), n, topic, stream, qos),
                )
            deadline = self.commands[0][0] if self.commands and engine.publishing else now + 0.5
            with trio.move_on_at(min(deadline, now + 0.5)):
                assert self.connection is not None
                await self.connection.closed.wait()
        if self.connection is not None and not self.connection.closed.is_set():
            self.connection.disconnect()
            with trio.move_on_after(1.0):
                await self.connection.closed.wait()

    def _send_command(self, topic: str, stream: Stream, qos: int) -> None:
        seq = stream.next_seq()
        sent_at = time.time()
        values = {
            "dev": self.client_id,
            "seq": seq,
            "ts": sent_at,
            "run": self.engine.run_id,
            "action": "toggle",
        }
        if self.client.publish(topic, encode_payload("cbor", values), qos, token=(stream, seq)):
            self.engine.ledger.record_sent(stream, sent_at)
            if qos == 0:
                self.engine.ledger.record_acked(stream, seq, trio.current_time())
            if self.connection is not None:
                self.connection.wake()

    def _on_event(self, event: Event) -> None:
        ledger = self.engine.ledger
        if isinstance(event, PublishAcknowledged):
            token = event.token
            if isinstance(token, tuple):
                ledger.record_acked(token[0], token[1], trio.current_time(), event.success)
            return
        if not isinstance(event, MessageReceived):
            return
        publish = event.publish
        if publish.retain:
            # Sent because we subscribed, not because a device published now [MQTT-3.3.1-8]: a replay.
            ledger.retained_replays += 1
            return
        device = self.will_devices.get(publish.topic)
        if device is not None and device.client.options.will is not None:
            if publish.payload == device.client.options.will.payload and device.will_ledger is not None:
                ledger.wills += 1
                device.will_ledger.seen += 1
            else:
                ledger.unexpected += 1
            return
        self._record_delivery(publish.topic, publish.payload)

    def on_log_message(self, topic: str, payload: bytes) -> None:
        """An entry of the cloud log ([log]): a device message as the bridge forwarded it."""
        if topic in self.will_devices or topic in self._intervals:
            return  # wills are checked on the broker; commands (ours) go down, not up
        self._record_delivery(topic, payload)

    def _record_delivery(self, topic: str, payload: bytes) -> None:
        ledger = self.engine.ledger
        values = decode_payload(payload)
        if values is None:
            ledger.unexpected += 1
            return
        if values.get("run") != self.engine.run_id:
            ledger.stale += 1
            return
        try:
            seq = int(values["seq"])
            sent_ts = float(values["ts"])
            sender = str(values["dev"])
        except (KeyError, TypeError, ValueError):
            ledger.unexpected += 1
            return
        ledger.record_delivered(sender, topic, seq, sent_ts, time.time())


def _filter(template: str) -> str:
    """A subscription filter matching a topic template's expansions: each templated level becomes +."""
    return "/".join("+" if "{" in level else level for level in template.split("/"))

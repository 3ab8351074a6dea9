"""Outage cycles against the real engines: the uplink cut mid-stream by a proxy, the upstream killed and
restarted, the gateway SIGKILLed while forwarding and restarted; several cycles each. Every time, the log
must hold every acknowledged device message exactly once, in per-topic order (tests/bridge/audit.py).

The bridge's promise (issue 6) stacked on MQTT's: a device's PUBACK means the message is the broker's
[MQTT-4.3.2-2]; the broker then owes it to the log once.
"""

from __future__ import annotations

import functools
import random
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import paho.mqtt.client as paho_mqtt
import pytest
import trio
from edgebus_fleet.proxy import ChaosProxy
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from edgebus.bridge.rules import subject_to_topic
from edgebus.bridge.runner import Bridge
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.audit import DeviceLoad, audit, wait_for_log
from tests.bridge.mosquitto_upstream import Upstream, open_upstreams
from tests.bridge.nats_upstream import NatsServer, open_nats_admin, running_nats_server
from tests.clients import PEER
from tests.conftest import StartBroker
from tests.processes import free_port, start_edgebus_process

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's bridge")

STREAM = "LOG"
GATEWAY = "gw-test"
#: Shorter than every outage below: de-duplication must come from resume(), not from the window.
DUPLICATE_WINDOW_S = 1.0
RATE = 300.0  # device messages per second
CYCLES = 3
OUTAGE_S = DUPLICATE_WINDOW_S * 1.5
LOG_TIMEOUT_S = 40.0
#: A link that notices trouble in a second or two and comes back fast (the tests have many cycles).
FAST_LINK: dict[str, object] = {
    "keep_alive": 1.0,
    "ack_timeout": 3.0,
    "connect_timeout": 1.0,
    "backoff_initial": 0.05,
    "backoff_max": 0.5,
    "window": 200,
}
FAST_LINK_TOML = "".join(f"{key} = {value}\n" for key, value in FAST_LINK.items())


# --- JetStream as the log ------------------------------------------------------------------------------


@dataclass
class JetStreamLog:
    server: NatsServer
    prefix: str = f"gw.{GATEWAY}."

    def bridge(self, port: int, **overrides: object) -> BridgeConfig:
        values: dict[str, object] = {
            "name": "cloud",
            "kind": "nats-jetstream",
            "addresses": (ListenAddress("127.0.0.1", port),),
            "stream": STREAM,
            "topics": (BridgeTopic("sensors/#", qos=1, remote_prefix=self.prefix),),
            **FAST_LINK,
        }
        values.update(overrides)
        return BridgeConfig(**values)  # type: ignore[arg-type]

    def bridge_toml(self, port: int) -> str:
        return (
            f'[[bridge]]\nname = "cloud"\nkind = "nats-jetstream"\naddresses = ["127.0.0.1:{port}"]\n'
            f'stream = "{STREAM}"\n{FAST_LINK_TOML}'
            f'topics = [{{ pattern = "sensors/#", qos = 1, remote_prefix = "{self.prefix}" }}]\n'
        )

    async def count(self) -> int:
        async with open_nats_admin(self.server.url) as admin:
            return await admin.message_count(STREAM)

    async def read(self) -> list[tuple[str, int]]:
        async with open_nats_admin(self.server.url) as admin:
            stored = await admin.messages(STREAM)
        found = []
        for message in stored:
            assert message.subject.startswith(self.prefix), message.subject
            assert message.headers["Nats-Msg-Id"].startswith(f"{GATEWAY}:")
            found.append((subject_to_topic(message.subject[len(self.prefix) :]), int(message.data)))
        return found

    async def restart(self) -> None:
        self.server.kill()  # SIGKILL: JetStream keeps what it acknowledged (written before the ack)
        await trio.sleep(0.5)
        await self.server.start()


@asynccontextmanager
async def jetstream_log(tmp_path: Path) -> AsyncIterator[JetStreamLog]:
    async with running_nats_server(tmp_path / "nats") as server:
        async with open_nats_admin(server.url) as admin:
            await admin.create_stream(STREAM, ["gw.>"], duplicate_window_s=DUPLICATE_WINDOW_S)
        yield JetStreamLog(server)


# --- Mosquitto as the log: a persistent QoS 2 subscriber records what the upstream delivers ---------------


class MosquittoLog:
    """The upstream is a Mosquitto (persistence on); the "log" is what its persistent QoS 2 subscriber, a
    paho client that reconnects on its own, receives."""

    prefix = f"gw/{GATEWAY}/"

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.server = upstream  # .port, as JetStreamLog.server
        self.received: list[tuple[str, bytes]] = []  # appended by paho's thread; read by the test
        self.connected = threading.Event()
        client = paho_mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="cloud-log", protocol=paho_mqtt.MQTTv5
        )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # paho's stubs say int; it sleeps floats
        self.client = client

    def _on_connect(self, client: paho_mqtt.Client, _u: object, _f: object, code: object, _p: object) -> None:
        client.subscribe(self.prefix + "#", qos=2)
        self.connected.set()

    def _on_message(self, _c: paho_mqtt.Client, _u: object, message: paho_mqtt.MQTTMessage) -> None:
        self.received.append((message.topic, bytes(message.payload)))

    async def open(self) -> None:
        properties = PahoProperties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.upstream.port, clean_start=False, properties=properties)
        self.client.loop_start()
        with trio.fail_after(10):
            while not self.connected.is_set():  # noqa: ASYNC110 - a threading.Event set by paho's thread
                await trio.sleep(0.02)
        await trio.sleep(0.2)  # the SUBACK

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def bridge(self, port: int, **overrides: object) -> BridgeConfig:
        values: dict[str, object] = {
            "name": "cloud",
            "kind": "mqtt",
            "addresses": (ListenAddress("127.0.0.1", port),),
            "topics": (BridgeTopic("sensors/#", qos=2, remote_prefix=self.prefix),),
            **FAST_LINK,
        }
        values.update(overrides)
        return BridgeConfig(**values)  # type: ignore[arg-type]

    def bridge_toml(self, port: int) -> str:
        return (
            f'[[bridge]]\nname = "cloud"\nkind = "mqtt"\naddresses = ["127.0.0.1:{port}"]\n{FAST_LINK_TOML}'
            f'topics = [{{ pattern = "sensors/#", qos = 2, remote_prefix = "{self.prefix}" }}]\n'
        )

    async def count(self) -> int:
        return len(self.received)

    async def read(self) -> list[tuple[str, int]]:
        found = []
        for topic, payload in list(self.received):
            assert topic.startswith(self.prefix), topic
            found.append((topic[len(self.prefix) :], int(payload)))
        return found

    async def restart(self) -> None:
        # Mosquitto writes its persistence file only when it stops (or on autosave): SIGKILLed, it would
        # lose messages it had itself acknowledged, which no bridge can bring back. So: SIGTERM, restart.
        await self.upstream.restart()


@asynccontextmanager
async def mosquitto_log(tmp_path: Path) -> AsyncIterator[MosquittoLog]:
    async with open_upstreams(tmp_path) as start_upstream:
        upstream = await start_upstream()
        log = MosquittoLog(upstream)
        await log.open()
        try:
            yield log
        finally:
            log.close()


# --- the scenarios ---------------------------------------------------------------------------------------

Log = JetStreamLog | MosquittoLog
ENGINES = ["jetstream", "mosquitto"]


def open_log(engine: str, tmp_path: Path) -> AbstractAsyncContextManager[Log]:
    return jetstream_log(tmp_path) if engine == "jetstream" else mosquitto_log(tmp_path)


async def _run_load(address: tuple[str, int], chaos: Callable[[], Awaitable[None]], load: DeviceLoad) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, *address, RATE, stop)
        await chaos()
        stop.set()


async def _check(log: Log, load: DeviceLoad) -> None:
    found = await wait_for_log(log.read, load, LOG_TIMEOUT_S, log.count)
    verdict = audit(load, found)
    print(
        f"\naudit: {load.acked_count} acknowledged, {verdict.total} in the log, lost {len(verdict.lost)}, "
        f"duplicated {len(verdict.duplicated)}, reordered {len(verdict.reordered)}, "
        f"unacknowledged but logged {verdict.total - load.acked_count}"
    )
    assert verdict.ok, verdict
    assert load.acked_count >= 300, "too little load to mean anything"


async def _cycles(fault: Callable[[], Awaitable[None]]) -> None:
    """CYCLES times: forward for a while, then the fault, then the outage it causes."""
    for _ in range(CYCLES):
        await trio.sleep(random.uniform(0.6, 1.2))  # up, forwarding
        await fault()
        await trio.sleep(OUTAGE_S)
    await trio.sleep(0.5)


async def _through_proxy(
    engine: str,
    start_broker: StartBroker,
    tmp_path: Path,
    nursery: trio.Nursery,
    fault: Callable[[ChaosProxy], None],
) -> Bridge:
    """The uplink through a ChaosProxy that ``fault`` breaks CYCLES times under load; audited."""
    async with open_log(engine, tmp_path) as log:
        proxy = ChaosProxy("127.0.0.1", log.server.port)
        port = await nursery.start(proxy.serve)
        broker = await start_broker(bridges=(log.bridge(port),))
        load = DeviceLoad()

        async def break_proxy() -> None:
            fault(proxy)

        await _run_load(broker.address, functools.partial(_cycles, break_proxy), load)
        await _check(log, load)
        assert broker.broker is not None
        bridge: Bridge = broker.broker.bridges[0]
        return bridge


@pytest.mark.parametrize("engine", ENGINES)
async def test_uplink_cut_by_proxy(
    engine: str, start_broker: StartBroker, tmp_path: Path, nursery: trio.Nursery
) -> None:
    # Cut mid-stream, down for longer than the duplicate window.
    bridge = await _through_proxy(engine, start_broker, tmp_path, nursery, lambda proxy: proxy.flap(OUTAGE_S))
    assert bridge.connects >= CYCLES + 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_acknowledgements_lost(
    engine: str, start_broker: StartBroker, tmp_path: Path, nursery: trio.Nursery
) -> None:
    # The upstream stores the batch but its acks never come back (a half-dead uplink): the stuck window
    # is detected, the link dropped, and on reconnect the log's last id says the batch is in. The outage
    # outlasts JetStream's duplicate window, so only resume() stands between the resend and a duplicate.
    bridge = await _through_proxy(engine, start_broker, tmp_path, nursery, lambda proxy: proxy.mute(OUTAGE_S))
    assert bridge.skipped > 0, "no batch was caught between storage and acknowledgement"


@pytest.mark.parametrize("engine", ENGINES)
async def test_upstream_killed_and_restarted(engine: str, start_broker: StartBroker, tmp_path: Path) -> None:
    async with open_log(engine, tmp_path) as log:
        broker = await start_broker(bridges=(log.bridge(log.server.port),))
        load = DeviceLoad()

        await _run_load(broker.address, functools.partial(_cycles, log.restart), load)
        await _check(log, load)


# --- the gateway SIGKILLed -------------------------------------------------------------------------------


def _gateway_config(path: Path, port: int, bridge_toml: str) -> Path:
    config = path / "gateway.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{path / "data"}"\ngateway_id = "{GATEWAY}"\n'
        f"[sys]\ninterval = 0\n\n{bridge_toml}"
    )
    return config


async def _start_gateway(config: Path, port: int, log_file: IO[bytes]) -> trio.Process:
    return await start_edgebus_process(["--config", str(config)], port, log_file)


async def _gateway_sigkill_cycles(tmp_path: Path, log: Log, bridge_toml: str) -> None:
    port = free_port()
    config = _gateway_config(tmp_path, port, bridge_toml)
    load = DeviceLoad()
    with (tmp_path / "gateway.log").open("ab") as log_file:
        process = await _start_gateway(config, port, log_file)
        try:

            async def crashes() -> None:
                nonlocal process
                for _ in range(CYCLES):
                    await trio.sleep(random.uniform(0.8, 1.5))
                    process.send_signal(signal.SIGKILL)  # mid-forwarding: the load never stops
                    await process.wait()
                    await trio.sleep(0.2)
                    process = await _start_gateway(config, port, log_file)
                await trio.sleep(0.5)

            await _run_load(("127.0.0.1", port), crashes, load)
            await _check(log, load)
        finally:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("engine", ENGINES)
async def test_gateway_sigkilled_while_forwarding(engine: str, tmp_path: Path) -> None:
    async with open_log(engine, tmp_path) as log:
        await _gateway_sigkill_cycles(tmp_path, log, log.bridge_toml(log.server.port))

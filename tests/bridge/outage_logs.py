"""The logs the outage campaign (test_outages.py) audits: each engine an upstream the bridge forwards to,
and a way to read back what it holds. A new engine is a module with a class of `Log`'s shape and an
`open_*_log(tmp_path)` context manager, registered in test_outages.LOGS.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as paho_mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from edgebus.bridge.rules import subject_to_topic
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.mosquitto_upstream import Upstream, open_upstreams
from tests.bridge.nats_upstream import NatsServer, open_nats_admin, running_nats_server

STREAM = "LOG"
GATEWAY = "gw-test"
#: Shorter than every outage below: de-duplication must come from resume(), not from the window.
DUPLICATE_WINDOW_S = 1.0
CYCLES = 3
OUTAGE_S = DUPLICATE_WINDOW_S * 1.5
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

class HasPort(Protocol):
    @property
    def port(self) -> int: ...


class Log(Protocol):
    """An upstream engine under test and what it holds. ``exactly_once``: the audit allows no duplicate
    (False for QoS-1-only upstreams, where duplicates are counted instead)."""

    @property
    def server(self) -> HasPort: ...

    exactly_once: bool

    def bridge(self, port: int, **overrides: object) -> BridgeConfig: ...

    def bridge_toml(self, port: int) -> str: ...

    async def count(self) -> int: ...

    async def read(self) -> list[tuple[str, int]]: ...

    async def restart(self) -> None: ...


# --- JetStream as the log ------------------------------------------------------------------------------


@dataclass
class JetStreamLog:
    server: NatsServer
    exactly_once: bool = True
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


class PahoLog:
    """What the paho-based logs share: a subscription to ``prefix + "#"`` at ``log_qos``, made again on every
    (re)connect, whose arrivals paho's network thread appends to ``received``."""

    prefix: str
    log_qos: int

    def _init_log(self) -> None:
        self.received: list[tuple[str, bytes]] = []  # appended by paho's thread; read by the test
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the SUBACK of the log's subscription

    def _wire(self, client: paho_mqtt.Client) -> None:
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: paho_mqtt.Client, _u: object, _f: object, code: object, _p: object) -> None:
        client.subscribe(self.prefix + "#", qos=self.log_qos)
        self.connected.set()

    def _on_message(self, _c: paho_mqtt.Client, _u: object, message: paho_mqtt.MQTTMessage) -> None:
        self.received.append((message.topic, bytes(message.payload)))

    def _on_subscribe(self, _c: paho_mqtt.Client, _u: object, _mid: int, _codes: object, _p: object) -> None:
        self.subscribed.set()

    async def _until_subscribed(self, timeout_s: float) -> None:
        with trio.fail_after(timeout_s):
            while not self.subscribed.is_set():  # noqa: ASYNC110 - a threading.Event set by paho's thread
                await trio.sleep(0.02)


class MosquittoLog(PahoLog):
    """The upstream is a Mosquitto (persistence on); the "log" is what its persistent QoS 2 subscriber, a
    paho client that reconnects on its own, receives."""

    prefix = f"gw/{GATEWAY}/"
    log_qos = 2
    exactly_once = True

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.server = upstream  # .port, as JetStreamLog.server
        self._init_log()
        client = paho_mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="cloud-log", protocol=paho_mqtt.MQTTv5
        )
        self._wire(client)
        client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # paho's stubs say int; it sleeps floats
        self.client = client

    async def open(self) -> None:
        properties = PahoProperties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.upstream.port, clean_start=False, properties=properties)
        self.client.loop_start()
        await self._until_subscribed(10)

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

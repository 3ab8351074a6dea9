"""QoS-1-only MQTT upstreams as the outage campaign's logs (tests/bridge/outage_logs.py has the shape):
Mosquitto with ``max_qos 1`` (the bridge speaks MQTT 5 and learns the limit from CONNACK's Maximum QoS) and
RabbitMQ 3.10's MQTT plugin (3.1.1 only, so the bridge is told with ``max_qos = 1``). The out rule asks
for QoS 2 in both, so the downgrade path is what runs.

At least once (``exactly_once = False``): the audit counts duplicates. The "log" is the queue of a
persistent QoS 1 subscription on the upstream, read only once the chaos is over: the subscriber subscribes
when the log opens, goes away (its session, and the QoS 1 messages for it, stay [MQTT-3.1.2-5]) and comes
back to read. Were it connected during an upstream restart, the upstream would send it again what it had
not seen acknowledged, and these repeats could not be told from the bridge's: RabbitMQ passes a publisher's
DUP flag on to subscribers (header x-mqtt-dup), where 3.1.1 says not to [MQTT-3.3.1-3]. So every
duplicate the audit counts is the bridge's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho_mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from edgebus.bridge.mqtt import MQTT_3_1_1_MAX_INFLIGHT
from edgebus.bridge.mqtt_uplink import CHECKPOINT_QOS
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.mosquitto_upstream import open_upstreams
from tests.bridge.outage_logs import CYCLES, FAST_LINK, FAST_LINK_TOML, GATEWAY, PahoLog
from tests.bridge.rabbitmq_upstream import shared_rabbitmq

_numbers = itertools.count()


@dataclass(frozen=True)
class MqttPort:
    """The upstream's MQTT port, as `Log.server` (RabbitMQ's `port` is its stream port)."""

    port: int


class Qos1MqttLog(PahoLog):
    """A QoS-1-only MQTT upstream on ``port``; the log is what a persistent QoS 1 paho subscriber (MQTT
    ``protocol``) gets under ``prefix`` once it comes back to read. ``bridge_settings``: the bridge's
    settings for this upstream beyond the common ones; ``restart``: stops and starts the upstream."""

    exactly_once = False
    log_qos = 1
    #: What one failure may cost: the records of one slice, sent and received but whose checkpoint was
    #: not (a slice is the send window less the checkpoint's slot; both upstreams allow 20 in flight:
    #: Mosquitto's Receive Maximum, the bridge's cap for 3.1.1). Slices before it are checkpointed.
    duplicates_per_failure = MQTT_3_1_1_MAX_INFLIGHT - CHECKPOINT_QOS

    #: Upstream restarts in test_upstream_killed_and_restarted (CYCLES unless a log says fewer).
    restart_cycles = CYCLES

    def __init__(
        self,
        port: int,
        protocol: MQTTProtocolVersion,
        prefix: str,
        bridge_settings: dict[str, object],
        restart: Callable[[], Awaitable[None]],
    ) -> None:
        self.server = MqttPort(port)
        self.prefix = prefix
        self._bridge_settings = bridge_settings
        self._restart = restart
        self._protocol = protocol
        self._client_id = f"cloud-log-{next(_numbers)}-{time.monotonic_ns()}"
        self._init_log()
        self.client: paho_mqtt.Client | None = None

    async def _connect(self) -> None:
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        client = paho_mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=self._protocol,
            clean_session=None if v5 else False,
        )
        self._wire(client)
        self.connected.clear()
        self.subscribed.clear()
        if v5:
            properties = PahoProperties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 3600
            client.connect("127.0.0.1", self.server.port, clean_start=False, properties=properties)
        else:
            client.connect("127.0.0.1", self.server.port)
        client.loop_start()
        self.client = client
        await self._until_subscribed(20)

    async def open(self) -> None:
        """Subscribe, then leave: the session keeps what arrives until `read` comes back for it."""
        await self._connect()
        self.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    async def _attach(self) -> None:
        if self.client is None:
            await self._connect()

    def _values(self, port: int, overrides: dict[str, object]) -> dict[str, object]:
        return {
            "name": "cloud",
            "kind": "mqtt",
            "addresses": (ListenAddress("127.0.0.1", port),),
            "topics": (BridgeTopic("sensors/#", qos=2, remote_prefix=self.prefix),),
            **FAST_LINK,
            **self._bridge_settings,
            **overrides,
        }

    def bridge(self, port: int, **overrides: object) -> BridgeConfig:
        return BridgeConfig(**self._values(port, overrides))  # type: ignore[arg-type]

    def bridge_toml(self, port: int) -> str:
        settings = "".join(
            f"{key} = {value!r}\n".replace("'", '"') for key, value in self._bridge_settings.items()
        )
        return (
            f'[[bridge]]\nname = "cloud"\nkind = "mqtt"\naddresses = ["127.0.0.1:{port}"]\n{FAST_LINK_TOML}'
            f"{settings}"
            f'topics = [{{ pattern = "sensors/#", qos = 2, remote_prefix = "{self.prefix}" }}]\n'
        )

    async def count(self) -> int:
        await self._attach()
        return len(self.received)

    async def read(self) -> list[tuple[str, int]]:
        await self._attach()
        found = []
        for topic, payload in list(self.received):
            assert topic.startswith(self.prefix), topic
            found.append((topic[len(self.prefix) :], int(payload)))
        return found

    async def restart(self) -> None:
        await self._restart()


@asynccontextmanager
async def _opened(log: Qos1MqttLog) -> AsyncIterator[Qos1MqttLog]:
    await log.open()
    try:
        yield log
    finally:
        log.close()


@asynccontextmanager
async def mosquitto_qos1_log(tmp_path: Path) -> AsyncIterator[Qos1MqttLog]:
    """Mosquitto with ``max_qos 1``: its CONNACK says Maximum QoS 1 [MQTT-3.2.2-9], nothing to configure."""
    async with open_upstreams(tmp_path) as start_upstream:
        # No cap on the messages queued for the absent log subscriber (Mosquitto's default is 1000).
        upstream = await start_upstream(extra_config="max_qos 1\nmax_queued_messages 0\n")
        # SIGTERM and start: Mosquitto writes its persistence only when it stops (see MosquittoLog.restart).
        log = Qos1MqttLog(upstream.port, MQTTProtocolVersion.MQTTv5, f"gw/{GATEWAY}/", {}, upstream.restart)
        async with _opened(log):
            yield log


@asynccontextmanager
async def rabbitmq_mqtt_log(tmp_path: Path) -> AsyncIterator[Qos1MqttLog]:
    """RabbitMQ's MQTT plugin on the session's shared node: 3.1.1, so the bridge says ``max_qos = 1``.
    Its own topic prefix and bridge client id (so its own session and checkpoint) per test."""
    server = shared_rabbitmq()
    tag = f"{next(_numbers)}-{time.monotonic_ns()}"
    settings: dict[str, object] = {"protocol_level": 4, "max_qos": 1, "client_id": f"edgebus-{tag}"}

    async def restart() -> None:
        server.kill()  # SIGKILL: what RabbitMQ confirmed (PUBACK) it wrote down first
        await trio.sleep(0.5)
        await server.start()

    prefix = f"gw/{GATEWAY}/{tag}/"
    log = Qos1MqttLog(server.mqtt_port, MQTTProtocolVersion.MQTTv311, prefix, settings, restart)
    # Each restart is a SIGKILL and an Erlang boot (~8 s on this machine): two keep the scenario well
    # inside the per-test limit (conftest TEST_TIMEOUT_S) on a busy machine.
    log.restart_cycles = 2
    async with _opened(log):
        yield log

"""The bridge inside the broker, end to end: a real broker (start_broker), real upstreams (a Mosquitto
process, a nats-server with JetStream), real clients (paho for devices and the cloud side, nats-py for
JetStream). In rules, loop prevention, $SYS, the catch-up rate, the cbor-json transform, a missing stream,
TLS, and shutdown in the middle of a send.

The bridge contract (issue 6, edgebus/bridge/sink.py and runner.py): a message matched by an out rule is
forwarded once, in order, with at most ``window`` (and under a rate, rate x RATE_BURST_S) messages per
batch; an in-rule message is published locally and acknowledged upstream only once committed; a message
that came in through a bridge never goes back out through it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho_mqtt
import pytest
import trio
from edgebus_fleet.proxy import ChaosProxy
from paho.mqtt.enums import CallbackAPIVersion

from edgebus.bridge.jetstream_link import CONTENT_TYPE_HEADER, RETAIN_HEADER
from edgebus.bridge.jetstream_subjects import consumer_name
from edgebus.bridge.mqtt import checkpoint_topic
from edgebus.bridge.runner import RATE_BURST_S, BridgeState
from edgebus.bridge.sink import MESSAGE_ID_HEADER, MESSAGE_ID_PROPERTY
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from edgebus.protocol.enums import ReasonCode
from tests.bridge.mosquitto_upstream import UpstreamFactory, make_tls_files
from tests.bridge.nats_upstream import NatsServer, open_nats_admin
from tests.clients import PEER, PahoClient
from tests.conftest import BrokerHandle, StartBroker

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's bridge")

GATEWAY = "gw-test"  # the gateway_id start_broker configures
BRIDGE = "cloud"
CLIENT_ID = f"edgebus-{GATEWAY}-{BRIDGE}"  # the resolved bridge client id (client_id = "")
MQTT_PREFIX = f"gw/{GATEWAY}/"
NATS_PREFIX = f"gw.{GATEWAY}"
STREAM = "LOG"
#: A link that notices trouble and comes back within a fraction of a second.
FAST_LINK: dict[str, Any] = {
    "keep_alive": 2.0,
    "ack_timeout": 3.0,
    "connect_timeout": 1.0,
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
}
#: Bound on anything the tests wait for (a state, a counter, a message): generous, never reached when well.
WAIT_S = 10.0

OUT_SENSORS = BridgeTopic("sensors/#", direction="out", qos=2, remote_prefix=MQTT_PREFIX)
IN_COMMANDS = BridgeTopic("cmd/#", direction="in", qos=1, remote_prefix=MQTT_PREFIX)


# --- set-up helpers ---------------------------------------------------------------------------------------


def mqtt_bridge(port: int, topics: tuple[BridgeTopic, ...], **overrides: Any) -> BridgeConfig:
    values: dict[str, Any] = {
        "name": BRIDGE,
        "kind": "mqtt",
        "addresses": (ListenAddress("127.0.0.1", port),),
        "topics": topics,
        **FAST_LINK,
    }
    values.update(overrides)
    return BridgeConfig(**values)


def jetstream_bridge(port: int, topics: tuple[BridgeTopic, ...], **overrides: Any) -> BridgeConfig:
    return mqtt_bridge(port, topics, **{"kind": "nats-jetstream", "stream": STREAM, **overrides})


def bridge_of(handle: BrokerHandle) -> Any:
    assert handle.broker is not None
    (bridge,) = handle.broker.bridges
    return bridge


def sys_value(handle: BrokerHandle, key: str) -> str:
    assert handle.broker is not None
    value: str = handle.broker.sys_values()[f"$SYS/broker/bridge/{BRIDGE}/{key}"]
    return value


async def wait_until(condition: Callable[[], bool], what: str, within_s: float = WAIT_S) -> None:
    """Poll ``condition`` (cheap, synchronous) until it holds; fail the test after ``within_s``."""
    deadline = trio.current_time() + within_s
    while not condition():
        if trio.current_time() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await trio.sleep(0.02)


async def expect_payload(
    subscriber: PahoClient, wanted: Callable[[bytes], bool], what: str, within_s: float = WAIT_S
) -> list[bytes]:
    """Read messages until one has a ``wanted`` payload (within ``within_s`` in all); returns the payloads
    that came before it."""
    before: list[bytes] = []
    deadline = trio.current_time() + within_s
    while True:
        left = deadline - trio.current_time()
        if left <= 0:
            raise AssertionError(f"not within {within_s} s: {what} (saw {before})")
        payload = (await subscriber.expect_message(timeout=left)).payload
        if wanted(payload):
            return before
        before.append(payload)


async def wait_connected(handle: BrokerHandle) -> None:
    bridge = bridge_of(handle)
    await wait_until(lambda: bridge.state == BridgeState.CONNECTED, f"bridge connected ({bridge.last_error})")


async def client(
    paho: Callable[..., PahoClient], host: str, port: int, name: str, **options: Any
) -> PahoClient:
    connected = paho(name)
    await connected.connect(host, port, **options)
    return connected


async def cloud_log(paho: Callable[..., PahoClient], port: int, name: str = "cloud-log") -> PahoClient:
    """A persistent QoS 2 subscriber on the upstream that records what it delivers under our prefix."""
    cloud = await client(paho, "127.0.0.1", port, name, clean_start=False, session_expiry_interval=3600)
    assert await cloud.subscribe(MQTT_PREFIX + "#", qos=2) == 2
    return cloud


def outbox_rows(handle: BrokerHandle) -> list[tuple[int, str, bytes]]:
    """The bridge outbox committed on disk, read by a second sqlite connection."""
    db = sqlite3.connect(f"file:{handle.data_dir / 'edgebus.db'}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT seq, topic, payload FROM bridge_outbox ORDER BY seq"))
    finally:
        db.close()


def seq_of(message_id: str) -> int:
    """The outbox sequence in a forwarded message id ``<gateway>:<epoch>:<seq>``."""
    gateway, _epoch, seq = message_id.split(":")
    assert gateway == GATEWAY
    return int(seq)


# --- 1. in rules through Mosquitto ------------------------------------------------------------------------


async def test_in_rule_command_reaches_local_subscribers(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """A cloud command (QoS 1) on the remote topic of an in rule reaches local subscribers on the local
    topic, once. Delivered to an established subscription, RETAIN is 0 under Retain As Published 0
    [MQTT-3.3.1-12]."""
    upstream = await start_upstream()
    broker = await start_broker(bridges=(mqtt_bridge(upstream.port, (IN_COMMANDS,)),))
    await wait_connected(broker)
    device = await client(paho, *broker.address, "device")
    assert await device.subscribe("cmd/#", qos=1) == 1
    cloud = await client(paho, "127.0.0.1", upstream.port, "cloud-app")
    result = await cloud.publish(MQTT_PREFIX + "cmd/valve", b"open", qos=1)
    assert result.reason_code in (ReasonCode.SUCCESS, ReasonCode.NO_MATCHING_SUBSCRIBERS)
    got = await device.expect_message()
    assert (got.topic, got.payload, got.qos, got.retain) == ("cmd/valve", b"open", 1, False)
    await device.expect_no_message()
    await wait_until(lambda: sys_value(broker, "received") == "1", "received counter")


async def test_live_retained_command_is_retained_locally(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """A retained cloud command published while the bridge is connected: a local subscriber with Retain As
    Published 1 gets RETAIN as published, 1 [MQTT-3.3.1-13], and a device subscribing afterwards gets the
    retained local copy with RETAIN 1 [MQTT-3.3.1-5] [MQTT-3.3.1-9]."""
    upstream = await start_upstream()
    broker = await start_broker(bridges=(mqtt_bridge(upstream.port, (IN_COMMANDS,)),))
    await wait_connected(broker)
    device = await client(paho, *broker.address, "device")
    assert await device.subscribe("cmd/#", qos=1, retain_as_published=True) == 1
    cloud = await client(paho, "127.0.0.1", upstream.port, "cloud-app")
    await cloud.publish(MQTT_PREFIX + "cmd/valve", b"open", qos=1, retain=True)
    got = await device.expect_message()
    assert (got.topic, got.payload, got.retain) == ("cmd/valve", b"open", True)  # as published
    late = await client(paho, *broker.address, "late-device")
    await late.subscribe("cmd/#", qos=1)
    retained = await late.expect_message(timeout=2)
    assert (retained.topic, retained.payload, retained.retain) == ("cmd/valve", b"open", True)


async def test_retained_command_is_stored_locally_and_survives_a_restart(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """A retained cloud command the bridge receives as retained (its in-rule subscription is new, so the
    upstream sends the retained message with RETAIN 1) is stored by the broker [MQTT-3.3.1-5]: a device
    subscribing later gets it with RETAIN 1 [MQTT-3.3.1-9], also after a restart on the same data_dir with
    the upstream gone (so the copy can only come from the local store)."""
    upstream = await start_upstream()
    cloud = await client(paho, "127.0.0.1", upstream.port, "cloud-app")
    await cloud.publish(MQTT_PREFIX + "cmd/valve", b"open", qos=1, retain=True)
    bridges = (mqtt_bridge(upstream.port, (IN_COMMANDS,)),)
    broker = await start_broker(bridges=bridges)
    await wait_connected(broker)
    await wait_until(lambda: sys_value(broker, "received") == "1", "the retained command came in")
    device = await client(paho, *broker.address, "device")
    assert await device.subscribe("cmd/#", qos=1) == 1
    got = await device.expect_message()
    assert (got.topic, got.payload, got.qos, got.retain) == ("cmd/valve", b"open", 1, True)
    await device.disconnect()
    await broker.shutdown()
    await upstream.stop()
    again = await start_broker(data_dir=broker.data_dir, bridges=bridges)
    assert bridge_of(again).state != BridgeState.CONNECTED
    late = await client(paho, *again.address, "late-device")
    assert await late.subscribe("cmd/#", qos=1) == 1
    kept = await late.expect_message()
    assert (kept.topic, kept.payload, kept.retain) == ("cmd/valve", b"open", True)
    assert sys_value(again, "received") == "0"  # nothing came in through the bridge this time


# --- 2. loop prevention -----------------------------------------------------------------------------------


async def _both_directions(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> tuple[BrokerHandle, list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """A "both" rule on cmd/#; a device publishes cmd/up, the cloud gw/gw-test/cmd/down. Returns the broker
    and what a subscriber on the upstream and one on the broker saw (sorted), after time for a loop."""
    upstream = await start_upstream()
    rule = BridgeTopic("cmd/#", direction="both", qos=1, remote_prefix=MQTT_PREFIX)
    broker = await start_broker(bridges=(mqtt_bridge(upstream.port, (rule,)),))
    await wait_connected(broker)
    cloud_watch = await cloud_log(paho, upstream.port, "cloud-watch")
    local_watch = await client(paho, *broker.address, "local-watch")
    await local_watch.subscribe("cmd/#", qos=1)
    device = await client(paho, *broker.address, "device")
    await device.publish("cmd/up", b"from-device", qos=1)
    cloud_app = await client(paho, "127.0.0.1", upstream.port, "cloud-app")
    await cloud_app.publish(MQTT_PREFIX + "cmd/down", b"from-cloud", qos=1)
    await wait_until(lambda: sys_value(broker, "forwarded") == "1", "the device message forwarded")
    await trio.sleep(1.0)  # time for a loop to show
    upstream_seen = sorted((m.topic, m.payload) for m in cloud_watch.drain_messages())
    local_seen = sorted((m.topic, m.payload) for m in local_watch.drain_messages())
    return broker, upstream_seen, local_seen


async def test_both_directions_rule_sends_nothing_back_up(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """A "both" rule: the device message goes up once; the cloud message comes down and is not sent back
    up (bridge contract: a message that came in through a bridge never goes out through it). The
    upstream sees each exactly once."""
    broker, upstream_seen, local_seen = await _both_directions(start_broker, start_upstream, paho)
    assert upstream_seen == [
        (MQTT_PREFIX + "cmd/down", b"from-cloud"),
        (MQTT_PREFIX + "cmd/up", b"from-device"),
    ]
    assert ("cmd/down", b"from-cloud") in local_seen
    assert sys_value(broker, "forwarded") == "1"
    assert sys_value(broker, "queued") == "0"


async def test_both_directions_rule_delivers_each_message_once_locally(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """A "both" rule: a local subscriber gets the device message once (it must not come back down
    through the bridge) and the cloud message once."""
    broker, _, local_seen = await _both_directions(start_broker, start_upstream, paho)
    assert local_seen == [("cmd/down", b"from-cloud"), ("cmd/up", b"from-device")]
    assert sys_value(broker, "received") == "1"


# --- 3. in rules through JetStream ------------------------------------------------------------------------


async def test_jetstream_in_rule_reaches_devices_and_is_acked(
    start_broker: StartBroker, nats_server: NatsServer, paho: Callable[..., PahoClient]
) -> None:
    """A message in the stream on an in subject, with Edgebus-Retain: 1, is published locally as retained
    (a later subscriber gets it with RETAIN 1 [MQTT-3.3.1-9]); the durable consumer has nothing pending
    or unacknowledged afterwards (bridge contract: acknowledged after the local commit)."""
    rule = BridgeTopic("cmd/#", direction="in", qos=1, remote_prefix=NATS_PREFIX)
    async with open_nats_admin(nats_server.url) as admin:
        await admin.create_stream(STREAM, ["gw.>"])
        broker = await start_broker(bridges=(jetstream_bridge(nats_server.port, (rule,)),))
        await wait_connected(broker)
        device = await client(paho, *broker.address, "device")
        assert await device.subscribe("cmd/#", qos=1) == 1
        await admin.publish(f"{NATS_PREFIX}.cmd.valve", b"open", headers={RETAIN_HEADER: "1"})
        got = await device.expect_message()
        assert (got.topic, got.payload, got.qos, got.retain) == ("cmd/valve", b"open", 1, False)
        late = await client(paho, *broker.address, "late-device")
        await late.subscribe("cmd/#", qos=1)
        kept = await late.expect_message()
        assert (kept.topic, kept.payload, kept.retain) == ("cmd/valve", b"open", True)
        pending = (-1, -1)
        deadline = trio.current_time() + WAIT_S
        while pending != (0, 0) and trio.current_time() < deadline:
            pending = await admin.consumer_pending(STREAM, consumer_name(CLIENT_ID))
            await trio.sleep(0.05)
        assert pending == (0, 0)
        await device.expect_no_message()
        assert sys_value(broker, "received") == "1"
        # Shut down while the server lives (see test_shutdown_just_after_the_jetstream_server_died).
        await broker.shutdown()


async def test_shutdown_just_after_the_jetstream_server_died(
    start_broker: StartBroker, nats_server: NatsServer
) -> None:
    """The nats-server dies (SIGKILL) and the gateway shuts down at once, while the in rules' pull
    request is still pending: Broker.serve() must still return cleanly (an exception from it fails the
    test's nursery). The window is narrow (until nats-py wakes the pending fetch), so a few cycles."""
    rule = BridgeTopic("cmd/#", direction="in", qos=1, remote_prefix=NATS_PREFIX)
    async with open_nats_admin(nats_server.url) as admin:
        await admin.create_stream(STREAM, ["gw.>"])
    for _ in range(8):
        broker = await start_broker(bridges=(jetstream_bridge(nats_server.port, (rule,)),))
        await wait_connected(broker)
        await trio.sleep(0.2)  # the receiver's pull request is pending
        nats_server.kill()
        await broker.shutdown()
        await trio.sleep(0.1)  # let an exception from serve() reach the nursery
        await nats_server.start()


# --- 4. $SYS ----------------------------------------------------------------------------------------------


async def test_sys_state_and_counters_follow_the_upstream(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """$SYS/broker/bridge/<name>/state is retained (RETAIN 1 on subscribing [MQTT-3.3.1-9]); it follows
    the link down and up; forwarded / queued / oldest_age move with the outbox."""
    upstream = await start_upstream()
    cloud = await cloud_log(paho, upstream.port)
    broker = await start_broker(bridges=(mqtt_bridge(upstream.port, (OUT_SENSORS,)),))
    await wait_connected(broker)
    watcher = await client(paho, *broker.address, "watcher")
    await watcher.subscribe(f"$SYS/broker/bridge/{BRIDGE}/state", qos=0)
    state = await watcher.expect_message()
    assert (state.payload, state.retain) == (b"connected", True)
    device = await client(paho, *broker.address, "device")
    for i in range(3):
        await device.publish(f"sensors/{i}", str(i).encode(), qos=1)
    await wait_until(lambda: sys_value(broker, "forwarded") == "3", "3 forwarded")
    assert sys_value(broker, "queued") == "0"
    assert sys_value(broker, "oldest_age") == "0"
    assert [m.payload for m in await cloud.expect_messages(3)] == [b"0", b"1", b"2"]

    await upstream.stop()
    # The idle link's death shows on the next send (see test_idle_bridge_notices_the_upstream_going_away):
    # messages published now fail that send and wait in the outbox.
    for i in range(3, 7):
        result = await device.publish(f"sensors/{i}", str(i).encode(), qos=1)
        assert result.reason_code == ReasonCode.SUCCESS  # queued in the outbox counts as matched
    change = await watcher.expect_message()
    # Delivered to an established subscription: RETAIN 0 [MQTT-3.3.1-12].
    assert (change.payload, change.retain) in ((b"disconnected", False), (b"connecting", False))
    assert sys_value(broker, "queued") == "4"
    await trio.sleep(0.2)
    assert float(sys_value(broker, "oldest_age")) > 0
    assert sys_value(broker, "forwarded") == "3"
    assert bridge_of(broker).state != BridgeState.CONNECTED

    await upstream.start()
    await wait_until(lambda: sys_value(broker, "queued") == "0", "the outbox drained")
    assert sys_value(broker, "forwarded") == "7"
    assert sys_value(broker, "oldest_age") == "0"
    assert int(sys_value(broker, "connects")) >= 2
    passed = await expect_payload(watcher, lambda payload: payload == b"connected", "connected again")
    assert set(passed) <= {b"disconnected", b"connecting"}
    await cloud.connect("127.0.0.1", upstream.port, clean_start=False, session_expiry_interval=3600)
    assert [m.payload for m in await cloud.expect_messages(4)] == [b"3", b"4", b"5", b"6"]


async def test_idle_bridge_notices_the_upstream_going_away(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """An in-rule-only bridge (nothing to send): the upstream restarts (SIGTERM: its DISCONNECT and FIN
    tell the bridge at once). The state leaves "connected", the bridge reconnects, and a command
    published after the restart reaches the device (bridge contract: a dead link surfaces quickly)."""
    upstream = await start_upstream()
    broker = await start_broker(bridges=(mqtt_bridge(upstream.port, (IN_COMMANDS,)),))
    await wait_connected(broker)
    bridge = bridge_of(broker)
    device = await client(paho, *broker.address, "device")
    await device.subscribe("cmd/#", qos=1)
    await upstream.restart()
    cloud = await client(paho, "127.0.0.1", upstream.port, "cloud-app")
    await cloud.publish(MQTT_PREFIX + "cmd/valve", b"open", qos=1)
    # Mosquitto's session (persistence on) holds the command for the bridge until it reconnects.
    got = await device.expect_message(timeout=FAST_LINK["keep_alive"] * 3)
    assert (got.topic, got.payload) == ("cmd/valve", b"open")
    # The link's loss was noticed (the command can only have come through a new connection).
    assert "upstream connection lost" in bridge.last_error


# --- 5. catch-up rate -------------------------------------------------------------------------------------


class TimedLog:
    """A paho subscriber on the upstream that stamps each arrival with time.monotonic() (its callback only
    records; the test asserts)."""

    def __init__(self, port: int, filters: list[tuple[str, int]]) -> None:
        self.port = port
        self.filters = filters
        self.arrivals: list[tuple[float, str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho_mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="timed-log", protocol=paho_mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: paho_mqtt.Client, *_: object) -> None:
        client.subscribe(self.filters)

    def _on_subscribe(self, *_: object) -> None:
        self.subscribed.set()

    def _on_message(self, _c: paho_mqtt.Client, _u: object, message: paho_mqtt.MQTTMessage) -> None:
        with self.lock:
            self.arrivals.append((time.monotonic(), message.topic, bytes(message.payload)))

    async def open(self) -> None:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        with trio.fail_after(WAIT_S):
            while not self.subscribed.is_set():  # noqa: ASYNC110 - a threading.Event set by paho's thread
                await trio.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def seen(self) -> list[tuple[float, str, bytes]]:
        with self.lock:
            return list(self.arrivals)


async def test_catch_up_respects_the_rate(
    start_broker: StartBroker,
    start_upstream: UpstreamFactory,
    paho: Callable[..., PahoClient],
    nursery: trio.Nursery,
) -> None:
    """rate = 200 msg/s: 400 messages queued during an outage take at least ~1.5 s to reach the upstream
    (a lower bound only), and no batch holds more than rate x RATE_BURST_S = 20 messages. The batch sizes
    are observed through the retained checkpoint the MQTT sink publishes after each slice of a batch (a
    slice is never larger than its batch): the upstream's Receive Maximum is raised to 1000 so that,
    without the rate, the whole backlog would go as one slice."""
    rate = 200.0
    burst = int(rate * RATE_BURST_S)
    count = 400
    upstream = await start_upstream(max_inflight_messages=1000)
    checkpoints = checkpoint_topic(mqtt_bridge(upstream.port, (OUT_SENSORS,)), CLIENT_ID)
    log = TimedLog(upstream.port, [(MQTT_PREFIX + "#", 1), (checkpoints, 1)])
    await log.open()
    try:
        proxy = ChaosProxy("127.0.0.1", upstream.port)
        proxy_port = await nursery.start(proxy.serve)
        proxy.flap(3600)  # the uplink is down until the backlog is queued
        broker = await start_broker(bridges=(mqtt_bridge(proxy_port, (OUT_SENSORS,), rate=rate),))
        device = await client(paho, *broker.address, "device")
        mids = [
            (await device.publish(f"sensors/{i % 4}", str(i).encode(), qos=1, wait=False)).mid
            for i in range(count)
        ]
        for mid in mids:
            assert (await device.wait_published(mid)).reason_code == ReasonCode.SUCCESS
        assert sys_value(broker, "queued") == str(count)
        assert log.seen() == []
        proxy.down_until = trio.current_time()  # the uplink is back

        def upstream_records() -> int:
            return sum(topic != checkpoints for _, topic, _ in log.seen())

        await wait_until(lambda: upstream_records() >= count, "the backlog upstream", 20.0)
        await wait_until(lambda: sys_value(broker, "queued") == "0", "the outbox drained")
        await trio.sleep(0.3)
    finally:
        log.close()
    arrivals = log.seen()
    records = [(at, payload) for at, topic, payload in arrivals if topic != checkpoints]
    assert [int(payload) for _, payload in records] == list(range(count))  # once each, in order
    span = records[-1][0] - records[0][0]
    print(f"\n{count} messages at {rate:g}/s reached the upstream over {span:.2f} s")
    assert span >= 1.5, f"{count} messages at {rate:g}/s arrived within {span:.2f} s"
    marks = [seq_of(payload.decode()) for _, topic, payload in arrivals if topic == checkpoints]
    assert marks[-1] == count
    sizes = [b - a for a, b in zip([0, *marks], marks, strict=False)]
    assert all(0 < size <= burst for size in sizes), sizes
    assert sum(sizes) == count


async def test_messages_that_expire_in_the_outbox_are_not_forwarded(
    start_broker: StartBroker,
    start_upstream: UpstreamFactory,
    paho: Callable[..., PahoClient],
    nursery: trio.Nursery,
) -> None:
    """[MQTT-3.3.2-5]: a message whose Message Expiry Interval passed before onward delivery began is
    deleted; one still alive goes up with the interval reduced by its wait [MQTT-3.3.2-6]."""
    upstream = await start_upstream()
    cloud = await cloud_log(paho, upstream.port)
    proxy = ChaosProxy("127.0.0.1", upstream.port)
    proxy_port = await nursery.start(proxy.serve)
    proxy.flap(3600)  # the uplink is down
    broker = await start_broker(bridges=(mqtt_bridge(proxy_port, (OUT_SENSORS,)),))
    device = await client(paho, *broker.address, "device")
    await device.publish("sensors/short", b"short", qos=1, properties={"message_expiry_interval": 1})
    await device.publish("sensors/long", b"long", qos=1, properties={"message_expiry_interval": 60})
    await device.publish("sensors/never", b"never", qos=1)
    await trio.sleep(1.5)  # the first one expires in the outbox
    proxy.down_until = trio.current_time()  # the uplink is back
    received = await cloud.expect_messages(2)
    assert [m.payload for m in received] == [b"long", b"never"]
    long_lived = received[0].properties.message_expiry_interval
    assert long_lived is not None and 1 <= long_lived <= 59  # its wait in the outbox was subtracted
    assert received[1].properties.message_expiry_interval is None
    await wait_until(lambda: sys_value(broker, "queued") == "0", "the outbox drained")
    assert sys_value(broker, "expired") == "1"
    assert sys_value(broker, "forwarded") == "2"


# --- 6. cbor-json into JetStream --------------------------------------------------------------------------


async def test_cbor_json_transform_into_jetstream(
    start_broker: StartBroker, nats_server: NatsServer, paho: Callable[..., PahoClient]
) -> None:
    """A CBOR payload under a cbor-json out rule is stored in the stream as JSON with the header
    Content-Type: application/json, under its message id."""
    rule = BridgeTopic("sensors/#", qos=1, remote_prefix=NATS_PREFIX, transform="cbor-json")
    async with open_nats_admin(nats_server.url) as admin:
        await admin.create_stream(STREAM, ["gw.>"])
        broker = await start_broker(bridges=(jetstream_bridge(nats_server.port, (rule,)),))
        device = await client(paho, *broker.address, "device")
        await device.publish("sensors/t1", cbor2.dumps({"t": 21.5, "raw": b"\x01\x02"}), qos=1)
        await wait_until(lambda: sys_value(broker, "forwarded") == "1", "forwarded")
        (stored,) = await admin.messages(STREAM)
        await broker.shutdown()
    assert stored.subject == f"{NATS_PREFIX}.sensors.t1"
    assert json.loads(stored.data) == {"t": 21.5, "raw": "AQI="}
    assert stored.headers[CONTENT_TYPE_HEADER] == "application/json"
    assert seq_of(stored.headers[MESSAGE_ID_HEADER]) == 1
    assert RETAIN_HEADER not in stored.headers


# --- 7. a JetStream bridge whose stream does not exist ---------------------------------------------------


async def test_missing_stream_keeps_the_bridge_down_and_the_broker_up(
    start_broker: StartBroker, nats_server: NatsServer, paho: Callable[..., PahoClient]
) -> None:
    """The stream does not exist: the bridge never counts as connected, $SYS last_error names the stream,
    and devices are served as usual (their messages queue in the outbox; the v5 PUBACK is 0x00)."""
    rule = BridgeTopic("sensors/#", qos=1, remote_prefix=NATS_PREFIX)
    broker = await start_broker(
        sys={"interval": 0.2}, bridges=(jetstream_bridge(nats_server.port, (rule,), stream="NOSUCH"),)
    )
    watcher = await client(paho, *broker.address, "watcher")
    await watcher.subscribe(f"$SYS/broker/bridge/{BRIDGE}/last_error", qos=0)
    await expect_payload(watcher, lambda payload: b"NOSUCH" in payload, "last_error naming the stream")
    local = await client(paho, *broker.address, "local")
    await local.subscribe("sensors/#", qos=1)
    device = await client(paho, *broker.address, "device")
    for i in range(3):
        result = await device.publish(f"sensors/{i}", str(i).encode(), qos=1)
        assert result.reason_code == ReasonCode.SUCCESS
    assert [m.payload for m in await local.expect_messages(3)] == [b"0", b"1", b"2"]
    assert [row[0] for row in outbox_rows(broker)] == [1, 2, 3]
    await trio.sleep(0.5)  # several more connection attempts
    bridge = bridge_of(broker)
    assert bridge.state != BridgeState.CONNECTED
    assert bridge.connects == 0
    assert "NOSUCH" in sys_value(broker, "last_error")
    assert sys_value(broker, "queued") == "3"
    assert sys_value(broker, "forwarded") == "0"
    state = await client(paho, *broker.address, "state-watcher")
    await state.subscribe(f"$SYS/broker/bridge/{BRIDGE}/state", qos=0)
    current = await state.expect_message()
    assert current.retain and current.payload in (b"connecting", b"disconnected")


# --- 8. TLS to a Mosquitto upstream -----------------------------------------------------------------------


async def test_tls_upstream(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """tls = true with the upstream's CA as cafile: the bridge connects to the TLS-only listener (its
    certificate is verified for 127.0.0.1) and messages arrive, with their message id (v5 user property)."""
    upstream = await start_upstream(tls=True)
    assert upstream.tls is not None and upstream.tls_port is not None
    cloud = await cloud_log(paho, upstream.port)
    bridge = mqtt_bridge(upstream.tls_port, (OUT_SENSORS,), tls=True, cafile=str(upstream.tls.cafile))
    broker = await start_broker(bridges=(bridge,))
    await wait_connected(broker)
    device = await client(paho, *broker.address, "device")
    await device.publish("sensors/t", b"21.5", qos=1)
    got = await cloud.expect_message()
    assert (got.topic, got.payload) == (MQTT_PREFIX + "sensors/t", b"21.5")
    ids = [value for name, value in got.properties.user_properties if name == MESSAGE_ID_PROPERTY]
    assert [seq_of(value) for value in ids] == [1]


async def test_tls_upstream_with_an_unknown_ca_is_refused(
    start_broker: StartBroker,
    start_upstream: UpstreamFactory,
    paho: Callable[..., PahoClient],
    tmp_path: Path,
) -> None:
    """The same listener, but verified against another CA: the bridge does not connect and says why;
    nothing reaches the upstream (the message waits in the outbox)."""
    upstream = await start_upstream(tls=True)
    assert upstream.tls_port is not None
    other = make_tls_files(tmp_path / "other-ca")
    cloud = await cloud_log(paho, upstream.port)
    bridge = mqtt_bridge(upstream.tls_port, (OUT_SENSORS,), tls=True, cafile=str(other.cafile))
    broker = await start_broker(bridges=(bridge,))
    device = await client(paho, *broker.address, "device")
    await device.publish("sensors/t", b"21.5", qos=1)
    await wait_until(lambda: sys_value(broker, "last_error") != "none", "a connection failure")
    await cloud.expect_no_message()
    assert bridge_of(broker).connects == 0
    assert sys_value(broker, "queued") == "1"


# --- 9. shutdown in the middle of a send ------------------------------------------------------------------


async def test_shutdown_mid_send_then_forward_once_after_restart(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """The upstream is SIGSTOPped while the bridge sends a batch (acks never come; ack_timeout 30 s):
    Broker.shutdown() still returns promptly (BrokerHandle.shutdown fails past 5 s) and cleanly (an
    exception from the bridge task would fail the test's nursery); the unforwarded messages are still in
    the outbox on disk, and after a restart on the same data_dir they reach the upstream exactly once
    (device PUBACK = ownership [MQTT-4.3.2-2]; bridge contract: once in the log)."""
    upstream = await start_upstream()
    cloud = await cloud_log(paho, upstream.port)
    bridges = (mqtt_bridge(upstream.port, (OUT_SENSORS,), ack_timeout=30.0, keep_alive=30.0),)
    broker = await start_broker(bridges=bridges)
    await wait_connected(broker)
    device = await client(paho, *broker.address, "device")
    await device.publish("sensors/0", b"0", qos=1)
    assert (await cloud.expect_message()).payload == b"0"
    bridge = bridge_of(broker)
    await wait_until(lambda: bridge.forwarded == 1, "the first message forwarded")
    upstream.pause()
    try:
        for i in range(1, 6):
            assert (await device.publish(f"sensors/{i}", str(i).encode(), qos=1)).reason_code == 0
        # A batch is with the (stopped) upstream: written, waiting for its acknowledgements.
        await wait_until(lambda: bridge.outbox.in_flight > 0, "a batch in flight")
        await trio.sleep(0.2)
        assert bridge.forwarded == 1
        assert len(bridge.outbox.entries) == 5
        assert bridge.state == BridgeState.CONNECTED
        started = trio.current_time()
        await broker.shutdown()
        took = trio.current_time() - started
        print(f"\nshutdown with a batch in flight took {took:.2f} s")
        assert took < bridges[0].ack_timeout  # it did not wait for the acknowledgements
        assert not bridge.last_error.startswith("internal error"), bridge.last_error
        assert [(seq, payload) for seq, _, payload in outbox_rows(broker)] == [
            (seq, str(seq - 1).encode()) for seq in range(2, 7)
        ]
    finally:
        upstream.cont()
    again = await start_broker(data_dir=broker.data_dir, bridges=bridges)
    await wait_until(lambda: sys_value(again, "queued") == "0", "the outbox drained after the restart")
    received = await cloud.expect_messages(5)
    await cloud.expect_no_message(timeout=1.0)
    assert [m.payload for m in received] == [str(i).encode() for i in range(1, 6)]
    assert outbox_rows(again) == []

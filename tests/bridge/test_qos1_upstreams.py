"""QoS-1-only MQTT upstreams (AWS IoT Core, Azure IoT Hub, RabbitMQ's MQTT plugin), against the real
RabbitMQ 3.10 of the test session (`shared_rabbitmq()`, MQTT 3.1.1 only): what it does with QoS 2, the sink
with ``max_qos = 1``, and ``$SYS/broker/bridge/<name>/qos_downgraded`` through a real broker.

The outage campaign against these upstreams is in test_outages.py (tests/bridge/qos1_logs.py).
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from edgebus.bridge.mqtt import MqttSink
from edgebus.bridge.rules import TopicMap
from edgebus.bridge.sink import BridgeIdentity, InboundMessage, Record
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.rabbitmq_upstream import RabbitServer, shared_rabbitmq
from tests.clients import MQTT_3_1_1, PEER, PahoClient
from tests.conftest import StartBroker

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's bridge")

IDENTITY = BridgeIdentity("gw-7", "e1")
WAIT_S = 20.0
_numbers = itertools.count()


def unique(stem: str) -> str:
    """Names of their own per test: the RabbitMQ node (sessions, retained messages) is shared."""
    return f"{stem}-{next(_numbers)}-{time.monotonic_ns()}"


def rabbit_bridge(
    server: RabbitServer, client_id: str, topics: tuple[BridgeTopic, ...], **more: Any
) -> BridgeConfig:
    values: dict[str, Any] = {
        "name": "cloud",
        "addresses": (ListenAddress("127.0.0.1", server.mqtt_port),),
        "client_id": client_id,
        "protocol_level": 4,  # the plugin speaks 3.1.1 only
        "max_qos": 1,
        "keep_alive": 5.0,
        "ack_timeout": 5.0,
        "connect_timeout": 5.0,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "topics": topics,
    }
    values.update(more)
    return BridgeConfig(**values)


def records(topic: str, first: int, last: int) -> list[Record]:
    return [
        Record(seq, IDENTITY.message_id(seq), topic, str(seq).encode(), 2, False, None)
        for seq in range(first, last + 1)
    ]


async def _no_inbound(message: InboundMessage) -> None:
    raise AssertionError(f"no in rule, yet {message} was delivered")


async def cloud_subscriber(
    paho: Callable[..., PahoClient], server: RabbitServer, topic_filter: str
) -> PahoClient:
    """A persistent subscriber asking for QoS 2; the plugin grants 1."""
    subscriber = paho(unique("cloud"), MQTT_3_1_1)
    await subscriber.connect("127.0.0.1", server.mqtt_port, clean_start=False)
    # The server may grant a lower QoS than asked; deliveries then go at most at the granted one
    # ([MQTT-3.8.4-6] of 3.1.1). RabbitMQ 3.10 grants QoS 1 for QoS 2.
    assert await subscriber.subscribe(topic_filter, 2) == 1
    return subscriber


# --- what RabbitMQ 3.10's MQTT plugin does with QoS 2 -------------------------------------------------------


def _packet(first_byte: int, body: bytes) -> bytes:
    assert len(body) < 128  # a one-byte remaining length is enough here
    return bytes([first_byte, len(body)]) + body


def _string(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


async def test_rabbitmq_answers_a_qos_2_publish_with_a_puback() -> None:
    # Why the bridge needs max_qos = 1 towards it: a 3.1.1 receiver must answer a QoS 2 PUBLISH with a
    # PUBREC [MQTT-4.3.3-2]; RabbitMQ 3.10 answers with a PUBACK (and delivers at QoS 1). A client waiting
    # for the PUBREC would wait forever; a bridge sending at QoS 1 gets the PUBACK it waits for.
    server = shared_rabbitmq()
    stream = await trio.open_tcp_stream("127.0.0.1", server.mqtt_port)
    async with stream:
        connect = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30) + _string(unique("probe"))
        await stream.send_all(_packet(0x10, connect))
        with trio.fail_after(WAIT_S):
            assert await stream.receive_some(4) == bytes([0x20, 2, 0, 0])  # CONNACK, accepted
            await stream.send_all(_packet(0x34, _string(unique("probe/t")) + struct.pack("!H", 7) + b"x"))
            assert await stream.receive_some(4) == bytes([0x40, 2, 0, 7])  # PUBACK 7, not PUBREC (0x50)


# --- the sink -----------------------------------------------------------------------------------------------


async def test_qos_2_records_go_at_qos_1_and_resume_from_the_checkpoint_without_pubrel(
    paho: Callable[..., PahoClient], caplog: pytest.LogCaptureFixture
) -> None:
    # [MQTT-3.2.2-11] in spirit: never publish above what the server takes; a 3.1.1 server cannot say,
    # so the bridge is told (max_qos = 1). The records go at QoS 1 and the downgrade is said once. A
    # second sink (a restarted gateway) resumes from the retained checkpoint and goes on: with no QoS 2
    # flow to release it sends no PUBREL, which would leave RabbitMQ's connection answering nothing.
    server = shared_rabbitmq()
    topic = unique("fleet") + "/data"
    subscriber = await cloud_subscriber(paho, server, topic)
    bridge = rabbit_bridge(server, unique("edgebus-gw-7"), (BridgeTopic("#", "out", 2),))
    caplog.set_level(logging.WARNING, "edgebus.bridge")

    sink = MqttSink(bridge, IDENTITY, TopicMap(bridge), _no_inbound, bridge.client_id)
    async with sink.connect() as uplink:
        assert await uplink.resume(1, 10) == 0
        await uplink.send(records(topic, 1, 5))
        await uplink.send(records(topic, 6, 10))
    assert sink.qos_downgraded == "2->1"
    assert len([r for r in caplog.records if "grants at most QoS 1" in r.getMessage()]) == 1

    again = MqttSink(bridge, IDENTITY, TopicMap(bridge), _no_inbound, bridge.client_id)
    async with again.connect() as uplink:
        assert await uplink.resume(1, 10) == 10  # everything is upstream: nothing is sent again
        await uplink.send(records(topic, 11, 12))
    # Nothing waits for a release at QoS 1, so a session the upstream did not keep is no cause for alarm.
    assert not [r for r in caplog.records if "no session for us" in r.getMessage()]
    received = await subscriber.expect_messages(12, timeout=WAIT_S)
    assert [(m.payload, m.qos) for m in received] == [(str(n).encode(), 1) for n in range(1, 13)]
    await subscriber.expect_no_message()


# --- $SYS through a real broker -----------------------------------------------------------------------------


async def test_sys_qos_downgraded_shows_the_downgrade(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    # $SYS/broker/bridge/<name>/qos_downgraded: "none" until a QoS 2 rule's message goes at QoS 1, then
    # "2->1". Read as a subscriber sees it: retained $SYS messages, the current value on subscribing
    # [MQTT-3.3.1-6] (3.1.1), then each change.
    server = shared_rabbitmq()
    prefix = unique("gw") + "/"
    subscriber = await cloud_subscriber(paho, server, prefix + "#")
    rule = BridgeTopic("sensors/#", "out", 2, remote_prefix=prefix)
    broker = await start_broker(
        bridges=(rabbit_bridge(server, unique("edgebus-gw"), (rule,)),), sys={"interval": 0.1}
    )
    watcher = paho("watcher")
    await watcher.connect(*broker.address)
    await watcher.subscribe("$SYS/broker/bridge/cloud/qos_downgraded", 0)
    assert (await watcher.expect_message(timeout=WAIT_S)).payload == b"none"

    device = paho("device")
    await device.connect(*broker.address)
    await device.publish("sensors/t", b"21.5", qos=1)
    forwarded = await subscriber.expect_message(timeout=WAIT_S)
    assert (forwarded.topic, forwarded.payload, forwarded.qos) == (prefix + "sensors/t", b"21.5", 1)
    seen: list[bytes] = []
    with trio.move_on_after(WAIT_S):
        while b"2->1" not in seen:
            seen.append((await watcher.expect_message(timeout=WAIT_S)).payload)
    assert b"2->1" in seen, f"qos_downgraded showed only {sorted(set(seen))}"

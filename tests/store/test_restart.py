"""Durable state across a broker restart: sessions, subscriptions, queues, in-flight QoS 1/2 flows,
retained messages, delayed wills. Real broker (in the test's nursery, same data dir), real sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from edgebus.protocol import MQTT_5, Properties, PubAck, PubComp, Publish, PubRec, PubRel
from edgebus.protocol.packets import Will
from tests.clients import PEER, RawClient, Sub
from tests.conftest import StartBroker

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's durable store")

PERSISTENT = Properties(session_expiry_interval=3600)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The store directory the broker is restarted on."""
    path = tmp_path / "store"
    path.mkdir()
    return path


async def _restart(start_broker: StartBroker, broker: object, data_dir: Path) -> tuple[str, int]:
    await broker.shutdown()  # type: ignore[attr-defined]
    again = await start_broker(data_dir=data_dir)
    return again.host, again.port


async def test_session_subscriptions_queue_and_retained_survive_a_restart(
    start_broker: StartBroker, data_dir: Path
) -> None:
    # The durability contract (issue 3): an acknowledged QoS 1/2 message reaches a persistent
    # session after a restart; the session resumes [MQTT-3.2.2-2] with its subscriptions
    # [MQTT-3.1.2-5]; retained messages survive.
    broker = await start_broker(data_dir=data_dir)
    sub = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await sub.mqtt_connect("meter-sub", clean_start=False, properties=PERSISTENT)
    await sub.subscribe(Sub("meters/#", 2))
    await sub.aclose()
    pub = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await pub.mqtt_connect("meter-pub")
    for i, qos in enumerate((1, 2, 1), start=1):
        await pub.send_packet(Publish(f"meters/{i}", f"reading {i}".encode(), qos=qos, packet_id=i))
        ack = await pub.receive_packet()
        assert isinstance(ack, PubAck if qos == 1 else PubRec)
    await pub.send_packet(Publish("doors/front", b"open", qos=1, retain=True, packet_id=9))
    assert isinstance(await pub.receive_packet(), PubAck)
    await pub.aclose()

    host, port = await _restart(start_broker, broker, data_dir)

    sub = await RawClient.connect(host, port, MQTT_5)
    connack = await sub.mqtt_connect("meter-sub", clean_start=False, properties=PERSISTENT)
    assert connack.session_present
    got = [await sub.receive_packet() for _ in range(3)]
    assert [(p.topic, p.payload, p.qos) for p in got if isinstance(p, Publish)] == [
        ("meters/1", b"reading 1", 1),
        ("meters/2", b"reading 2", 2),
        ("meters/3", b"reading 3", 1),
    ]
    # The subscription survived: a new message after the restart is delivered too.
    pub = await RawClient.connect(host, port, MQTT_5)
    await pub.mqtt_connect("meter-pub-2")
    await pub.send_packet(Publish("meters/4", b"after", qos=0))
    after = await sub.receive_packet()
    assert isinstance(after, Publish) and after.topic == "meters/4"
    # The retained message survived.
    reader = await RawClient.connect(host, port, MQTT_5)
    await reader.mqtt_connect("reader")
    await reader.subscribe(Sub("doors/#", 1))
    retained = await reader.receive_packet()
    assert isinstance(retained, Publish)
    assert (retained.topic, retained.payload, retained.retain) == ("doors/front", b"open", True)
    for client in (sub, pub, reader):
        await client.aclose()


async def test_unacknowledged_delivery_is_resent_with_dup_after_a_restart(
    start_broker: StartBroker, data_dir: Path
) -> None:
    # [MQTT-4.4.0-1]: on reconnect with a resumed session, unacknowledged PUBLISH packets are
    # resent with DUP=1 and their original packet identifiers - across a broker restart too.
    broker = await start_broker(data_dir=data_dir)
    sub = await RawClient.connect(broker.host, broker.port, 4)
    await sub.mqtt_connect("valve-3", clean_start=False)
    await sub.subscribe(Sub("valves/3/cmd", 1))
    pub = await RawClient.connect(broker.host, broker.port, 4)
    await pub.mqtt_connect("backend", clean_start=False)
    await pub.send_packet(Publish("valves/3/cmd", b"close", qos=1, packet_id=5))
    assert await pub.receive_packet() == PubAck(5)
    first = await sub.receive_packet()
    assert isinstance(first, Publish) and not first.dup
    await sub.aclose()  # never acknowledged
    await pub.aclose()

    host, port = await _restart(start_broker, broker, data_dir)

    sub = await RawClient.connect(host, port, 4)
    assert (await sub.mqtt_connect("valve-3", clean_start=False)).session_present
    again = await sub.receive_packet()
    assert isinstance(again, Publish)
    assert (again.payload, again.dup, again.packet_id) == (b"close", True, first.packet_id)
    await sub.send_packet(PubAck(first.packet_id or 0))
    await sub.expect_no_packet()
    await sub.aclose()


async def test_qos2_inbound_is_exactly_once_across_a_restart(
    start_broker: StartBroker, data_dir: Path
) -> None:
    # [MQTT-4.3.3-10]: until PUBREL, a resent PUBLISH with the same packet id is not delivered
    # again - the broker remembers the id across a restart.
    broker = await start_broker(data_dir=data_dir)
    sub = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await sub.mqtt_connect("alarm-sink", clean_start=False, properties=PERSISTENT)
    await sub.subscribe(Sub("alarms/#", 2))
    await sub.aclose()
    pub = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await pub.mqtt_connect("door-7", clean_start=False, properties=PERSISTENT)
    await pub.send_packet(Publish("alarms/door-7", b"forced", qos=2, packet_id=7))
    assert await pub.receive_packet() == PubRec(7)
    await pub.aclose()  # the broker restarts before PUBREL

    host, port = await _restart(start_broker, broker, data_dir)

    pub = await RawClient.connect(host, port, MQTT_5)
    assert (await pub.mqtt_connect("door-7", clean_start=False, properties=PERSISTENT)).session_present
    await pub.send_packet(Publish("alarms/door-7", b"forced", qos=2, dup=True, packet_id=7))
    assert await pub.receive_packet() == PubRec(7)
    await pub.send_packet(PubRel(7))
    assert await pub.receive_packet() == PubComp(7)
    sub = await RawClient.connect(host, port, MQTT_5)
    await sub.mqtt_connect("alarm-sink", clean_start=False, properties=PERSISTENT)
    delivered = await sub.receive_packet()
    assert isinstance(delivered, Publish) and delivered.payload == b"forced"
    assert delivered.packet_id is not None
    await sub.send_packet(PubRec(delivered.packet_id))
    assert await sub.receive_packet() == PubRel(delivered.packet_id)
    await sub.send_packet(PubComp(delivered.packet_id))
    await sub.expect_no_packet(0.5)  # delivered once, not twice
    for client in (pub, sub):
        await client.aclose()


async def test_qos2_outbound_resends_pubrel_not_publish_after_a_restart(
    start_broker: StartBroker, data_dir: Path
) -> None:
    # [MQTT-4.4.0-1]: a PUBLISH already PUBREC'd is continued with PUBREL after reconnect, never
    # resent (the client would take it for a new message).
    broker = await start_broker(data_dir=data_dir)
    sub = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await sub.mqtt_connect("sink", clean_start=False, properties=PERSISTENT)
    await sub.subscribe(Sub("cmd", 2))
    pub = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await pub.mqtt_connect("src")
    await pub.send_packet(Publish("cmd", b"open", qos=2, packet_id=1))
    assert await pub.receive_packet() == PubRec(1)
    delivered = await sub.receive_packet()
    assert isinstance(delivered, Publish) and delivered.packet_id is not None
    await sub.send_packet(PubRec(delivered.packet_id))
    assert await sub.receive_packet() == PubRel(delivered.packet_id)
    await sub.aclose()  # PUBCOMP never sent
    await pub.aclose()

    host, port = await _restart(start_broker, broker, data_dir)

    sub = await RawClient.connect(host, port, MQTT_5)
    await sub.mqtt_connect("sink", clean_start=False, properties=PERSISTENT)
    assert await sub.receive_packet() == PubRel(delivered.packet_id)
    await sub.send_packet(PubComp(delivered.packet_id))
    await sub.expect_no_packet(0.5)
    await sub.aclose()


async def test_delayed_will_survives_a_restart(start_broker: StartBroker, data_dir: Path) -> None:
    # §3.1.3.2.2 Will Delay Interval: the will is published when the delay ends, even if the broker
    # restarted in between.
    broker = await start_broker(data_dir=data_dir)
    device = await RawClient.connect(broker.host, broker.port, MQTT_5)
    will = Will("devices/d1/status", b"offline", 1, True, Properties(will_delay_interval=2))
    await device.mqtt_connect("d1", clean_start=False, properties=PERSISTENT, will=will)
    await device.aclose()  # no DISCONNECT: the will is due in 2 s
    await trio.sleep(0.2)

    host, port = await _restart(start_broker, broker, data_dir)

    watcher = await RawClient.connect(host, port, MQTT_5)
    await watcher.mqtt_connect("watcher")
    await watcher.subscribe(Sub("devices/#", 1))
    message = await watcher.receive_packet(timeout=5)
    assert isinstance(message, Publish) and (message.topic, message.payload) == (
        "devices/d1/status",
        b"offline",
    )
    await watcher.aclose()


@pytest.mark.parametrize("durability", ["os", "memory"])
async def test_other_durability_settings(start_broker: StartBroker, data_dir: Path, durability: str) -> None:
    # "os": stored without fsync, survives a broker restart; "memory": nothing stored at all.
    broker = await start_broker(data_dir=data_dir, storage={"durability": durability})
    pub = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await pub.mqtt_connect("p")
    await pub.send_packet(Publish("keep/me", b"1", qos=1, retain=True, packet_id=1))
    assert isinstance(await pub.receive_packet(), PubAck)
    await pub.aclose()
    await broker.shutdown()
    again = await start_broker(data_dir=data_dir, storage={"durability": durability})
    reader = await RawClient.connect(again.host, again.port, MQTT_5)
    await reader.mqtt_connect("r")
    await reader.subscribe(Sub("keep/#", 1))
    if durability == "memory":
        await reader.expect_no_packet(0.5)
        assert not (data_dir / "edgebus.db").exists()
    else:
        retained = await reader.receive_packet()
        assert isinstance(retained, Publish) and retained.payload == b"1"
    await reader.aclose()


async def test_retained_will_survives_a_restart(start_broker: StartBroker, data_dir: Path) -> None:
    # A will published with RETAIN [MQTT-3.1.2-17] becomes a retained message like any other, and
    # retained messages survive a restart.
    broker = await start_broker(data_dir=data_dir)
    device = await RawClient.connect(broker.host, broker.port, 4)
    await device.mqtt_connect("door-1", will=Will("doors/1/status", b"offline", 1, True))
    await device.aclose()  # no DISCONNECT: the will is published at once, retained
    await trio.sleep(0.3)

    host, port = await _restart(start_broker, broker, data_dir)

    reader = await RawClient.connect(host, port, MQTT_5)
    await reader.mqtt_connect("reader")
    await reader.subscribe(Sub("doors/#", 1))
    retained = await reader.receive_packet()
    assert isinstance(retained, Publish)
    assert (retained.topic, retained.payload, retained.retain) == ("doors/1/status", b"offline", True)
    await reader.aclose()

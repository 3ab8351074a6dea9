"""A real Mosquitto (Debian's 2.0.11) bridged *to* edgebus, as a gateway's neighbour would be: its bridge
connects with the bridge bit (``try_private true``, level 0x84), both directions, QoS 1 and 2, and the
TCP link cut in between by a proxy. Nothing is echoed back; nothing acknowledged is lost."""

from __future__ import annotations

import os
import pwd
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from edgebus_fleet.proxy import ChaosProxy

from tests.bridge.mosquitto_upstream import MOSQUITTO, Upstream, free_port
from tests.clients import MQTT_3_1_1, PahoClient, ReceivedMessage, edgebus_only
from tests.conftest import StartBroker

pytestmark = [
    edgebus_only("Mosquitto is the bridge here; edgebus is the broker under test"),
    pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto is not installed"),
]

#: Messages per (direction, QoS) before the cut, and again while the link is down.
COUNT = 20
LINK_DOWN_S = 2.0
DELIVERY_S = 20.0


def bridge_config(data_dir: Path, port: int, edgebus_port: int, protocol: str) -> str:
    """Mosquitto listening on ``port`` and bridged to edgebus with ``protocol`` (mqttv311, its default,
    or mqttv31), try_private true (its default) and a persistent bridge session."""
    return "\n".join(
        [
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "per_listener_settings false",
            "persistence false",
            "log_type all",
            "log_dest stderr",
            "allow_anonymous true",
            # Mosquitto 2.0.11 can leave a message queued behind its in-flight window to a local
            # subscriber until the next one arrives (seen here: received from the bridge, never sent
            # on); an unlimited window keeps that Mosquitto bug out of what this test measures.
            "max_inflight_messages 0",
            f"listener {port} 127.0.0.1",
            "connection edge",
            f"address 127.0.0.1:{edgebus_port}",
            "remote_clientid mosquitto-neighbour",  # 19 characters: within 3.1's 23
            f"bridge_protocol_version {protocol}",
            "cleansession false",
            "restart_timeout 1",
            "keepalive_interval 5",
            "topic q2/# both 2",
            "topic q1/# both 1",
            "",
        ]
    )


async def until_received(sender: PahoClient, receiver: PahoClient, topic: str) -> None:
    """Publish probes until one crosses the bridge (it is up and subscribed), then drop them."""
    with trio.fail_after(DELIVERY_S):
        while True:
            await sender.publish(topic, b"probe", 1)
            try:
                await receiver.expect_message(0.3)
                break
            except AssertionError:
                continue
    await trio.sleep(0.5)
    receiver.drain_messages()


async def collect(client: PahoClient, expected: set[tuple[str, bytes]]) -> Counter[tuple[str, bytes, int]]:
    """Messages until every one of ``expected`` arrived, then a quiet second (late echoes would show)."""
    got: list[ReceivedMessage] = []
    with trio.move_on_after(DELIVERY_S):
        while not expected <= {(m.topic, m.payload) for m in got}:
            got.append(await client.expect_message(DELIVERY_S))
    await trio.sleep(1.0)
    got += client.drain_messages()
    return Counter((m.topic, m.payload, m.qos) for m in got)


@pytest.mark.parametrize("protocol", ["mqttv311", "mqttv31"])
async def test_mosquitto_bridge_both_ways_through_a_link_cut(
    start_broker: StartBroker,
    nursery: trio.Nursery,
    paho: Callable[..., PahoClient],
    tmp_path: Path,
    protocol: str,
) -> None:
    """Mosquitto's bridge (level 0x84 on 3.1.1, "MQIsdp" 0x83 on 3.1) is accepted; its subscriptions get
    No Local, so a message it forwards is not sent back to it (its local subscriber sees each of its own
    messages once, not twice) [MQTT-3.8.3-3] of 5.0, and Retain As Published keeps a retained message
    retained across it [MQTT-3.3.1-12] of 5.0. QoS 2 crosses exactly once [MQTT-4.3.3-2], QoS 1 at least
    once [MQTT-4.3.2-2], in both directions, including what was published while the link was down."""
    edgebus = await start_broker()
    proxy = ChaosProxy(*edgebus.address)
    proxy_port: int = await nursery.start(proxy.serve)
    mosquitto = Upstream(tmp_path / "mosquitto", free_port())
    mosquitto.data_dir.mkdir()
    mosquitto.config_path.write_text(bridge_config(mosquitto.data_dir, mosquitto.port, proxy_port, protocol))
    await mosquitto.start()
    try:
        local = ("127.0.0.1", mosquitto.port)
        edge_sub, edge_pub = paho("edge-sub", MQTT_3_1_1), paho("edge-pub", MQTT_3_1_1)
        mosq_sub, mosq_pub = paho("mosq-sub", MQTT_3_1_1), paho("mosq-pub", MQTT_3_1_1)
        for client, address in ((edge_sub, edgebus.address), (edge_pub, edgebus.address)):
            assert (await client.connect(*address)).reason_code == 0
        for client, address in ((mosq_sub, local), (mosq_pub, local)):
            assert (await client.connect(*address)).reason_code == 0
        for client in (edge_sub, mosq_sub):
            assert await client.subscribe("q2/#", 2) == 2
            assert await client.subscribe("q1/#", 1) == 1
        await until_received(mosq_pub, edge_sub, "q1/probe/up")
        await until_received(edge_pub, mosq_sub, "q1/probe/down")
        mosq_sub.drain_messages()
        edge_sub.drain_messages()

        async def publish_round(tag: str) -> None:
            for i in range(COUNT):
                for qos in (1, 2):
                    await mosq_pub.publish(f"q{qos}/up/{tag}", f"{i}".encode(), qos)
                    await edge_pub.publish(f"q{qos}/down/{tag}", f"{i}".encode(), qos)

        await publish_round("before")
        # The link goes down (every TCP connection through the proxy reset), both sides keep publishing
        # while it is down, and Mosquitto reconnects after it (restart_timeout 1).
        proxy.flap(LINK_DOWN_S)
        await publish_round("during")

        expected = {
            (f"q{qos}/{way}/{tag}", f"{i}".encode())
            for qos in (1, 2)
            for way in ("up", "down")
            for tag in ("before", "during")
            for i in range(COUNT)
        }
        on_edgebus = await collect(edge_sub, expected)
        on_mosquitto = await collect(mosq_sub, expected)
        # Retain As Published: a retained message published on edgebus while the bridge is subscribed
        # crosses it retained, so Mosquitto keeps it for a subscription made after it (without the
        # option, the established subscription would get RETAIN 0 [MQTT-3.3.1-9] and Mosquitto would
        # keep nothing).
        await edge_pub.publish("q1/retained", b"kept", 1, retain=True)
        crossed = await mosq_sub.expect_message()
        assert (crossed.topic, crossed.payload) == ("q1/retained", b"kept")
        late = paho("mosq-late", MQTT_3_1_1)
        assert (await late.connect(*local)).reason_code == 0
        assert await late.subscribe("q1/retained", 1) == 1
        retained = await late.expect_message()
    finally:
        await mosquitto.kill()
    log = mosquitto.log_text()
    assert proxy.flaps == 1
    assert log.count("Connecting bridge") >= 2, log  # it did reconnect after the cut

    for side, seen in (("edgebus", on_edgebus), ("mosquitto", on_mosquitto)):
        # Nothing lost, in either direction, QoS as published (both subscriptions grant it).
        missing = expected - {(topic, payload) for topic, payload, _ in seen}
        assert not missing, (side, sorted(missing))
        for (topic, payload, qos), times in seen.items():
            assert qos == int(topic[1])
            if qos == 2:
                assert times == 1, (topic, payload, times)  # exactly once [MQTT-4.3.3-*]; no echo
            # QoS 1 crossing the bridge may arrive twice: a PUBLISH in flight when the link was cut is
            # sent again with DUP and delivered again (at least once, §4.3.2). Echoes are checked below.
    # No echo: a message published on one side reaches the local subscriber on that side once,
    # including QoS 1 (a copy sent back over the bridge would arrive a second time).
    for seen, own in ((on_mosquitto, "up"), (on_edgebus, "down")):
        echoed = {key: n for key, n in seen.items() if f"/{own}/" in key[0] and n > 1}
        assert not echoed, echoed
    assert (retained.topic, retained.payload, retained.retain) == ("q1/retained", b"kept", True)

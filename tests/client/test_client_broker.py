"""The trio-driven client (edgebus.client_trio) against real brokers over real sockets."""

from __future__ import annotations

import pytest
import trio

from edgebus.client_trio import ConnectError, open_mqtt_connection
from edgebus.core.client import ClientOptions, MessageReceived, MqttClient
from edgebus.protocol import MQTT_3_1_1, MQTT_5, Subscription
from tests.conftest import BrokerHandle


async def test_publish_each_qos_round_trip(any_broker: BrokerHandle) -> None:
    # §4.3: QoS 0, 1 and 2 each arrive once at a subscriber with the granted QoS.
    received: list[MessageReceived] = []
    sub = MqttClient(ClientOptions("rt-sub", protocol_level=MQTT_5))
    pub = MqttClient(ClientOptions("rt-pub", protocol_level=MQTT_3_1_1))
    host, port = any_broker.address

    def collect(event: object) -> None:
        if isinstance(event, MessageReceived):
            received.append(event)

    async with open_mqtt_connection(host, port, sub, on_event=collect) as s:
        suback = await s.subscribe([Subscription("rt/#", 2)])
        assert suback.suback.reason_codes == (2,)
        async with open_mqtt_connection(host, port, pub) as p:
            for qos in (0, 1, 2):
                ack = await p.publish_and_wait(f"rt/{qos}", f"m{qos}".encode(), qos)
                assert (ack is None) if qos == 0 else (ack is not None and ack.success)
        with trio.fail_after(5):
            while len(received) < 3:  # noqa: ASYNC110 - filled by the connection's reader task
                await trio.sleep(0.01)
    assert sorted((e.publish.topic, e.publish.payload, e.publish.qos) for e in received) == [
        ("rt/0", b"m0", 0),
        ("rt/1", b"m1", 1),
        ("rt/2", b"m2", 2),
    ]


async def test_persistent_session_receives_what_was_queued_while_away(any_broker: BrokerHandle) -> None:
    # §4.1 / [MQTT-3.1.2-4] (3.1.1 Clean Session 0): QoS 1/2 messages for a disconnected client with a
    # session are queued and delivered when it reconnects.
    host, port = any_broker.address
    got: list[bytes] = []
    device = MqttClient(ClientOptions("valve-q", clean_start=False, session_expiry_interval=60))

    def collect(event: object) -> None:
        if isinstance(event, MessageReceived):
            got.append(event.publish.payload)

    async with open_mqtt_connection(host, port, device, on_event=collect) as conn:
        await conn.subscribe([Subscription("cmd/valve-q", 2)])
    backend = MqttClient(ClientOptions("backend-q"))
    async with open_mqtt_connection(host, port, backend) as conn:
        await conn.publish_and_wait("cmd/valve-q", b"open", 2)
        await conn.publish_and_wait("cmd/valve-q", b"close", 1)
    async with open_mqtt_connection(host, port, device, on_event=collect) as conn:
        assert conn.connack is not None and conn.connack.session_present
        with trio.fail_after(5):
            while len(got) < 2:  # noqa: ASYNC110 - filled by the connection's reader task
                await trio.sleep(0.01)
    assert got == [b"open", b"close"]


async def test_keep_alive_keeps_an_idle_connection_open(any_broker: BrokerHandle) -> None:
    # [MQTT-3.1.2-23]/[MQTT-3.1.2-24]: PINGREQs within each Keep Alive keep the server from closing us.
    host, port = any_broker.address
    client = MqttClient(ClientOptions("idle", keep_alive=1))
    async with open_mqtt_connection(host, port, client) as conn:
        await trio.sleep(2.6)
        assert not conn.closed.is_set()
        ack = await conn.publish_and_wait("idle/t", b"still here", 1)
        assert ack is not None and ack.success


async def test_unreachable_broker_is_a_connect_error() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = MqttClient(ClientOptions("nobody"))
    with pytest.raises(ConnectError, match=r"(?i)refused"):
        async with open_mqtt_connection("127.0.0.1", port, client, connect_timeout=2):
            raise AssertionError("connected to a closed port")

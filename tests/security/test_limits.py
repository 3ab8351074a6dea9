"""[limits]: connection caps, the CONNECT deadline (slowloris), topic length and depth, subscriptions per
client, and message / byte rate quotas that throttle by pausing reads."""

from __future__ import annotations

import pytest
import trio

from edgebus.protocol import Connect, PingReq, PingResp, PubAck, Publish, SubAck, encode
from tests.clients import MQTT_3_1_1, MQTT_5, RawClient, Sub
from tests.conftest import StartBroker


async def test_global_connection_cap(start_broker: StartBroker) -> None:
    """max_connections: the connection beyond the cap is closed before anything is read; one more fits
    once a connection has gone."""
    broker = await start_broker(limits={"max_connections": 2})
    first = await RawClient.connect(*broker.address)
    second = await RawClient.connect(*broker.address)
    assert (await first.mqtt_connect("c1")).reason_code == 0
    assert (await second.mqtt_connect("c2")).reason_code == 0
    third = await RawClient.connect(*broker.address)
    assert await third.expect_closed() == []
    await third.aclose()
    await first.aclose()
    with trio.fail_after(3):
        while True:
            again = await RawClient.connect(*broker.address)
            await again.send_packet(Connect("c3"))
            if await again.receive_packet_or_close() is not None:
                break
            await again.aclose()
            await trio.sleep(0.05)
    for client in (second, again):
        await client.aclose()


async def test_per_listener_connection_cap(start_broker: StartBroker) -> None:
    """A [[listener]] max_connections counts that listener's connections only."""
    broker = await start_broker(listeners=[{"type": "tcp", "max_connections": 1}])
    assert broker.broker is not None
    host, port = broker.broker.listener_addresses[0][0]
    inside = await RawClient.connect(host, port)
    assert (await inside.mqtt_connect("l1")).reason_code == 0
    refused = await RawClient.connect(host, port)
    assert await refused.expect_closed() == []
    main = await RawClient.connect(*broker.address)  # server.listen is not affected
    assert (await main.mqtt_connect("m1")).reason_code == 0
    for client in (inside, refused, main):
        await client.aclose()


async def test_connect_deadline_counts_from_the_open_not_the_last_byte(start_broker: StartBroker) -> None:
    """Slowloris: a CONNECT trickled one byte at a time is still cut at connect_timeout after the open
    (the server closes a connection that does not send CONNECT in a reasonable time, §4.8 / §3.1)."""
    broker = await start_broker(limits={"connect_timeout": 1.0})
    client = await RawClient.connect(*broker.address)
    data = encode(Connect("slow"), MQTT_5)
    start = trio.current_time()
    closed_after = None
    for byte in data:
        await client.send(bytes((byte,)))
        await trio.sleep(0.1)
        if trio.current_time() - start > 2.5:
            break
        if await _closed(client):
            closed_after = trio.current_time() - start
            break
    assert closed_after is not None and 0.9 < closed_after < 2.0
    await client.aclose()


async def _closed(client: RawClient) -> bool:
    with trio.move_on_after(0.01):
        return await client.receive_packet_or_close() is None
    return False


@pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5], ids=["v311", "v5"])
async def test_topic_length_and_levels(start_broker: StartBroker, version: int) -> None:
    """max_topic_length / max_topic_levels: a longer or deeper filter gets SUBACK 0x8F Topic Filter invalid
    (5.0) / 0x80 (3.1.1); such a v5 QoS 1 PUBLISH gets PUBACK 0x90 Topic Name invalid (§3.4.2.1)."""
    broker = await start_broker(limits={"max_topic_length": 20, "max_topic_levels": 3})
    client = await RawClient.connect(*broker.address, version)
    assert (await client.mqtt_connect("limits")).reason_code == 0
    suback = await client.subscribe(Sub("a/b/c", 1), Sub("a/b/c/d", 1), Sub("x" * 21, 1), Sub("é" * 10, 1))
    assert isinstance(suback, SubAck)
    bad = 0x80 if version == MQTT_3_1_1 else 0x8F
    assert list(suback.reason_codes) == [1, bad, bad, 1]  # 10 x 'é' is 20 UTF-8 bytes: just fits
    await client.send_packet(Publish("a/b/c/d", b"deep", qos=1, packet_id=5))
    ack = await client.receive_packet()
    assert isinstance(ack, PubAck) and ack.reason_code == (0 if version == MQTT_3_1_1 else 0x90)
    await client.send_packet(Publish("a/b/c", b"ok", qos=1, packet_id=6))
    packets = await client.receive_packets(2)
    assert any(isinstance(p, Publish) and p.payload == b"ok" for p in packets)
    await client.expect_no_packet()  # the deep one was not delivered
    await client.aclose()


async def test_subscriptions_per_client(start_broker: StartBroker) -> None:
    """max_subscriptions_per_client: one more gets SUBACK 0x97 Quota exceeded; re-subscribing an existing
    filter still works (it replaces the subscription [MQTT-3.8.4-3])."""
    broker = await start_broker(limits={"max_subscriptions_per_client": 2})
    client = await RawClient.connect(*broker.address)
    assert (await client.mqtt_connect("subs")).reason_code == 0
    suback = await client.subscribe(Sub("a", 0), Sub("b", 0), Sub("c", 0))
    assert isinstance(suback, SubAck) and list(suback.reason_codes) == [0, 0, 0x97]
    suback = await client.subscribe(Sub("a", 1), packet_id=2)
    assert isinstance(suback, SubAck) and list(suback.reason_codes) == [1]
    await client.aclose()


async def test_message_rate_quota_throttles_without_disconnecting(start_broker: StartBroker) -> None:
    """max_message_rate = 20/s: the reader pauses before its next read once the budget is spent, so four
    batches of 20 QoS 1 messages (each sent when the previous one was acknowledged) take about 2 s (one
    second's burst, then 20/s); the connection stays open, nothing is lost, and another client is served
    at full speed meanwhile."""
    broker = await start_broker(limits={"max_message_rate": 20})
    fast = await RawClient.connect(*broker.address)
    assert (await fast.mqtt_connect("fast")).reason_code == 0
    other = await RawClient.connect(*broker.address)
    assert (await other.mqtt_connect("other")).reason_code == 0
    start = trio.current_time()
    acknowledged: list[int] = []
    for batch in range(4):
        ids = range(batch * 20 + 1, batch * 20 + 21)
        await fast.send(b"".join(encode(Publish("r", b"x", qos=1, packet_id=i), MQTT_5) for i in ids))
        if batch == 2:
            ping = trio.current_time()
            await other.send_packet(PingReq())
            assert isinstance(await other.receive_packet(), PingResp)
            assert trio.current_time() - ping < 0.2
        acknowledged += [
            p.packet_id for p in await fast.receive_packets(20, timeout=10) if isinstance(p, PubAck)
        ]
    elapsed = trio.current_time() - start
    assert sorted(acknowledged) == list(range(1, 81))
    assert 1.7 < elapsed < 4.0
    for client in (fast, other):
        await client.aclose()


async def test_byte_rate_quota_throttles(start_broker: StartBroker) -> None:
    """max_byte_rate = 20000 B/s: 60 kB of PUBLISHes take about 2 s to be acknowledged (1 s burst)."""
    broker = await start_broker(limits={"max_byte_rate": 20_000})
    client = await RawClient.connect(*broker.address)
    assert (await client.mqtt_connect("bytes")).reason_code == 0
    start = trio.current_time()
    packets = [encode(Publish("b", b"y" * 990, qos=1, packet_id=i), MQTT_5) for i in range(1, 61)]
    await client.send(b"".join(packets))
    acks = await client.receive_packets(60, timeout=10)
    elapsed = trio.current_time() - start
    assert len(acks) == 60
    assert 1.3 < elapsed < 4.5
    await client.aclose()

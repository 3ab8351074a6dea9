"""Established plain TCP connections are read by one shared poller task (edgebus.server.poller) rather than a
reader task each: what that changes must not be visible to a client. These tests check the edges where the
hand-over could show: shutdown, keep-alive, a client that closes, the listener's count."""

from __future__ import annotations

import trio

from edgebus.protocol import Disconnect, PingResp, Publish
from edgebus.protocol.packets import PingReq
from edgebus.server.broker import SHUTDOWN_GRACE_S
from tests.clients import MQTT_5, RawClient, Sub, edgebus_only
from tests.conftest import StartBroker


def polled(handle: object) -> int:
    broker = getattr(handle, "broker", None)
    assert broker is not None
    return len(broker.connections.poller)


async def wait_polled(handle: object, count: int) -> None:
    with trio.fail_after(5):
        while polled(handle) != count:  # noqa: ASYNC110 - the broker's state, polled
            await trio.sleep(0.01)


@edgebus_only("the shared poller")
async def test_established_connections_are_polled_and_shutdown_does_not_wait_for_the_grace_time(
    start_broker: StartBroker,
) -> None:
    """Shutdown sends v5 clients DISCONNECT 0x8B [MQTT-3.14.2-1] and returns once their connections have
    closed: the poller ends with its last connection, well before SHUTDOWN_GRACE_S."""
    broker = await start_broker()
    clients = [await RawClient.connect(*broker.address, MQTT_5) for _ in range(3)]
    for number, client in enumerate(clients):
        assert (await client.mqtt_connect(f"polled-{number}")).reason_code == 0
    await wait_polled(broker, 3)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker.shutdown)
        for client in clients:
            packet = await client.receive_packet()
            assert isinstance(packet, Disconnect) and packet.reason_code == 0x8B
            await client.aclose()
    assert trio.current_time() - started < SHUTDOWN_GRACE_S / 2


@edgebus_only("the shared poller")
async def test_shutdown_with_no_connection_returns_at_once(start_broker: StartBroker) -> None:
    broker = await start_broker()
    started = trio.current_time()
    await broker.shutdown()
    assert trio.current_time() - started < SHUTDOWN_GRACE_S / 2


@edgebus_only("the shared poller")
async def test_a_polled_connection_is_served_like_any_other(start_broker: StartBroker) -> None:
    """After the hand-over: PINGREQ is answered [MQTT-3.12.4-1], publications flow both ways, and a client
    that closes its socket is forgotten (the poller drops it)."""
    broker = await start_broker()
    subscriber = await RawClient.connect(*broker.address, MQTT_5)
    assert (await subscriber.mqtt_connect("polled-sub")).reason_code == 0
    await subscriber.subscribe(Sub("poll/#", 0))
    publisher = await RawClient.connect(*broker.address, MQTT_5)
    assert (await publisher.mqtt_connect("polled-pub")).reason_code == 0
    await wait_polled(broker, 2)
    await publisher.send_packet(PingReq())
    assert isinstance(await publisher.receive_packet(), PingResp)
    await publisher.send_packet(Publish("poll/x", b"through the poller"))
    message = await subscriber.receive_packet()
    assert isinstance(message, Publish) and message.payload == b"through the poller"
    await publisher.aclose()
    await wait_polled(broker, 1)
    assert broker.broker is not None
    with trio.fail_after(5):
        while len(broker.broker.connections.clients) != 1:  # noqa: ASYNC110 - the broker's state, polled
            await trio.sleep(0.01)
    await subscriber.aclose()


@edgebus_only("the shared poller")
async def test_a_polled_connection_that_goes_silent_meets_its_keep_alive(start_broker: StartBroker) -> None:
    """1.5 x Keep Alive without a packet: the server closes the connection [MQTT-3.1.2-24], on 5.0 with
    DISCONNECT 0x8D; the poller lets it go."""
    broker = await start_broker()
    client = await RawClient.connect(*broker.address, MQTT_5)
    assert (await client.mqtt_connect("polled-silent", keep_alive=1)).reason_code == 0
    await wait_polled(broker, 1)
    with trio.fail_after(5):
        packet = await client.receive_packet()
    assert isinstance(packet, Disconnect) and packet.reason_code == 0x8D
    assert await client.expect_closed() == []
    await wait_polled(broker, 0)
    await client.aclose()

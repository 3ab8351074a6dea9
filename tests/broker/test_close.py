"""A close with a reason code reaches the client (issue 11, item 4).

When the server closes a connection after a DISCONNECT while the client still sends, closing the socket
with unread bytes makes the kernel answer with RST, and the client loses the DISCONNECT it has not read
yet. edgebus flushes the DISCONNECT, shuts its write side (FIN), reads and discards what the client still
sends for a bounded time and number of bytes, then closes (ARCHITECTURE round 2, "closing with a reason
code").
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Awaitable, Callable

import trio

from edgebus.protocol import ConnAck, Connect, Disconnect, PingReq, PingResp, Publish, PubRec, PubRel, encode
from edgebus.protocol.packets import Properties
from tests.clients import MQTT_5, RawClient
from tests.conftest import StartBroker

RawFactory = Callable[..., Awaitable[RawClient]]

#: The server's Receive Maximum in these tests.
RECEIVE_MAXIMUM = 10
#: PINGREQs sent before the PUBLISHes: their PINGRESPs (20 KB) back up in the server's socket.
PINGS = 10_000


async def test_receive_maximum_exceeded_reason_code_reaches_a_client_that_keeps_sending(
    start_broker: StartBroker,
) -> None:
    """Receive Maximum + 1 QoS 2 PUBLISHes without PUBREL break [MQTT-3.3.4-7]: the server sends
    DISCONNECT 0x93 [MQTT-4.13.2-1] and closes. The client reads slowly (a small receive window, so the
    server's last packets wait in its socket) and goes on sending all along; it still reads every
    PINGRESP and PUBREC and the DISCONNECT with 0x93, not a reset that discards them."""
    broker = await start_broker(mqtt={"receive_maximum": RECEIVE_MAXIMUM})
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    await sock.connect(broker.address)
    client = RawClient(trio.SocketStream(sock), MQTT_5)
    connack = await client.mqtt_connect("too-many")
    assert connack.properties.receive_maximum == RECEIVE_MAXIMUM
    await client.send(
        encode(PingReq(), MQTT_5) * PINGS
        + b"".join(
            encode(Publish("close/t", b"x" * 100, qos=2, packet_id=packet_id), MQTT_5)
            for packet_id in range(1, RECEIVE_MAXIMUM + 2)
        )
    )

    async def keep_sending() -> None:  # as a busy device does, after the server has closed its end
        for packet_id in itertools.count(1):
            await client.send(encode(PubRel(packet_id % 100 + 1), MQTT_5) + encode(PingReq(), MQTT_5) * 50)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_sending)
        await trio.sleep(0.5)  # the server has closed by now; the client reads only from here on
        packets = await client.expect_closed(timeout=5)
        nursery.cancel_scope.cancel()
    await client.aclose()
    assert sum(isinstance(p, PingResp) for p in packets) == PINGS
    assert [p.packet_id for p in packets if isinstance(p, PubRec)] == list(range(1, RECEIVE_MAXIMUM + 1))
    assert [p.reason_code for p in packets if isinstance(p, Disconnect)] == [0x93]


async def test_a_closing_connection_is_drained_only_so_far(
    start_broker: StartBroker, raw: RawFactory
) -> None:
    """The drain after a close is bounded: a client that keeps sending after its DISCONNECT 0x93 is cut
    off after the close grace time, however much it sends."""
    broker = await start_broker(mqtt={"receive_maximum": RECEIVE_MAXIMUM})
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("keeps-sending")
    await client.send(
        b"".join(
            encode(Publish("close/t", b"x", qos=2, packet_id=packet_id), MQTT_5)
            for packet_id in range(1, RECEIVE_MAXIMUM + 2)
        )
    )
    cut = False
    with trio.move_on_after(10):
        while True:  # far more than CLOSE_DRAIN_BYTES, for far longer than CLOSE_FLUSH_TIMEOUT_S
            try:
                await client.stream.send_all(encode(PingReq(), MQTT_5) * 4096)
            except trio.BrokenResourceError:
                cut = True
                break
            await trio.sleep(0.01)
    assert cut, "the broker still read a closed connection after 10 s"
    assert broker.broker is not None
    assert not broker.broker.clients


async def test_connack_larger_than_the_clients_maximum_packet_size_is_not_sent(
    start_broker: StartBroker, raw: RawFactory
) -> None:
    """The server MUST NOT send a packet larger than the client's Maximum Packet Size [MQTT-3.1.2-24],
    the CONNACK included: a CONNACK with properties does not fit in 8 bytes, so the server closes
    without one."""
    broker = await start_broker()
    client = await raw(broker, MQTT_5)
    await client.send_packet(Connect("tiny", properties=Properties(maximum_packet_size=8)))
    packets = await client.expect_closed()
    assert not [p for p in packets if isinstance(p, ConnAck)], packets
    # With room for it, the same CONNECT is accepted.
    client = await raw(broker, MQTT_5)
    assert (
        await client.mqtt_connect("tiny", properties=Properties(maximum_packet_size=200))
    ).reason_code == 0

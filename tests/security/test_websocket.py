"""MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): the "mqtt" subprotocol, binary frames, paho's websockets
transport, and WebSocket over TLS."""

from __future__ import annotations

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

from edgebus.protocol import ConnAck, Connect, PacketDecoder, encode
from tests.clients import MQTT_5, RawClient, Sub
from tests.conftest import BrokerHandle, StartBroker
from tests.security.conftest import Certificates
from tests.security.helpers import PahoOverTransport


def ws_address(broker: BrokerHandle) -> tuple[str, int]:
    assert broker.broker is not None
    host, port = broker.broker.listener_addresses[0][0]
    return host, port


async def test_paho_over_websocket(start_broker: StartBroker) -> None:
    """paho's websockets transport (subprotocol "mqtt", binary frames [MQTT-6.0.0-1]) publishes to a plain
    TCP subscriber and receives from itself."""
    broker = await start_broker(listeners=[{"type": "ws", "path": "/mqtt"}])
    plain = await RawClient.connect(*broker.address)
    assert (await plain.mqtt_connect("tcp-side")).reason_code == 0
    await plain.subscribe(Sub("ws/#", 0))
    client = PahoOverTransport("paho-ws", websocket_path="/mqtt")
    assert await client.connect(*ws_address(broker)) == 0
    assert await client.subscribe("ws/#") == [1]
    await client.publish("ws/hello", b"from a browser-like client")
    assert await client.expect_message() == ("ws/hello", b"from a browser-like client")
    message = await plain.receive_packet()
    assert getattr(message, "payload", None) == b"from a browser-like client"
    await client.close()
    await plain.aclose()


async def test_paho_over_secure_websocket(start_broker: StartBroker, certificates: Certificates) -> None:
    """wss: WebSocket inside TLS, verified against the test CA."""
    broker = await start_broker(
        listeners=[
            {
                "type": "wss",
                "certfile": str(certificates.server_cert),
                "keyfile": str(certificates.server_key),
            }
        ]
    )
    client = PahoOverTransport("paho-wss", websocket_path="/mqtt", ca=certificates.ca)
    assert await client.connect(*ws_address(broker)) == 0
    assert await client.subscribe("s/#") == [1]
    await client.publish("s/1", b"secure")
    assert await client.expect_message() == ("s/1", b"secure")
    await client.close()


async def handshake(
    broker: BrokerHandle, target: str = "/mqtt", subprotocols: list[str] | None = None
) -> tuple[trio.SocketStream, WSConnection, list[object]]:
    stream = await trio.open_tcp_stream(*ws_address(broker))
    ws = WSConnection(ConnectionType.CLIENT)
    protocols = ["mqtt"] if subprotocols is None else subprotocols
    await stream.send_all(ws.send(Request(host="localhost", target=target, subprotocols=protocols)))
    events: list[object] = []
    with trio.fail_after(5):
        while not events:
            data = await stream.receive_some(65536)
            ws.receive_data(data or None)
            events.extend(ws.events())
            if not data:
                break
    return stream, ws, events


async def test_upgrade_selects_mqtt_and_carries_packets_split_across_frames(
    start_broker: StartBroker,
) -> None:
    """The server selects "mqtt" [MQTT-6.0.0-4]; a packet may span frames and the receiver must not assume
    packets align with frames [MQTT-6.0.0-2]."""
    broker = await start_broker(listeners=[{"type": "ws"}])
    stream, ws, events = await handshake(broker)
    assert isinstance(events[0], AcceptConnection) and events[0].subprotocol == "mqtt"
    connect = encode(Connect("split"), MQTT_5)
    for piece in (connect[:3], connect[3:7], connect[7:]):
        await stream.send_all(ws.send(BytesMessage(data=piece)))
    decoder = PacketDecoder(role="client", protocol_level=MQTT_5)
    packets: list[object] = []
    with trio.fail_after(5):
        while not packets:
            ws.receive_data(await stream.receive_some(65536))
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    packets.extend(decoder.receive_data(bytes(event.data)))
    assert isinstance(packets[0], ConnAck) and packets[0].reason_code == 0
    await stream.aclose()


async def test_wrong_path_or_missing_subprotocol_is_rejected(start_broker: StartBroker) -> None:
    """Another path gets HTTP 404; a client that does not offer "mqtt" [MQTT-6.0.0-3] gets 400."""
    broker = await start_broker(listeners=[{"type": "ws"}])
    stream, _, events = await handshake(broker, target="/other")
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 404
    await stream.aclose()
    stream, _, events = await handshake(broker, subprotocols=["chat"])
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 400
    await stream.aclose()


async def test_text_frame_closes_the_connection(start_broker: StartBroker) -> None:
    """MQTT travels in binary frames; any other data frame closes the connection [MQTT-6.0.0-1]."""
    broker = await start_broker(listeners=[{"type": "ws"}])
    stream, ws, events = await handshake(broker)
    assert isinstance(events[0], AcceptConnection)
    await stream.send_all(ws.send(TextMessage(data="\x10\x00")))
    closed = False
    with trio.fail_after(5):
        while not closed:
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
            closed = any(isinstance(event, CloseConnection) for event in ws.events())
    assert closed
    await stream.aclose()


async def test_a_close_with_a_reason_code_ends_with_a_normal_close_frame(start_broker: StartBroker) -> None:
    """When the server ends a v5 connection it sends DISCONNECT with the reason code [MQTT-4.13.2-1]; over
    WebSocket the MQTT bytes are followed by a close frame 1000 (RFC 6455 §7.4.1), so a browser client
    sees a clean close rather than an abnormal closure (1006, no close frame)."""
    broker = await start_broker(listeners=[{"type": "ws"}])
    stream, ws, events = await handshake(broker)
    assert isinstance(events[0], AcceptConnection)
    await stream.send_all(ws.send(BytesMessage(data=encode(Connect("ws-closed"), MQTT_5))))
    # A second CONNECT is a protocol error: DISCONNECT 0x82 [MQTT-3.1.0-2].
    decoder = PacketDecoder(role="client", protocol_level=MQTT_5)
    packets: list[object] = []
    close: CloseConnection | None = None
    sent_second = False
    with trio.fail_after(5):
        while close is None:
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    packets.extend(decoder.receive_data(bytes(event.data)))
                elif isinstance(event, CloseConnection):
                    close = event
            if packets and not sent_second:
                sent_second = True
                await stream.send_all(ws.send(BytesMessage(data=encode(Connect("ws-closed"), MQTT_5))))
    assert isinstance(packets[0], ConnAck) and packets[0].reason_code == 0
    assert [type(p).__name__ for p in packets[1:]] == ["Disconnect"]
    assert getattr(packets[1], "reason_code", None) == 0x82
    assert close is not None and close.code == 1000
    await stream.aclose()

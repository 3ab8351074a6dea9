"""CONNECT / CONNACK on both versions: acceptance, client identifiers, takeover, keep alive, shutdown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from edgebus.protocol import ConnAck, Connect, Disconnect, PingReq, PingResp
from tests.clients import (
    BOTH_VERSIONS,
    MQTT_3_1_1,
    MQTT_5,
    PEER,
    PahoClient,
    RawClient,
    assert_protocol_close,
    edgebus_only,
    mosquitto_deviates,
    raw_packet,
    utf8,
)
from tests.conftest import BrokerHandle, StartBroker

RawFactory = Callable[..., Awaitable[RawClient]]


@BOTH_VERSIONS
async def test_connack_accepts_clean_connection(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """A valid CONNECT gets CONNACK 0 [MQTT-3.1.4-4] (3.1.1) / [MQTT-3.1.4-5] (5.0), and with a clean
    session Session Present is 0 [MQTT-3.2.2-1] (3.1.1) / [MQTT-3.2.2-2] (5.0)."""
    client = paho("client", version)
    connack = await client.connect(*broker.address, clean_start=True)
    assert connack.reason_code == 0
    assert connack.session_present is False


@BOTH_VERSIONS
async def test_connack_is_the_first_packet(broker: BrokerHandle, raw: RawFactory, version: int) -> None:
    """The first packet from the server is a CONNACK [MQTT-3.2.0-1] (3.1.1) / [MQTT-3.2.0-1] (5.0), with
    reserved flags 0 [MQTT-3.2.2-1] (5.0); a PINGREQ sent right behind the CONNECT is answered after it."""
    client = await raw(broker, version)
    connect = Connect(client_id="raw-first", protocol_level=version)
    await client.send_packet(connect)
    await client.send_packet(PingReq())
    connack = await client.receive_packet()
    assert isinstance(connack, ConnAck)
    assert (connack.session_present, connack.reason_code) == (False, 0)
    assert isinstance(await client.receive_packet(), PingResp)  # [MQTT-3.12.4-1]


async def test_unsupported_protocol_level_is_refused(broker: BrokerHandle, raw: RawFactory) -> None:
    """Protocol Level 6: CONNACK 0x01 "unacceptable protocol level" and close [MQTT-3.1.2-2] (3.1.1); a 5.0
    server MAY answer 0x84 "Unsupported Protocol Version" instead [MQTT-3.1.2-2] (5.0)."""
    client = await raw(broker, MQTT_3_1_1)
    client.reset_decoder(None)  # the reply may be in either version's CONNACK format
    body = utf8("MQTT") + bytes((6, 0x02)) + (60).to_bytes(2, "big") + utf8("level6")
    await client.send(raw_packet(0x10, body))
    packets = await client.expect_closed()
    assert len(packets) == 1, packets
    (connack,) = packets
    assert isinstance(connack, ConnAck)
    assert connack.session_present is False
    assert connack.reason_code in (0x01, 0x84)


async def test_zero_length_client_id_accepted_with_clean_session_v311(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """A zero-byte ClientId with CleanSession 1 is accepted with an assigned id [MQTT-3.1.3-6] (3.1.1),
    and the connection works."""
    client = paho("", MQTT_3_1_1)
    assert (await client.connect(*broker.address, clean_start=True)).reason_code == 0
    assert await client.subscribe("anon/t", 1) == 1
    await client.publish("anon/t", b"self", 1)
    assert (await client.expect_message()).payload == b"self"


async def test_zero_length_client_id_refused_without_clean_session_v311(
    broker: BrokerHandle, raw: RawFactory
) -> None:
    """A zero-byte ClientId with CleanSession 0: CONNACK 0x02 "identifier rejected", Session Present 0,
    then close [MQTT-3.1.3-8] [MQTT-3.2.2-4] [MQTT-3.2.2-5] (3.1.1)."""
    client = await raw(broker, MQTT_3_1_1)
    await client.send_packet(Connect(client_id="", protocol_level=MQTT_3_1_1, clean_start=False))
    packets = await client.expect_closed()
    assert packets == [ConnAck(session_present=False, reason_code=0x02)]


async def test_zero_length_client_id_gets_assigned_identifier_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """On 5.0 the CONNACK carries an Assigned Client Identifier not used by any other session
    [MQTT-3.1.3-7] [MQTT-3.2.2-16] (5.0)."""
    first, second = paho("", MQTT_5), paho("", MQTT_5)
    first_ack = await first.connect(*broker.address)
    second_ack = await second.connect(*broker.address)
    assert first_ack.reason_code == second_ack.reason_code == 0
    first_id = first_ack.properties.get("assigned_client_identifier")
    second_id = second_ack.properties.get("assigned_client_identifier")
    assert first_id and second_id
    assert first_id != second_id


async def test_takeover_disconnects_existing_client_v311(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """A second connection with the same ClientId disconnects the first [MQTT-3.1.4-2] (3.1.1); the new
    one works."""
    old = paho("same-id", MQTT_3_1_1)
    await old.connect(*broker.address)
    new = paho("same-id", MQTT_3_1_1)
    assert (await new.connect(*broker.address)).reason_code == 0
    ended = await old.expect_disconnect()
    assert ended.from_server is False  # 3.1.1 has no server DISCONNECT: the connection is just closed
    await new.subscribe("takeover/t", 1)
    await new.publish("takeover/t", b"still here", 1)
    assert (await new.expect_message()).payload == b"still here"


@mosquitto_deviates("closes the old 5.0 connection without DISCONNECT 0x8E [MQTT-3.1.4-3]")
async def test_takeover_sends_session_taken_over_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """The existing 5.0 client gets DISCONNECT 0x8E "Session taken over" and is closed [MQTT-3.1.4-3]
    (5.0)."""
    old = paho("same-id", MQTT_5)
    await old.connect(*broker.address)
    new = paho("same-id", MQTT_5)
    assert (await new.connect(*broker.address)).reason_code == 0
    ended = await old.expect_disconnect()
    assert (ended.from_server, ended.reason_code) == (True, 0x8E)
    await new.subscribe("takeover/t", 1)
    await new.publish("takeover/t", b"still here", 1)
    assert (await new.expect_message()).payload == b"still here"


@BOTH_VERSIONS
async def test_keep_alive_enforced_at_one_and_a_half_times(
    broker: BrokerHandle, raw: RawFactory, version: int
) -> None:
    """A client silent for 1.5 x Keep Alive is disconnected [MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22]
    (5.0); on 5.0 with DISCONNECT 0x8D "Keep Alive timeout" (§4.13, reason code table)."""
    client = await raw(broker, version)
    connack = await client.mqtt_connect("silent", keep_alive=1)
    assert connack.reason_code == 0
    started = trio.current_time()
    if PEER == "edgebus":
        earliest, latest = 1.4, 3.0
    else:
        # Mosquitto 2.0.11 deviates: it checks keep alives coarsely and was seen closing a keep alive of
        # 1 s after 1.3 s and after 4.6 s. The bounds are relaxed for it so that the rest is still checked.
        earliest, latest = 1.0, 8.0
    packets = await client.expect_closed(timeout=latest + 1.0)
    elapsed = trio.current_time() - started
    assert earliest <= elapsed <= latest, f"closed after {elapsed:.2f} s for a keep alive of 1 s"
    assert_protocol_close(packets, version, {0x8D})


async def test_pings_keep_the_connection_alive(broker: BrokerHandle, raw: RawFactory) -> None:
    """PINGREQ within the keep alive is answered with PINGRESP [MQTT-3.12.4-1] and keeps the connection
    open past 1.5 x Keep Alive [MQTT-3.1.2-22] (5.0)."""
    client = await raw(broker, MQTT_5)
    await client.mqtt_connect("pinger", keep_alive=1)
    for _ in range(5):
        await trio.sleep(0.5)
        await client.send_packet(PingReq())
        assert isinstance(await client.receive_packet(timeout=1.0), PingResp)


async def test_server_keep_alive_caps_the_client_keep_alive_v5(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """A Keep Alive above the server's maximum is answered with Server Keep Alive = the maximum, which the
    client must then use [MQTT-3.2.2-21] (5.0), §3.2.2.3.14."""
    broker = await start_broker(mqtt={"max_keep_alive": 10})
    client = paho("long-keepalive", MQTT_5)
    connack = await client.connect(*broker.address, keep_alive=60)
    assert connack.properties.get("server_keep_alive") == 10


async def test_connack_announces_configured_limits_v5(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """CONNACK carries Receive Maximum, Maximum QoS, Topic Alias Maximum and Maximum Packet Size
    (§3.2.2.3.3, §3.2.2.3.4, §3.2.2.3.6, §3.2.2.3.8); a server without QoS 2 says so [MQTT-3.2.2-9] (5.0)."""
    broker = await start_broker(
        mqtt={"receive_maximum": 7, "max_qos": 1, "topic_alias_maximum": 4, "max_packet_size": 4096}
    )
    client = paho("limits", MQTT_5)
    properties = (await client.connect(*broker.address)).properties
    assert properties.get("receive_maximum") == 7
    assert properties.get("maximum_qos") == 1
    assert properties.get("topic_alias_maximum") == 4
    assert properties.get("maximum_packet_size") == 4096


@edgebus_only("DISCONNECT 0x8B on shutdown is edgebus's choice (§4.13 SHOULD); Mosquitto 2.0.11 just closes")
async def test_shutdown_sends_server_shutting_down_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """A graceful shutdown tells 5.0 clients DISCONNECT 0x8B "Server shutting down" (§3.14.2.1) and closes
    3.1.1 clients; then the broker stops (edgebus: ``serve()`` returns)."""
    v5_client, v311_client = paho("v5", MQTT_5), paho("v311", MQTT_3_1_1)
    await v5_client.connect(*broker.address)
    await v311_client.connect(*broker.address)
    await broker.shutdown()
    ended = await v5_client.expect_disconnect()
    assert (ended.from_server, ended.reason_code) == (True, 0x8B)
    assert (await v311_client.expect_disconnect()).from_server is False


async def test_connect_reconnect_after_normal_disconnect(broker: BrokerHandle, raw: RawFactory) -> None:
    """After a client's DISCONNECT 0x00 the server closes the connection (§3.14.4) and the same ClientId
    can connect again at once [MQTT-3.1.4-5] (5.0)."""
    first = await raw(broker, MQTT_5)
    await first.mqtt_connect("again")
    await first.send_packet(Disconnect(reason_code=0))
    assert await first.expect_closed() == []
    second = await raw(broker, MQTT_5)
    assert (await second.mqtt_connect("again")).reason_code == 0

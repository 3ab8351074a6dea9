"""The client-role protocol machine (edgebus.core.client) against scripted server packets: no network."""

from __future__ import annotations

import pytest

from edgebus.core.client import (
    ClientOptions,
    ClientState,
    Connected,
    ConnectionRefused,
    KeepAliveTimeout,
    MessageReceived,
    MqttClient,
    ProtocolViolation,
    PublishAcknowledged,
    SubscribeAcknowledged,
)
from edgebus.protocol import (
    MQTT_3_1_1,
    MQTT_5,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketDecoder,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)


class Server:
    """The server's end of the wire: decodes what the client wrote, encodes what it answers."""

    def __init__(self, client: MqttClient, level: int = MQTT_5) -> None:
        self.client = client
        self.level = level
        self.decoder = PacketDecoder(role="server")

    def read(self, now: float = 0.0) -> list[Packet]:
        data = b"".join(self.client.take_output(now))
        return self.decoder.receive_data(data) if data else []

    def send(self, *packets: Packet) -> None:
        for packet in packets:
            self.client.receive_data(encode(packet, self.level))

    def events(self, now: float = 0.0) -> list[object]:
        out: list[object] = []
        while (event := self.client.next_event(now)) is not None:
            out.append(event)
        return out

    def reconnect(self) -> None:
        self.client.connection_lost()
        self.decoder = PacketDecoder(role="server")


def connected(
    level: int = MQTT_5, connack: ConnAck | None = None, **options: object
) -> tuple[MqttClient, Server]:
    client = MqttClient(ClientOptions("dev-1", protocol_level=level, **options))  # type: ignore[arg-type]
    server = Server(client, level)
    client.connect(0.0)
    (connect,) = server.read()
    assert isinstance(connect, Connect)
    server.send(connack or ConnAck())
    events = server.events()
    assert len(events) == 1 and isinstance(events[0], Connected)
    return client, server


def test_connect_carries_the_options() -> None:
    # §3.1.2: Clean Start, Keep Alive, Session Expiry Interval and Receive Maximum go into CONNECT.
    client = MqttClient(
        ClientOptions(
            "meter-7", clean_start=False, keep_alive=30, session_expiry_interval=600, receive_maximum=10
        )
    )
    client.connect(0.0)
    (connect,) = Server(client).read()
    assert isinstance(connect, Connect)
    assert connect.client_id == "meter-7" and not connect.clean_start and connect.keep_alive == 30
    assert connect.properties.session_expiry_interval == 600
    assert connect.properties.receive_maximum == 10


def test_first_packet_must_be_connack() -> None:
    # [MQTT-3.2.0-1]: the first packet from the server is CONNACK; anything else is a protocol error.
    client = MqttClient(ClientOptions("d"))
    server = Server(client)
    client.connect(0.0)
    server.read()
    server.send(PingResp())
    (event,) = server.events()
    assert isinstance(event, ProtocolViolation)
    assert client.state is ClientState.CLOSING


def test_refused_connack_is_an_event() -> None:
    client = MqttClient(ClientOptions("d", protocol_level=MQTT_3_1_1))
    server = Server(client, MQTT_3_1_1)
    client.connect(0.0)
    server.read()
    server.send(ConnAck(False, 5))  # 3.1.1 return code 5: not authorized
    (event,) = server.events()
    assert isinstance(event, ConnectionRefused) and event.reason_code == 5


def test_qos1_publish_is_acknowledged_with_its_token() -> None:
    # §4.3.2: PUBLISH QoS 1 with a packet id; the PUBACK with that id ends the flow.
    client, server = connected()
    assert client.publish("a/b", b"x", qos=1, token="t1")
    (publish,) = server.read()
    assert isinstance(publish, Publish) and publish.qos == 1 and publish.packet_id
    server.send(PubAck(publish.packet_id))
    (event,) = server.events()
    assert isinstance(event, PublishAcknowledged) and event.token == "t1" and event.success
    assert not client.inflight


def test_qos2_publish_flow() -> None:
    # §4.3.3: PUBLISH -> PUBREC -> PUBREL -> PUBCOMP; the PUBREL carries the same packet id.
    client, server = connected()
    client.publish("a/b", b"x", qos=2, token="t2")
    (publish,) = server.read()
    assert isinstance(publish, Publish) and publish.packet_id is not None
    server.send(PubRec(publish.packet_id))
    assert server.events() == []
    (pubrel,) = server.read()
    assert pubrel == PubRel(publish.packet_id)
    server.send(PubComp(publish.packet_id))
    (event,) = server.events()
    assert isinstance(event, PublishAcknowledged) and event.token == "t2" and event.qos == 2


def test_send_window_follows_the_servers_receive_maximum() -> None:
    # [MQTT-4.9.0-2]: no more unacknowledged QoS 1/2 PUBLISH packets than the server's Receive Maximum.
    client, server = connected(connack=ConnAck(properties=Properties(receive_maximum=2)))
    for n in range(5):
        client.publish("t", bytes([n]), qos=1)
    first = server.read()
    assert [p.payload for p in first if isinstance(p, Publish)] == [b"\x00", b"\x01"]
    assert server.read() == []
    assert isinstance(first[0], Publish) and first[0].packet_id is not None
    server.send(PubAck(first[0].packet_id))
    server.events()
    assert [p.payload for p in server.read() if isinstance(p, Publish)] == [b"\x02"]


def test_resend_with_dup_after_reconnect_when_the_session_is_present() -> None:
    # [MQTT-4.4.0-1]: on reconnect with a session, unacknowledged PUBLISH (DUP set) and PUBREL packets
    # are resent with their original packet ids, in order.
    client, server = connected(clean_start=False, session_expiry_interval=60)
    client.publish("q2", b"two", qos=2)
    client.publish("q1", b"one", qos=1)
    q2, q1 = server.read()
    assert isinstance(q2, Publish) and isinstance(q1, Publish)
    server.send(PubRec(q2.packet_id))  # type: ignore[arg-type]
    server.events()
    server.read()  # the PUBREL, lost with the connection
    server.reconnect()
    client.connect(1.0)
    server.read()
    server.send(ConnAck(session_present=True))
    assert isinstance(server.events()[0], Connected)
    pubrel, resent = server.read()
    assert pubrel == PubRel(q2.packet_id)  # type: ignore[arg-type]
    assert isinstance(resent, Publish) and resent.dup and resent.packet_id == q1.packet_id


def test_without_a_session_unacknowledged_messages_are_sent_again_as_new() -> None:
    # [MQTT-3.2.2-5]: Session Present 0 -> the client discards its session state; the messages the
    # server never acknowledged are published again (DUP 0) rather than lost.
    client, server = connected(clean_start=False, session_expiry_interval=60)
    client.publish("t", b"m", qos=1)
    server.read()
    server.reconnect()
    client.connect(1.0)
    server.read()
    server.send(ConnAck(session_present=False))
    server.events()
    (again,) = server.read()
    assert isinstance(again, Publish) and again.payload == b"m" and not again.dup


def test_inbound_qos2_is_delivered_once() -> None:
    # [MQTT-4.3.3-9]: a resent QoS 2 PUBLISH with a packet id awaiting PUBREL is not delivered again.
    _, server = connected()
    message = Publish("cmd", b"open", qos=2, packet_id=7)
    server.send(message)
    (event,) = server.events()
    assert isinstance(event, MessageReceived) and event.publish.payload == b"open"
    assert server.read() == [PubRec(7)]
    server.send(Publish("cmd", b"open", qos=2, packet_id=7, dup=True))
    assert server.events() == []
    assert server.read() == [PubRec(7)]
    server.send(PubRel(7))
    server.events()
    assert server.read() == [PubComp(7)]  # [MQTT-4.3.3-11]


def test_qos0_is_not_kept_without_a_connection() -> None:
    client = MqttClient(ClientOptions("d"))
    assert not client.publish("t", b"x", qos=0)
    assert client.publish("t", b"x", qos=1)  # QoS 1 waits for the next connection


def test_keep_alive_ping_and_timeout() -> None:
    # [MQTT-3.1.2-23]: a packet within each Keep Alive; no PINGRESP in time means a broken connection.
    client, server = connected(keep_alive=10)
    assert server.read(5.0) == []
    assert client.next_deadline() == pytest.approx(10.0)
    assert server.read(10.0) == [PingReq()]
    server.send(PingResp())
    assert server.events(11.0) == []
    assert server.read(20.0) == [PingReq()]
    assert server.events(29.0) == []
    (event,) = server.events(30.0)
    assert isinstance(event, KeepAliveTimeout)


def test_server_keep_alive_overrides_ours() -> None:
    # [MQTT-3.2.2-21]: the client uses the Server Keep Alive value instead of its own.
    _, server = connected(keep_alive=60, connack=ConnAck(properties=Properties(server_keep_alive=5)))
    assert server.read(5.0) == [PingReq()]


def test_subscribe_and_suback() -> None:
    client, server = connected(MQTT_3_1_1)
    pid = client.subscribe([Subscription("cmd/#", 1)])
    (subscribe,) = server.read()
    assert isinstance(subscribe, Subscribe) and subscribe.packet_id == pid
    server.send(SubAck(pid, (1,)))
    (event,) = server.events()
    assert isinstance(event, SubscribeAcknowledged) and event.suback.reason_codes == (1,)


def test_packet_ids_are_not_reused_while_in_flight() -> None:
    # [MQTT-2.2.1-3]: a new packet id is one not in use.
    client, server = connected()
    for _ in range(3):
        client.publish("t", b"", qos=1)
    ids = [p.packet_id for p in server.read() if isinstance(p, Publish)]
    pid = client.subscribe([Subscription("x")])
    assert len(set(ids)) == 3 and pid not in ids


def test_server_disconnect_closes() -> None:
    client, server = connected()
    server.send(Disconnect(0x8B))
    (event,) = server.events()
    assert type(event).__name__ == "DisconnectReceived"
    assert client.state is ClientState.CLOSING


def test_maximum_qos_refuses_instead_of_sending() -> None:
    # [MQTT-3.2.2-11]: the client must not send a QoS above the server's Maximum QoS.
    client, server = connected(connack=ConnAck(properties=Properties(maximum_qos=1)))
    client.publish("t", b"", qos=2, token="too-high")
    assert server.read() == []
    (event,) = server.events()
    assert isinstance(event, PublishAcknowledged) and not event.success and event.token == "too-high"


# --- caller-chosen packet ids and release(): what the upstream bridge builds exactly-once on -------------


def test_publish_with_a_chosen_packet_id_and_dup() -> None:
    # A chosen packet id is the one on the wire, through the whole QoS 2 flow (§4.3.3); DUP is set on the
    # first transmission when the caller says it may be a re-delivery [MQTT-3.3.1-1].
    client, server = connected()
    assert client.publish("up/a", b"x", qos=2, token="r7", packet_id=7, dup=True)
    assert client.publish("up/b", b"y", qos=1, token="r300", packet_id=300)
    q2, q1 = server.read()
    assert isinstance(q2, Publish) and q2.packet_id == 7 and q2.dup and q2.qos == 2
    assert isinstance(q1, Publish) and q1.packet_id == 300 and not q1.dup
    server.send(PubRec(7), PubAck(300))
    (acked_300,) = server.events()
    assert acked_300 == PublishAcknowledged("r300", 1, 300, 0)
    assert server.read() == [PubRel(7)]
    server.send(PubComp(7))
    assert server.events() == [PublishAcknowledged("r7", 2, 7, 0)]


def test_qos0_takes_no_packet_id_and_no_dup() -> None:
    # [MQTT-2.2.1-2]: a QoS 0 PUBLISH has no packet id; [MQTT-3.3.1-2]: its DUP flag is 0.
    client, _ = connected()
    with pytest.raises(ValueError, match="QoS 0"):
        client.publish("t", b"", qos=0, packet_id=3)
    with pytest.raises(ValueError, match="QoS 0"):
        client.publish("t", b"", qos=0, dup=True)
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        client.publish("t", b"", qos=1, packet_id=0x10000)


def test_allocated_ids_avoid_ids_chosen_by_queued_messages() -> None:
    # [MQTT-2.2.1-3]: an id handed to SUBSCRIBE is not in use, and not one a queued message will use.
    client, server = connected(max_inflight=1)
    client.publish("t", b"first", qos=1)  # allocated: 1
    client.publish("t", b"second", qos=1, packet_id=2)  # waits for the window
    (first,) = server.read()
    assert isinstance(first, Publish) and first.packet_id == 1
    pid = client.subscribe([Subscription("x")])
    assert pid == 3
    (subscribe,) = server.read()
    assert isinstance(subscribe, Subscribe) and subscribe.packet_id == 3
    server.send(PubAck(1))
    server.events()
    (second,) = server.read()
    assert isinstance(second, Publish) and second.packet_id == 2


def test_a_message_waits_while_its_chosen_id_is_in_use() -> None:
    # [MQTT-2.2.1-3]: a packet id is not reused while its flow runs; the message (and everything queued
    # after it, to keep the order) waits until the PUBCOMP frees the id.
    client, server = connected()
    client.release(5, token="rel")
    client.publish("t", b"five", qos=2, packet_id=5)
    client.publish("t", b"after", qos=1)
    assert server.read() == [PubRel(5)]
    assert not client.has_output()
    server.send(PubComp(5))
    assert server.events() == [PublishAcknowledged("rel", 2, 5, 0)]
    assert client.has_output()
    five, after = server.read()
    assert isinstance(five, Publish) and five.packet_id == 5 and five.payload == b"five"
    assert isinstance(after, Publish) and after.payload == b"after" and after.packet_id not in (5, None)


def test_release_sends_pubrel_and_the_pubcomp_ends_the_flow() -> None:
    # A new process releases an id the receiver may still hold for a QoS 2 message (§4.3.3, the sender's
    # PUBREL after PUBREC [MQTT-4.3.3-4]); every PUBREL is answered by PUBCOMP [MQTT-4.3.3-11], 0x92 when
    # the receiver holds nothing under the id (5.0, §3.7.2.1): either way the flow ends with the code.
    client, server = connected()
    client.release(9, token="a")
    client.release(10, token="b")
    assert server.read() == [PubRel(9), PubRel(10)]
    with pytest.raises(ValueError, match="in use"):
        client.release(9)
    server.send(PubComp(9), PubComp(10, 0x92))
    assert server.events() == [PublishAcknowledged("a", 2, 9, 0), PublishAcknowledged("b", 2, 10, 0x92)]
    assert not client.inflight


def test_release_is_resent_after_a_reconnect_with_the_session() -> None:
    # [MQTT-4.4.0-1]: an unacknowledged PUBREL is resent when the session is resumed.
    client, server = connected(clean_start=False, session_expiry_interval=60)
    client.release(4, token="r4")
    assert server.read() == [PubRel(4)]
    server.reconnect()
    with pytest.raises(RuntimeError, match="connection"):
        client.release(5)
    client.connect(1.0)
    server.read()
    server.send(ConnAck(session_present=True))
    server.events()
    assert server.read() == [PubRel(4)]


def test_a_chosen_id_is_kept_when_the_message_is_sent_again_as_new() -> None:
    # Session Present 0 [MQTT-3.2.2-5]: a message the server never acknowledged is published again; with a
    # chosen id it goes out under that id again (the id is the message's, not the connection's).
    client, server = connected(clean_start=False, session_expiry_interval=60)
    client.publish("t", b"m", qos=2, packet_id=42)
    server.read()
    server.reconnect()
    client.connect(1.0)
    server.read()
    server.send(ConnAck(session_present=False))
    server.events()
    (again,) = server.read()
    assert isinstance(again, Publish) and again.packet_id == 42 and again.payload == b"m"

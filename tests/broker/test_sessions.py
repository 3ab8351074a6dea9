"""Sessions: clean session / clean start, session expiry, offline queues and their overflow policies."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.clients import MQTT_3_1_1, MQTT_5, PahoClient, WillSpec, edgebus_only
from tests.conftest import BrokerHandle, StartBroker


async def test_persistent_session_keeps_subscriptions_and_queues_messages_v311(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """CleanSession 0: the session survives the connection [MQTT-3.1.2-4], QoS 1/2 messages published
    meanwhile are stored [MQTT-3.1.2-5] and delivered on return with Session Present 1 [MQTT-3.2.2-2]
    (3.1.1)."""
    subscriber = paho("durable", MQTT_3_1_1)
    assert (await subscriber.connect(*broker.address, clean_start=False)).session_present is False
    await subscriber.subscribe("sess/t", 2)
    await subscriber.disconnect()
    publisher = paho("pub", MQTT_3_1_1)
    await publisher.connect(*broker.address)
    await publisher.publish("sess/t", b"q1", 1)
    await publisher.publish("sess/t", b"q0", 0)
    await publisher.publish("sess/t", b"q2", 2)
    connack = await subscriber.connect(*broker.address, clean_start=False)
    assert connack.session_present is True
    first = await subscriber.expect_message()
    second = await subscriber.expect_message()
    rest = [first, second]
    if first.payload == b"q0" or second.payload == b"q0":  # QoS 0 MAY be queued too (§3.1.2.4)
        rest.append(await subscriber.expect_message())
    stored = [(m.payload, m.qos) for m in rest if m.qos > 0]
    assert stored == [(b"q1", 1), (b"q2", 2)]
    await publisher.publish("sess/t", b"live", 1)
    assert (await subscriber.expect_message()).payload == b"live"


async def test_clean_session_discards_the_session_v311(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """CleanSession 1 discards any previous session and its state is not reused [MQTT-3.1.2-6], Session
    Present 0 [MQTT-3.2.2-1]; a later CleanSession 0 finds no session [MQTT-3.2.2-3] (3.1.1)."""
    client = paho("forgetful", MQTT_3_1_1)
    await client.connect(*broker.address, clean_start=False)
    await client.subscribe("clean/t", 1)
    await client.disconnect()
    assert (await client.connect(*broker.address, clean_start=True)).session_present is False
    await client.disconnect()
    assert (await client.connect(*broker.address, clean_start=False)).session_present is False
    publisher = paho("pub", MQTT_3_1_1)
    await publisher.connect(*broker.address)
    await publisher.publish("clean/t", b"nobody listens", 1)
    await client.expect_no_message()


async def test_session_resumed_within_its_expiry_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """Session Expiry Interval > 0 keeps the session after the close [MQTT-3.1.2-23]; Clean Start 0 resumes
    it [MQTT-3.1.2-5] with Session Present 1 [MQTT-3.2.2-3] and the queued messages (5.0)."""
    subscriber = paho("durable", MQTT_5)
    await subscriber.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    await subscriber.subscribe("sess/t", 1)
    await subscriber.disconnect()
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("sess/t", b"while away", 1)
    connack = await subscriber.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    assert connack.session_present is True
    message = await subscriber.expect_message()
    assert (message.payload, message.qos) == (b"while away", 1)


async def test_session_without_expiry_ends_with_the_connection_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """An absent Session Expiry Interval means 0: the session ends when the connection closes (§3.1.2.11.2),
    so Clean Start 0 later gets Session Present 0 [MQTT-3.1.2-6] [MQTT-3.2.2-3] (5.0)."""
    client = paho("brief", MQTT_5)
    await client.connect(*broker.address, clean_start=False)
    await client.subscribe("brief/t", 1)
    await client.disconnect()
    assert (await client.connect(*broker.address, clean_start=False)).session_present is False
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("brief/t", b"nobody listens", 1)
    await client.expect_no_message()


async def test_session_discarded_after_its_expiry_interval_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """The server discards the session once the connection is closed and the Session Expiry Interval has
    passed [MQTT-4.1.0-2] (5.0)."""
    client = paho("expiring", MQTT_5)
    await client.connect(*broker.address, clean_start=False, session_expiry_interval=1)
    await client.subscribe("exp/t", 1)
    await client.disconnect()
    await trio.sleep(2.2)
    connack = await client.connect(*broker.address, clean_start=False, session_expiry_interval=1)
    assert connack.session_present is False


async def test_clean_start_discards_an_existing_session_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """Clean Start 1 discards the existing session [MQTT-3.1.2-4] and gets Session Present 0 [MQTT-3.2.2-2]
    (5.0); its subscriptions and queued messages are gone."""
    client = paho("restart", MQTT_5)
    await client.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    await client.subscribe("restart/t", 1)
    await client.disconnect()
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("restart/t", b"queued", 1)
    connack = await client.connect(*broker.address, clean_start=True, session_expiry_interval=60)
    assert connack.session_present is False
    await client.expect_no_message()


async def test_disconnect_can_end_the_session_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """A Session Expiry Interval of 0 on DISCONNECT replaces the one from CONNECT (§3.14.2.2.2): the
    session ends with the connection."""
    client = paho("leaving", MQTT_5)
    await client.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    await client.subscribe("leave/t", 1)
    await client.disconnect(session_expiry_interval=0)
    assert (await client.connect(*broker.address, clean_start=False)).session_present is False


async def test_session_expiry_capped_by_the_server_v5(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """A server that uses a shorter Session Expiry Interval than requested sends it in CONNACK
    (§3.2.2.3.2)."""
    broker = await start_broker(mqtt={"max_session_expiry_interval": 10})
    client = paho("greedy", MQTT_5)
    connack = await client.connect(*broker.address, clean_start=False, session_expiry_interval=3600)
    assert connack.properties.get("session_expiry_interval") == 10


async def _fill_offline_queue(
    broker: BrokerHandle, paho: Callable[..., PahoClient], count: int
) -> tuple[PahoClient, list[int]]:
    """A persistent 5.0 subscriber goes offline; ``count`` QoS 1 messages m0.. are published to it.
    Returns the subscriber (disconnected) and the publisher's PUBACK reason codes."""
    subscriber = paho("offline", MQTT_5)
    await subscriber.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    await subscriber.subscribe("queue/t", 1)
    await subscriber.disconnect()
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    codes = [(await publisher.publish("queue/t", f"m{i}".encode(), 1)).reason_code for i in range(count)]
    return subscriber, codes


async def _drain_offline_queue(broker: BrokerHandle, subscriber: PahoClient) -> list[bytes]:
    connack = await subscriber.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    assert connack.session_present is True
    received = [m.payload for m in [await subscriber.expect_message()]]
    await trio.sleep(0.5)
    received += [m.payload for m in subscriber.drain_messages()]
    return received


async def test_offline_queue_overflow_drops_newest(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """A full queue with overflow "drop-newest" keeps the oldest messages; publishers are still
    acknowledged (the message is accepted, then not queued for this session)."""
    broker = await start_broker(queue={"max_messages": 3, "overflow": "drop-newest"})
    subscriber, codes = await _fill_offline_queue(broker, paho, 6)
    assert all(code < 0x80 for code in codes)
    assert await _drain_offline_queue(broker, subscriber) == [b"m0", b"m1", b"m2"]


@edgebus_only("the drop-oldest overflow policy")
async def test_offline_queue_overflow_drops_oldest(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """A full queue with overflow "drop-oldest" keeps the newest messages, in order."""
    broker = await start_broker(queue={"max_messages": 3, "overflow": "drop-oldest"})
    subscriber, codes = await _fill_offline_queue(broker, paho, 6)
    assert all(code < 0x80 for code in codes)
    assert await _drain_offline_queue(broker, subscriber) == [b"m3", b"m4", b"m5"]


@edgebus_only("the refuse overflow policy")
async def test_offline_queue_overflow_refuses_with_quota_exceeded(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    """A full queue with overflow "refuse" answers a 5.0 QoS 1 publisher with PUBACK 0x97 "Quota exceeded"
    (§3.4.2.1) and keeps what it had."""
    broker = await start_broker(queue={"max_messages": 3, "overflow": "refuse"})
    subscriber, codes = await _fill_offline_queue(broker, paho, 5)
    assert codes == [0x00, 0x00, 0x00, 0x97, 0x97]
    assert await _drain_offline_queue(broker, subscriber) == [b"m0", b"m1", b"m2"]


@edgebus_only("queue.max_bytes admits only what fits; Mosquitto's max_queued_bytes queues while below it")
async def test_offline_queue_byte_limit(start_broker: StartBroker, paho: Callable[..., PahoClient]) -> None:
    """queue.max_bytes bounds the bytes queued for an offline session: two 400-byte messages fit in 1024
    bytes, a third does not and is dropped ("drop-newest")."""
    broker = await start_broker(queue={"max_bytes": 1024, "overflow": "drop-newest"})
    subscriber = paho("offline", MQTT_5)
    await subscriber.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    await subscriber.subscribe("bytes/t", 1)
    await subscriber.disconnect()
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    for i in range(4):
        await publisher.publish("bytes/t", bytes([i]) * 400, 1)
    connack = await subscriber.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    assert connack.session_present is True
    received = [await subscriber.expect_message()]
    await trio.sleep(0.5)
    received += subscriber.drain_messages()
    assert [m.payload[0] for m in received] == [0, 1]


@pytest.mark.parametrize("version", [MQTT_3_1_1, MQTT_5], ids=["v311", "v5"])
@pytest.mark.parametrize("first_persistent", [False, True], ids=["first-clean", "first-persistent"])
@pytest.mark.parametrize("second_persistent", [False, True], ids=["second-clean", "second-persistent"])
async def test_takeover_finds_only_a_session_that_outlives_its_connection(
    broker: BrokerHandle,
    paho: Callable[..., PahoClient],
    version: int,
    first_persistent: bool,
    second_persistent: bool,
) -> None:
    """A second connection with the same client id takes over [MQTT-3.1.4-2] / [MQTT-3.1.4-3]. The
    first connection's session survives the takeover only if it outlives its network connection: on
    3.1.1 a CleanSession 1 session lasts as long as the network connection [MQTT-3.1.2-6], on 5.0 a
    Session Expiry Interval of 0 ends the session when the connection closes (§3.1.2.11.2). So Session
    Present is 1 [MQTT-3.2.2-2] and the old subscription still delivers only when the first session was
    persistent and the second connection resumes it; otherwise Session Present is 0 [MQTT-3.2.2-1],
    [MQTT-3.2.2-3] and the old subscription is gone. The first connection's will (no delay) is published
    in every case: its network connection was closed without DISCONNECT [MQTT-3.1.2-8]."""

    async def connect(client: PahoClient, persistent: bool, will: WillSpec | None = None) -> bool:
        if version == MQTT_5:
            ack = await client.connect(
                *broker.address,
                clean_start=not persistent,
                session_expiry_interval=60 if persistent else 0,
                will=will,
            )
        else:
            ack = await client.connect(*broker.address, clean_start=not persistent, will=will)
        return ack.session_present

    watcher = paho("watcher", version)
    await watcher.connect(*broker.address)
    await watcher.subscribe("takeover/will", 1)
    first = paho("taken", version)
    assert await connect(first, first_persistent, WillSpec("takeover/will", b"first gone", 1)) is False
    await first.subscribe("takeover/old", 1)
    second = paho("taken", version)
    resumed = first_persistent and second_persistent
    assert await connect(second, second_persistent) is resumed
    assert (await watcher.expect_message()).payload == b"first gone"
    await watcher.publish("takeover/old", b"to the old subscription", 1)
    if resumed:
        assert (await second.expect_message()).payload == b"to the old subscription"
    else:
        await second.expect_no_message()


async def test_takeover_of_a_session_ending_with_its_connection_sends_a_delayed_will_now_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """The Will Message is published when the Will Delay Interval passes or the session ends, whichever
    is first [MQTT-3.1.3-9]: a session with expiry 0 ends when its connection is taken over, so its will
    goes out at once even with a delay, and even though the new connection does not use Clean Start."""
    watcher = paho("watcher", MQTT_5)
    await watcher.connect(*broker.address)
    await watcher.subscribe("takeover/will", 1)
    first = paho("short-lived", MQTT_5)
    will = WillSpec("takeover/will", b"ended", 1, properties={"will_delay_interval": 30})
    await first.connect(*broker.address, session_expiry_interval=0, will=will)
    second = paho("short-lived", MQTT_5)
    ack = await second.connect(*broker.address, clean_start=False, session_expiry_interval=60)
    assert ack.session_present is False
    assert (await watcher.expect_message()).payload == b"ended"

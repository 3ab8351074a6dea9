"""Will Messages: published on an abnormal close, not on a normal DISCONNECT, Will Delay Interval (5.0)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from edgebus.protocol import Will
from edgebus.protocol.packets import Properties
from tests.clients import BOTH_VERSIONS, MQTT_5, PahoClient, RawClient, WillSpec
from tests.conftest import BrokerHandle

RawFactory = Callable[..., Awaitable[RawClient]]


async def _watcher(paho: Callable[..., PahoClient], broker: BrokerHandle, version: int) -> PahoClient:
    watcher = paho("watcher", version)
    await watcher.connect(*broker.address)
    await watcher.subscribe("will/#", 2)
    return watcher


@BOTH_VERSIONS
async def test_will_published_when_the_connection_drops(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """A connection closed without DISCONNECT publishes its Will Message [MQTT-3.1.2-8] (both versions),
    non-retained [MQTT-3.1.2-16] (3.1.1) / [MQTT-3.1.2-14] (5.0), at the will's QoS."""
    watcher = await _watcher(paho, broker, version)
    client = paho("mortal", version)
    await client.connect(*broker.address, will=WillSpec("will/mortal", b"gone", qos=1))
    await client.close()
    message = await watcher.expect_message()
    assert (message.topic, message.payload, message.qos, message.retain) == ("will/mortal", b"gone", 1, False)


@BOTH_VERSIONS
async def test_no_will_after_normal_disconnect(
    broker: BrokerHandle, paho: Callable[..., PahoClient], version: int
) -> None:
    """DISCONNECT (0x00 on 5.0) discards the Will Message [MQTT-3.1.2-10] [MQTT-3.14.4-3] (both versions)."""
    watcher = await _watcher(paho, broker, version)
    client = paho("polite", version)
    await client.connect(*broker.address, will=WillSpec("will/polite", b"gone", qos=1))
    await client.disconnect()
    await watcher.expect_no_message()


async def test_will_published_on_disconnect_with_will_message_v5(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """DISCONNECT with 0x04 "Disconnect with Will Message" publishes the will (§3.14.2.1)."""
    watcher = await _watcher(paho, broker, MQTT_5)
    client = paho("leaving", MQTT_5)
    await client.connect(*broker.address, will=WillSpec("will/leaving", b"as asked", qos=0))
    await client.disconnect(reason_code=0x04)
    message = await watcher.expect_message()
    assert (message.topic, message.payload) == ("will/leaving", b"as asked")


@BOTH_VERSIONS
async def test_retained_will(broker: BrokerHandle, paho: Callable[..., PahoClient], version: int) -> None:
    """Will Retain 1 publishes the will as a retained message [MQTT-3.1.2-17] (3.1.1) / [MQTT-3.1.2-15]
    (5.0): a later subscriber gets it with RETAIN 1."""
    client = paho("retainer", version)
    await client.connect(*broker.address, will=WillSpec("will/retained", b"last words", qos=1, retain=True))
    await client.close()
    await trio.sleep(0.2)  # the will is published when the broker sees the close
    late = paho("late", version)
    await late.connect(*broker.address)
    await late.subscribe("will/retained", 1)
    message = await late.expect_message()
    assert (message.payload, message.retain) == (b"last words", True)


@BOTH_VERSIONS
async def test_will_published_on_keep_alive_timeout(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """A client that stops talking is disconnected as if the network had failed [MQTT-3.1.2-24] (3.1.1) /
    [MQTT-3.1.2-22] (5.0), so its will is published (§3.1.2.5 of 3.1.1)."""
    watcher = await _watcher(paho, broker, version)
    client = await raw(broker, version)
    await client.mqtt_connect("silent", keep_alive=1, will=Will("will/silent", b"timed out", qos=1))
    message = await watcher.expect_message(timeout=9.0)  # Mosquitto 2.0.11 is slow to notice (up to ~6 s)
    assert (message.topic, message.payload) == ("will/silent", b"timed out")


@BOTH_VERSIONS
async def test_will_published_after_a_protocol_error(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient], version: int
) -> None:
    """A connection the server closes for a protocol error publishes its will (§3.1.2.5 of 3.1.1)."""
    watcher = await _watcher(paho, broker, version)
    client = await raw(broker, version)
    await client.mqtt_connect("broken", will=Will("will/broken", b"garbled", qos=0))
    await client.send(b"\x00\x00\x00\x00")  # packet type 0 is reserved: malformed
    await client.expect_closed()
    message = await watcher.expect_message()
    assert (message.topic, message.payload) == ("will/broken", b"garbled")


async def test_will_properties_forwarded_v5(broker: BrokerHandle, paho: Callable[..., PahoClient]) -> None:
    """Will properties go out with the will like a PUBLISH's: user properties in order, content type,
    response topic, correlation data (§3.1.3.2, [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-20])."""
    watcher = await _watcher(paho, broker, MQTT_5)
    client = paho("propertied", MQTT_5)
    will_properties = {
        "user_properties": [("who", "me"), ("who", "still me")],
        "content_type": "text/plain",
        "response_topic": "will/replies",
        "correlation_data": b"\x01\x02",
    }
    await client.connect(*broker.address, will=WillSpec("will/props", b"bye", properties=will_properties))
    await client.close()
    properties = (await watcher.expect_message()).properties
    assert properties.user_properties == (("who", "me"), ("who", "still me"))
    assert properties.content_type == "text/plain"
    assert properties.response_topic == "will/replies"
    assert properties.correlation_data == b"\x01\x02"


async def test_will_delay_interval(broker: BrokerHandle, paho: Callable[..., PahoClient]) -> None:
    """With a Will Delay Interval the will is published only after the delay has elapsed [MQTT-3.1.2-8]
    (5.0)."""
    watcher = await _watcher(paho, broker, MQTT_5)
    client = paho("delayed", MQTT_5)
    will = WillSpec("will/delayed", b"later", properties={"will_delay_interval": 2})
    await client.connect(*broker.address, session_expiry_interval=30, will=will)
    await client.close()
    closed_at = trio.current_time()
    message = await watcher.expect_message(timeout=5.0)
    waited = trio.current_time() - closed_at
    assert message.payload == b"later"
    assert 1.8 <= waited <= 4.0, f"will published {waited:.2f} s after the close, delay was 2 s"


async def test_reconnect_within_will_delay_cancels_the_will(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """A new connection for the ClientId before the Will Delay Interval has passed means the will is not
    sent [MQTT-3.1.3-9] (5.0)."""
    watcher = await _watcher(paho, broker, MQTT_5)
    client = paho("returning", MQTT_5)
    will = WillSpec("will/returning", b"never", properties={"will_delay_interval": 1})
    await client.connect(*broker.address, session_expiry_interval=30, will=will)
    await client.close()
    again = paho("returning", MQTT_5)
    await again.connect(*broker.address, clean_start=False, session_expiry_interval=30)
    await watcher.expect_no_message(timeout=2.0)


async def test_will_published_when_the_session_ends_before_the_delay(
    broker: BrokerHandle, paho: Callable[..., PahoClient]
) -> None:
    """The will is published when the Will Delay Interval elapses or the session ends, whichever is first
    [MQTT-3.1.2-8] (5.0): Session Expiry 1 s ends the session long before a 60 s will delay."""
    watcher = await _watcher(paho, broker, MQTT_5)
    client = paho("short-session", MQTT_5)
    will = WillSpec("will/session-end", b"session over", properties={"will_delay_interval": 60})
    await client.connect(*broker.address, session_expiry_interval=1, will=will)
    await client.close()
    message = await watcher.expect_message(timeout=4.0)
    assert message.payload == b"session over"


async def test_raw_will_connect_flags_v5(
    broker: BrokerHandle, raw: RawFactory, paho: Callable[..., PahoClient]
) -> None:
    """A will set on the wire with QoS 2 and Will Delay 0 is published at once with QoS 2 when the network
    connection drops [MQTT-3.1.2-8] (5.0)."""
    watcher = await _watcher(paho, broker, MQTT_5)
    client = await raw(broker, MQTT_5)
    will = Will("will/raw", b"q2", qos=2, properties=Properties(will_delay_interval=0))
    await client.mqtt_connect("raw-will", will=will)
    await client.aclose()
    message = await watcher.expect_message()
    assert (message.topic, message.payload, message.qos) == ("will/raw", b"q2", 2)

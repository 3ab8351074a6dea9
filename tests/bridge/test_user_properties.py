"""A device's MQTT 5 User Properties and Content Type go up every bridge (issue 13), end to end: an MQTT 5
device publishes to a real broker (start_broker), the bridge forwards to a real engine (Mosquitto,
nats-server, Kafka, RabbitMQ, redis-server), and the engine's own consumer reads them back, raw where the
engine keeps repeats (header lines, header lists, field lists).

MQTT: a server sends all User Properties unaltered [MQTT-3.3.2-17], in order [MQTT-3.3.2-18], and the
Content Type unaltered [MQTT-3.3.2-20]; a user property name may appear more than once (§3.3.2.3.7). How
each engine carries them is the bridge's documented mapping (README, "Bridges", per engine). The last test
keeps them through a gateway restart (the outbox's store column, schema 5).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from edgebus.bridge.amqp_message import MQTT_CONTENT_TYPE_PROPERTY, MQTT_TOPIC_PROPERTY
from edgebus.bridge.jetstream_headers import CONTENT_TYPE_HEADER
from edgebus.bridge.redis_stream import USER_PROPERTY_PREFIX, default_stream
from edgebus.bridge.sink import MESSAGE_ID_HEADER, MESSAGE_ID_PROPERTY
from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.kafka_log import kafka_log
from tests.bridge.mosquitto_upstream import UpstreamFactory
from tests.bridge.nats_upstream import NatsServer, open_nats_admin
from tests.bridge.rabbitmq_log import rabbitmq_log
from tests.bridge.redis_upstream import running_redis_server
from tests.bridge.test_bridge_broker import FAST_LINK, GATEWAY, client, cloud_log, outbox_rows, wait_until
from tests.clients import PEER, PahoClient
from tests.conftest import BrokerHandle, StartBroker

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's bridge")

PREFIX = f"gw/{GATEWAY}/"
#: Two names, one of them twice, one value not ASCII: what a device may send (§3.3.2.3.7).
USER_PROPERTIES = (("unit", "°C"), ("tag", "a"), ("tag", "b"))
CONTENT_TYPE = "text/plain; charset=utf-8"
DEVICE_PROPERTIES: dict[str, Any] = {"user_properties": list(USER_PROPERTIES), "content_type": CONTENT_TYPE}


def bridge_config(kind: str, port: int, remote_prefix: str = PREFIX, **settings: Any) -> BridgeConfig:
    values: dict[str, Any] = {
        "name": "cloud",
        "kind": kind,
        "addresses": (ListenAddress("127.0.0.1", port),),
        "topics": (BridgeTopic("sensors/#", qos=1, remote_prefix=remote_prefix),),
        **FAST_LINK,
        **settings,
    }
    return BridgeConfig(**values)


def forwarded(handle: BrokerHandle) -> int:
    assert handle.broker is not None
    return int(handle.broker.sys_values()["$SYS/broker/bridge/cloud/forwarded"])


async def publish_from_device(
    paho: Callable[..., PahoClient], handle: BrokerHandle, messages: list[tuple[str, dict[str, Any]]]
) -> None:
    """An MQTT 5 device publishes ``(topic, properties)`` pairs (QoS 1, payload = the topic's last level)."""
    device = await client(paho, *handle.address, "device")
    for topic, properties in messages:
        payload = topic.rsplit("/", 1)[-1].encode()
        assert (await device.publish(topic, payload, qos=1, properties=properties)).reason_code == 0


# --- MQTT ---------------------------------------------------------------------------------------------------


async def test_mqtt_5_upstream_gets_them_after_the_message_id(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """Mosquitto (MQTT 5) delivers them to its subscriber unaltered and in order, repeats kept, after the
    edgebus-msg-id the bridge adds [MQTT-3.3.2-17] [MQTT-3.3.2-18]; the Content Type unaltered
    [MQTT-3.3.2-20]. A message without them gets only the message id."""
    upstream = await start_upstream()
    cloud = await cloud_log(paho, upstream.port)
    broker = await start_broker(bridges=(bridge_config("mqtt", upstream.port),))
    await publish_from_device(paho, broker, [("sensors/with", DEVICE_PROPERTIES), ("sensors/without", {})])
    with_them, without = await cloud.expect_messages(2)
    assert with_them.payload == b"with"
    (ours_name, ours_id), *theirs = with_them.properties.user_properties
    assert ours_name == MESSAGE_ID_PROPERTY and ours_id.startswith(f"{GATEWAY}:")
    assert tuple(theirs) == USER_PROPERTIES
    assert with_them.properties.content_type == CONTENT_TYPE
    assert [name for name, _ in without.properties.user_properties] == [MESSAGE_ID_PROPERTY]
    assert without.properties.content_type is None


async def test_mqtt_3_1_1_upstream_gets_the_message_without_them(
    start_broker: StartBroker, start_upstream: UpstreamFactory, paho: Callable[..., PahoClient]
) -> None:
    """MQTT 3.1.1 has no properties: the message goes up, its properties are dropped (documented)."""
    upstream = await start_upstream()
    cloud = await cloud_log(paho, upstream.port)
    broker = await start_broker(bridges=(bridge_config("mqtt", upstream.port, protocol_level=4),))
    await publish_from_device(paho, broker, [("sensors/with", DEVICE_PROPERTIES)])
    received = await cloud.expect_message()
    assert received.payload == b"with"
    assert received.properties.user_properties == ()
    assert received.properties.content_type is None


# --- NATS JetStream -----------------------------------------------------------------------------------------


async def test_jetstream_stores_one_header_line_each_in_order(
    start_broker: StartBroker, nats_server: NatsServer, paho: Callable[..., PahoClient]
) -> None:
    """The stored header block has our headers, then one line per user property in order, the repeated
    name twice. A name NATS acts on (Nats-*) or that is not a header token is percent-encoded: the
    device can neither forge the de-duplication id nor roll the stream up (a stream without
    allow_rollup_hdrs would refuse the publish outright)."""
    steering = {"user_properties": [("Nats-Msg-Id", "forged"), ("Nats-Rollup", "all"), ("sensor id", "7")]}
    async with open_nats_admin(nats_server.url) as admin:
        await admin.create_stream("LOG", ["gw.>"])
        broker = await start_broker(
            bridges=(bridge_config("nats-jetstream", nats_server.port, f"gw.{GATEWAY}", stream="LOG"),)
        )
        messages = [("sensors/with", DEVICE_PROPERTIES), ("sensors/steer", steering), ("sensors/none", {})]
        await publish_from_device(paho, broker, messages)
        await wait_until(lambda: forwarded(broker) == 3, "three forwarded")
        stored = await admin.messages("LOG")
        raw = [await admin.raw_headers("LOG", message.seq) for message in stored]
    assert [message.data for message in stored] == [b"with", b"steer", b"none"]
    lines = [block.decode().split("\r\n") for block in raw]
    for message, block in zip(stored, lines, strict=True):
        assert block[0] == "NATS/1.0" and block[-2:] == ["", ""]
        assert block[1] == f"{MESSAGE_ID_HEADER}: {message.headers[MESSAGE_ID_HEADER]}"
        assert message.headers[MESSAGE_ID_HEADER].startswith(f"{GATEWAY}:")
    assert lines[0][2:-2] == [f"{CONTENT_TYPE_HEADER}: {CONTENT_TYPE}", "unit: °C", "tag: a", "tag: b"]
    assert lines[1][2:-2] == ["%4Eats-Msg-Id: forged", "%4Eats-Rollup: all", "sensor%20id: 7"]
    assert lines[2][2:-2] == []


# --- Kafka --------------------------------------------------------------------------------------------------


async def test_kafka_record_has_one_header_each_after_ours(
    start_broker: StartBroker, tmp_path: Path, paho: Callable[..., PahoClient]
) -> None:
    """One header per user property, as given and in order, after edgebus-msg-id, edgebus-topic and
    content-type; a user property named like one of ours is still sent, after ours."""
    forging = {"user_properties": [("edgebus-topic", "forged")]}
    async with kafka_log(tmp_path) as log:
        broker = await start_broker(bridges=(log.bridge(log.server.port),))
        messages = [("sensors/with", DEVICE_PROPERTIES), ("sensors/forge", forging)]
        await publish_from_device(paho, broker, messages)
        await wait_until(lambda: forwarded(broker) == 2, "two forwarded", within_s=30)
        records = sorted(await log._records(), key=lambda record: record.value)
    forge, with_them = records
    assert with_them.value == b"with"
    names = [name for name, _ in with_them.header_list]
    assert names[:2] == [MESSAGE_ID_PROPERTY, "edgebus-topic"]
    assert with_them.header_list[2:] == (
        ("content-type", CONTENT_TYPE.encode()),
        *((name, value.encode()) for name, value in USER_PROPERTIES),
    )
    assert forge.header_list[1:] == (("edgebus-topic", b"sensors/forge"), ("edgebus-topic", b"forged"))


# --- RabbitMQ stream ----------------------------------------------------------------------------------------


async def test_rabbitmq_stream_message_has_them_as_application_properties(
    start_broker: StartBroker, tmp_path: Path, paho: Callable[..., PahoClient]
) -> None:
    """Application properties hold each name once: a repeated name's values joined with ", " in order; a
    user property named like one of ours is left out. The content type is the properties' content-type,
    or the application property mqtt-content-type when it is not ASCII (an AMQP symbol is ASCII)."""
    other = {"user_properties": [(MQTT_TOPIC_PROPERTY, "forged")], "content_type": "text/plain; lang=fr-é"}
    async with rabbitmq_log(tmp_path) as log:
        broker = await start_broker(bridges=(log.bridge(log.server.port),))
        messages = [("sensors/with", DEVICE_PROPERTIES), ("sensors/other", other)]
        await publish_from_device(paho, broker, messages)
        await wait_until(lambda: forwarded(broker) == 2, "two forwarded", within_s=30)
        with_them, not_ascii = await log.admin.read(log.stream)
    assert with_them.body == b"with"
    application = _text_map(with_them.message.application_properties)
    assert list(application) == [MESSAGE_ID_PROPERTY, MQTT_TOPIC_PROPERTY, "mqtt-retain", "unit", "tag"]
    assert application["unit"] == "°C" and application["tag"] == "a, b"
    assert _text(with_them.message.properties.content_type) == CONTENT_TYPE
    other_application = _text_map(not_ascii.message.application_properties)
    assert other_application[MQTT_TOPIC_PROPERTY] == PREFIX + "sensors/other"
    assert other_application[MQTT_CONTENT_TYPE_PROPERTY] == "text/plain; lang=fr-é"
    assert not_ascii.message.properties.content_type is None


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def _text_map(values: dict[Any, Any] | None) -> dict[object, object]:
    return {_text(name): _text(value) for name, value in (values or {}).items()}


# --- Redis Streams ------------------------------------------------------------------------------------------


def raw_entries(port: int, stream: str) -> list[list[tuple[str, str]]]:
    """Each entry's field list as XRANGE returns it: in order, repeated names included."""
    connection = redis.Redis(port=port, socket_timeout=10)
    connection.set_response_callback("XRANGE", lambda response, **options: response)
    try:
        entries: Any = connection.xrange(stream)  # as Redis returns it: the callback is gone
    finally:
        connection.close()
    found = []
    for _entry_id, flat in entries:
        texts = [item.decode() for item in flat]
        found.append(list(zip(texts[::2], texts[1::2], strict=True)))
    return found


def expected_redis_fields(topic: str) -> list[tuple[str, str]]:
    return [
        ("payload", topic.rsplit("/", 1)[-1]),
        ("topic", PREFIX + topic),
        (MESSAGE_ID_PROPERTY, "..."),
        ("content-type", CONTENT_TYPE),
        *((USER_PROPERTY_PREFIX + name, value) for name, value in USER_PROPERTIES),
    ]


def without_ids(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, "..." if name == MESSAGE_ID_PROPERTY else value) for name, value in fields]


async def test_redis_entry_has_one_prefixed_field_each(
    start_broker: StartBroker, tmp_path: Path, paho: Callable[..., PahoClient]
) -> None:
    """Fields prop:<name>, in order, repeats kept, after edgebus's own fields (whose names have no ":")."""
    async with running_redis_server(tmp_path / "redis") as server:
        broker = await start_broker(bridges=(bridge_config("redis-stream", server.port),))
        await publish_from_device(paho, broker, [("sensors/with", DEVICE_PROPERTIES), ("sensors/none", {})])
        await wait_until(lambda: forwarded(broker) == 2, "two forwarded")
        with_them, without = await trio.to_thread.run_sync(raw_entries, server.port, default_stream(GATEWAY))
    assert without_ids(with_them) == expected_redis_fields("sensors/with")
    assert [name for name, _ in without] == ["payload", "topic", MESSAGE_ID_PROPERTY]


# --- the store: queued across a gateway restart -------------------------------------------------------------


async def test_queued_properties_survive_a_gateway_restart(
    start_broker: StartBroker, tmp_path: Path, paho: Callable[..., PahoClient]
) -> None:
    """Queued while Redis is down, the gateway restarted: the outbox comes back from the store with each
    message's properties, and Redis gets them as if nothing had happened."""
    async with running_redis_server(tmp_path / "redis") as server:
        server.kill()  # the upstream is down (its port is kept for the restart)
        bridges = (bridge_config("redis-stream", server.port),)
        broker = await start_broker(bridges=bridges)
        topics = [f"sensors/{i}" for i in range(3)]
        await publish_from_device(paho, broker, [(topic, DEVICE_PROPERTIES) for topic in topics])
        await wait_until(lambda: len(outbox_rows(broker)) == 3, "three rows in the outbox on disk")
        await broker.shutdown()
        await server.start()
        again = await start_broker(data_dir=broker.data_dir, bridges=bridges)
        await wait_until(lambda: forwarded(again) == 3, "three forwarded after the restart")
        entries = await trio.to_thread.run_sync(raw_entries, server.port, default_stream(GATEWAY))
    assert [without_ids(fields) for fields in entries] == [expected_redis_fields(topic) for topic in topics]

"""The bridge's durable outbox inside the broker, with the upstream unreachable: what is written when,
budgets, restarts, $SYS. (Forwarding to real upstreams: test_mqtt_sink.py, test_jetstream_sink.py and
test_outages.py.)"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio

from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from edgebus.protocol.enums import ReasonCode
from tests.clients import PahoClient
from tests.conftest import BrokerHandle, StartBroker


def _closed_port() -> int:
    """A loopback port nobody listens on: the upstream is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def unreachable_bridge(**overrides: Any) -> BridgeConfig:
    values: dict[str, Any] = {
        "name": "cloud",
        "addresses": (ListenAddress("127.0.0.1", _closed_port()),),
        "topics": (BridgeTopic("sensors/#", remote_prefix="gw/"),),
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "connect_timeout": 0.5,
    }
    values.update(overrides)
    return BridgeConfig(**values)


def outbox_rows(broker: BrokerHandle) -> list[tuple[Any, ...]]:
    """What the store holds on disk, read by a second sqlite connection (only committed data is seen)."""
    db = sqlite3.connect(f"file:{broker.data_dir / 'edgebus.db'}?mode=ro", uri=True)
    try:
        return list(
            db.execute(
                "SELECT bridge, seq, topic, payload, qos, content_type FROM bridge_outbox ORDER BY seq"
            )
        )
    finally:
        db.close()


async def connected(paho: Callable[..., PahoClient], broker: BrokerHandle, name: str) -> PahoClient:
    client = paho(name)
    await client.connect(*broker.address)
    return client


async def test_outbox_row_is_on_disk_before_the_puback(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    # The durability rule of the issue: the outbox row is committed with the message, before the
    # PUBACK / PUBREC [MQTT-4.3.2-2] [MQTT-4.3.3-2] ("ownership" passes on acknowledgement).
    broker = await start_broker(bridges=(unreachable_bridge(),))
    device = await connected(paho, broker, "device")
    result = await device.publish("sensors/t1", b"21.5", qos=1)
    assert result.reason_code == ReasonCode.SUCCESS  # forwarded counts as matched: not 0x10
    assert outbox_rows(broker) == [("cloud", 1, "gw/sensors/t1", b"21.5", 2, None)]
    await device.publish("sensors/t2", b"22", qos=2)
    await device.publish("other/t", b"x", qos=1)  # no out rule: not queued
    assert [row[2] for row in outbox_rows(broker)] == ["gw/sensors/t1", "gw/sensors/t2"]


async def test_outbox_survives_a_restart_and_sequences_continue(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    broker = await start_broker(bridges=(unreachable_bridge(),))
    device = await connected(paho, broker, "device")
    for i in range(3):
        await device.publish(f"sensors/{i}", b"v", qos=1)
    await device.disconnect()
    await broker.shutdown()
    again = await start_broker(data_dir=broker.data_dir, bridges=(unreachable_bridge(),))
    assert again.broker is not None
    (bridge,) = again.broker.bridges
    assert [entry.seq for entry in bridge.outbox.entries] == [1, 2, 3]
    device = await connected(paho, again, "device2")
    await device.publish("sensors/x", b"v", qos=1)
    assert [row[1] for row in outbox_rows(again)] == [1, 2, 3, 4]
    assert bridge.identity.epoch and len(bridge.identity.epoch) == 8


async def test_full_outbox_refuses_with_quota_exceeded(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    # overflow = "refuse": the v5 publisher gets 0x97 Quota exceeded (§3.4.2.1) and nothing is queued.
    broker = await start_broker(bridges=(unreachable_bridge(max_messages=2),))
    subscriber = await connected(paho, broker, "local")
    await subscriber.subscribe("sensors/#", qos=1)
    device = await connected(paho, broker, "device")
    codes = [(await device.publish(f"sensors/{i}", b"v", qos=1)).reason_code for i in range(3)]
    assert codes == [ReasonCode.SUCCESS, ReasonCode.SUCCESS, ReasonCode.QUOTA_EXCEEDED]
    assert [row[1] for row in outbox_rows(broker)] == [1, 2]
    # The refused message was refused whole: local subscribers did not get it either.
    received = await subscriber.expect_messages(2)
    assert [m.topic for m in received] == ["sensors/0", "sensors/1"]
    with pytest.raises(AssertionError):
        await subscriber.expect_message(timeout=0.3)
    assert broker.broker is not None
    values = broker.broker.sys_values()
    assert values["$SYS/broker/bridge/cloud/refused"] == "1"
    assert values["$SYS/broker/bridge/cloud/queued"] == "2"


async def test_full_outbox_drops_its_oldest(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    broker = await start_broker(bridges=(unreachable_bridge(max_messages=3, overflow="drop-oldest"),))
    device = await connected(paho, broker, "device")
    for i in range(5):
        assert (await device.publish(f"sensors/{i}", b"v", qos=1)).reason_code == ReasonCode.SUCCESS
    assert [row[2] for row in outbox_rows(broker)] == ["gw/sensors/2", "gw/sensors/3", "gw/sensors/4"]
    assert broker.broker is not None
    assert broker.broker.sys_values()["$SYS/broker/bridge/cloud/dropped"] == "2"


async def test_byte_budget(start_broker: StartBroker, paho: Callable[..., PahoClient]) -> None:
    broker = await start_broker(bridges=(unreachable_bridge(max_bytes=1024),))
    device = await connected(paho, broker, "device")
    codes = [(await device.publish("sensors/big", b"x" * 400, qos=1)).reason_code for _ in range(4)]
    assert codes.count(ReasonCode.QUOTA_EXCEEDED) >= 1
    assert codes[0] == ReasonCode.SUCCESS


async def test_byte_budget_counts_user_properties_and_content_type(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    # A one-byte payload with two user properties and a content type costs ~650 budget bytes (what their
    # strings and tuples hold in memory), not ~180: a 1,000 byte budget takes two such messages, not six.
    broker = await start_broker(bridges=(unreachable_bridge(max_bytes=1000),))
    device = await connected(paho, broker, "device")
    properties = {"user_properties": [("k", "v" * 50), ("k", "w" * 50)], "content_type": "text/plain"}
    codes = [
        (await device.publish("sensors/p", b"x", qos=1, properties=properties)).reason_code for _ in range(4)
    ]
    assert codes == [ReasonCode.SUCCESS] * 2 + [ReasonCode.QUOTA_EXCEEDED] * 2
    assert broker.broker is not None
    assert int(broker.broker.sys_values()["$SYS/broker/bridge/cloud/queued_bytes"]) > 1000


async def test_cbor_payloads_are_stored_as_json(
    start_broker: StartBroker, paho: Callable[..., PahoClient]
) -> None:
    rule = BridgeTopic("sensors/#", remote_prefix="gw/", transform="cbor-json")
    broker = await start_broker(bridges=(unreachable_bridge(topics=(rule,)),))
    device = await connected(paho, broker, "device")
    await device.publish("sensors/t", cbor2.dumps({"t": 21.5, "raw": b"\x01\x02"}), qos=1)
    await device.publish("sensors/bad", b"\xff\xfe not cbor", qos=1)
    rows = outbox_rows(broker)
    assert json.loads(rows[0][3]) == {"t": 21.5, "raw": "AQI="}
    assert rows[0][5] == "application/json"
    assert rows[1][3] == b"\xff\xfe not cbor" and rows[1][5] is None  # forwarded unchanged, counted
    assert broker.broker is not None
    assert broker.broker.sys_values()["$SYS/broker/bridge/cloud/transform_failed"] == "1"


async def test_state_is_retained_in_sys(start_broker: StartBroker, paho: Callable[..., PahoClient]) -> None:
    broker = await start_broker(bridges=(unreachable_bridge(),))
    await trio.sleep(0.3)  # a few failed connection attempts
    watcher = await connected(paho, broker, "watcher")
    await watcher.subscribe("$SYS/broker/bridge/cloud/state", qos=0)
    state = await watcher.expect_message()
    assert state.retain and state.payload in (b"connecting", b"disconnected")
    assert broker.broker is not None
    values = broker.broker.sys_values()
    assert (
        "cannot connect" in values["$SYS/broker/bridge/cloud/last_error"]
        or values["$SYS/broker/bridge/cloud/last_error"] != "none"
    )


async def test_no_store_keeps_the_outbox_in_memory(
    start_broker: StartBroker, paho: Callable[..., PahoClient], tmp_path: Path
) -> None:
    broker = await start_broker(storage={"durability": "memory"}, bridges=(unreachable_bridge(),))
    device = await connected(paho, broker, "device")
    await device.publish("sensors/t", b"v", qos=1)
    assert broker.broker is not None
    (bridge,) = broker.broker.bridges
    assert [entry.topic for entry in bridge.outbox.entries] == ["gw/sensors/t"]

"""[storage] max_bytes: at the budget, new QoS 1/2 messages for persistent sessions meet the overflow
policy, visibly (issue 3, "Budgets")."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgebus.protocol import MQTT_5, Properties, PubAck, Publish, ReasonCode
from tests.clients import PEER, RawClient, Sub
from tests.conftest import StartBroker

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's durable store")


@pytest.mark.parametrize(("overflow", "expected"), [("refuse", 0x97), ("drop-newest", 0x00)])
async def test_store_over_budget_applies_the_overflow_policy(
    start_broker: StartBroker, tmp_path: Path, overflow: str, expected: int
) -> None:
    # A budget smaller than an empty database: full as soon as the size is first checked (after a
    # commit). Refuse: the v5 publisher gets 0x97 Quota exceeded (§3.4.2.1); drop: PUBACK 0, and the
    # drop is counted.
    broker = await start_broker(storage={"max_bytes": 1}, queue={"overflow": overflow}, data_dir=tmp_path)
    sub = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await sub.mqtt_connect("keeper", clean_start=False, properties=Properties(session_expiry_interval=60))
    await sub.subscribe(Sub("data/#", 1))  # a commit: the store's size is checked after it
    assert broker.broker is not None and broker.broker.store_full
    pub = await RawClient.connect(broker.host, broker.port, MQTT_5)
    await pub.mqtt_connect("producer")
    await pub.send_packet(Publish("data/1", b"x", qos=1, packet_id=1))
    assert await pub.receive_packet() == PubAck(1, ReasonCode(expected))
    await sub.expect_no_packet(0.3)
    assert broker.broker.stats.messages_dropped == 1
    for client in (sub, pub):
        await client.aclose()

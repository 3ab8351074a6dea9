"""Sans-IO tests of the MQTT 3.1 CONNECT rule and the bridge-bit SUBSCRIBE options
(edgebus.core.connect, edgebus.core.subscribe)."""

from __future__ import annotations

import pytest

from edgebus.core.connect import ConnectAccepted, ConnectRefused, ServerFeatures, decide_connect
from edgebus.core.subscribe import Grant, plan_subscribe
from edgebus.protocol import PacketDecoder
from edgebus.protocol.enums import BRIDGE_BIT, MQTT_3_1, MQTT_3_1_1, MQTT_5, ConnectReturnCode
from edgebus.protocol.packets import ConnAck, Connect, Subscribe, Subscription

FEATURES = ServerFeatures()


def new_id() -> str:
    return "assigned-by-server"


@pytest.mark.parametrize(
    ("client_id", "accepted"), [("x", True), ("x" * 23, True), ("x" * 24, False), ("", False)]
)
@pytest.mark.parametrize("level", [MQTT_3_1, MQTT_3_1 | BRIDGE_BIT])
def test_3_1_client_id_is_1_to_23_characters(client_id: str, accepted: bool, level: int) -> None:
    """§3.1 of the v3.1 spec: 1 to 23 characters; otherwise CONNACK 0x02 "Identifier rejected"."""
    decision = decide_connect(Connect(client_id, level, "MQIsdp"), FEATURES, new_id)
    if accepted:
        assert isinstance(decision, ConnectAccepted)
        assert decision.client_id == client_id
    else:
        assert isinstance(decision, ConnectRefused)
        assert decision.connack is not None
        packets = PacketDecoder(role="client", protocol_level=MQTT_3_1_1).receive_data(decision.connack)
        assert packets == [ConnAck(False, ConnectReturnCode.IDENTIFIER_REJECTED)]


def test_3_1_1_keeps_its_longer_ids() -> None:
    # [MQTT-3.1.3-5]: 3.1.1 servers MAY allow more than 23 characters; edgebus does.
    assert isinstance(decide_connect(Connect("x" * 24, MQTT_3_1_1), FEATURES, new_id), ConnectAccepted)


@pytest.mark.parametrize("level", [MQTT_3_1_1, MQTT_5])
def test_bridge_subscriptions_get_no_local_and_retain_as_published(level: int) -> None:
    subscribe = Subscribe(1, (Subscription("a/#", 1), Subscription("$share/g/b", 1)))
    plain, shared = plan_subscribe(subscribe, level, 2, FEATURES, bridge=True)
    assert isinstance(plain, Grant)
    assert isinstance(shared, Grant)
    assert (plain.options.no_local, plain.options.retain_as_published) == (True, True)
    # No Local on a shared subscription is a Protocol Error [MQTT-3.8.3-4]: not given there.
    assert (shared.options.no_local, shared.options.retain_as_published) == (False, True)
    (not_bridge, _) = plan_subscribe(subscribe, level, 2, FEATURES)
    assert isinstance(not_bridge, Grant)
    assert (not_bridge.options.no_local, not_bridge.options.retain_as_published) == (False, False)

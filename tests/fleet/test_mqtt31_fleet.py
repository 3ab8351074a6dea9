"""The fleet simulator speaking MQTT 3.1 (``protocol = "3.1"`` in a device profile): the profile loads,
and simulated 3.1 devices deliver exactly what they sent through edgebus and through Mosquitto."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio
from edgebus_fleet.engine import Engine
from edgebus_fleet.profiles import ChaosSettings, load_fleet, load_profile

from edgebus.protocol.enums import MQTT_3_1
from tests.clients import PahoClient
from tests.conftest import BrokerHandle
from tests.fleet.conftest import FIRMWARE_SIM, ROOT


def test_protocol_3_1_in_a_profile(tmp_path: Path) -> None:
    text = (
        (ROOT / "devices" / "smart_meter.toml").read_text().replace('protocol = "3.1.1"', 'protocol = "3.1"')
    )
    assert 'protocol = "3.1"' in text
    path = tmp_path / "old_meter.toml"
    path.write_text(text)
    assert load_profile(path).protocol_level == MQTT_3_1


async def test_3_1_devices_deliver_what_they_sent(any_broker: BrokerHandle) -> None:
    """3.1 devices (MQIsdp CONNECT, QoS 0/1/2) through the broker: a paho subscriber sees the same
    topics, payloads, QoS and count, and the simulator's own audit passes."""
    fleet = load_fleet(FIRMWARE_SIM / "fleets" / "smoke.toml")
    groups = tuple(
        replace(
            g,
            profile=replace(
                g.profile,
                protocol_level=MQTT_3_1,
                session_expiry=0,
                publish=tuple(replace(s, interval=1.0) for s in g.profile.publish),
            ),
        )
        for g in fleet.groups[:3]
    )
    fleet = replace(fleet, name="mqtt31", groups=groups, ramp_up=0.2, drain=3.0, chaos=ChaosSettings())
    paho = PahoClient("paho-observer", 5)
    await paho.connect(any_broker.host, any_broker.port)
    await paho.subscribe("fleet/#", 2)
    engine = Engine(fleet, any_broker.host, any_broker.port, duration=3.0)
    engine.sent_log = []
    try:
        result = await engine.run()
        await trio.sleep(0.5)
        seen = paho.drain_messages()
    finally:
        await trio.to_thread.run_sync(paho.force_close)
    assert result.passed, result.violations
    sent = sorted((topic, payload, qos) for topic, payload, qos, _ in engine.sent_log)
    observed = sorted((m.topic, m.payload, m.qos) for m in seen if not m.retain and m.payload != b"offline")
    assert {qos for _, _, qos in sent} == {0, 1, 2}
    assert observed == sent

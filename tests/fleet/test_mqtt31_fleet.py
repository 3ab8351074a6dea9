"""The fleet simulator speaking MQTT 3.1 (``protocol = "3.1"`` in a device profile): the profile loads,
and simulated 3.1 devices deliver exactly what they sent through edgebus and through Mosquitto."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgebus_fleet.profiles import ChaosSettings, load_fleet, load_profile

from edgebus.protocol.enums import MQTT_3_1
from tests.conftest import BrokerHandle
from tests.fleet.conftest import FIRMWARE_SIM, ROOT, run_observed


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
    sent, observed = await run_observed(fleet, any_broker)
    assert {qos for _, _, qos in sent} == {0, 1, 2}
    assert observed == sent

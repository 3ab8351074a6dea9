"""The engine in-process: what a paho subscriber sees is exactly what the simulated devices sent."""

from __future__ import annotations

from dataclasses import replace

from edgebus_fleet.profiles import ChaosSettings, load_fleet

from tests.conftest import BrokerHandle
from tests.fleet.conftest import FIRMWARE_SIM, run_observed


async def test_paho_subscriber_sees_exactly_what_devices_sent(any_broker: BrokerHandle) -> None:
    # A sample of profiles (QoS 0 sensor, 3.1.1 QoS 1 meter, QoS 2 door with retained JSON state) checked
    # against an independent client: same topics, payload bytes, QoS and count, nothing extra.
    fleet = load_fleet(FIRMWARE_SIM / "fleets" / "smoke.toml")
    # Every stream once a second, so each QoS is exercised within the short run.
    groups = tuple(
        replace(
            g, profile=replace(g.profile, publish=tuple(replace(s, interval=1.0) for s in g.profile.publish))
        )
        for g in fleet.groups[:3]
    )
    fleet = replace(fleet, name="paho-check", groups=groups, ramp_up=0.2, drain=3.0, chaos=ChaosSettings())
    sent, observed = await run_observed(fleet, any_broker)
    assert {qos for _, _, qos in sent} == {0, 1, 2}  # every QoS of the sample was exercised
    assert observed == sent

"""Fleet-simulator fixtures: the importable package lives in firmware-sim/, and brokers of each kind."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_SIM = ROOT / "firmware-sim"
if str(FIRMWARE_SIM) not in sys.path:  # an editable/regular install finds it anyway
    sys.path.insert(0, str(FIRMWARE_SIM))

import trio  # noqa: E402
from edgebus_fleet.engine import Engine  # noqa: E402
from edgebus_fleet.profiles import Fleet  # noqa: E402

from tests.client.conftest import any_broker  # noqa: E402
from tests.clients import PahoClient  # noqa: E402
from tests.conftest import BrokerHandle  # noqa: E402

__all__ = ["FIRMWARE_SIM", "ROOT", "any_broker", "run_observed"]

Record = tuple[str, bytes, int]


async def run_observed(fleet: Fleet, broker: BrokerHandle) -> tuple[list[Record], list[Record]]:
    """Run ``fleet`` for 3 s with an independent paho observer subscribed to fleet/#; the audit must pass.
    Returns what the devices sent and what the observer saw (live messages, no wills), both sorted."""
    paho = PahoClient("paho-observer", 5)
    await paho.connect(broker.host, broker.port)
    await paho.subscribe("fleet/#", 2)
    engine = Engine(fleet, broker.host, broker.port, duration=3.0)
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
    return sent, observed

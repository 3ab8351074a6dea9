"""Fixtures: a real broker of each kind (edgebus in the test's nursery, Mosquitto as a plain process)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.conftest import MOSQUITTO, BrokerHandle, _start_edgebus, _start_mosquitto

BROKERS = ["edgebus", "mosquitto"]


@pytest.fixture(params=BROKERS)
async def any_broker(
    request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[BrokerHandle]:
    """Each test runs against edgebus and against Mosquitto (skipped when it is not installed)."""
    kind: str = request.param
    data_dir = tmp_path / kind
    data_dir.mkdir()
    if kind == "mosquitto":
        if not os.access(MOSQUITTO, os.X_OK):
            pytest.skip("mosquitto is not installed")
        handle = await _start_mosquitto(data_dir, {})
    else:
        handle = await _start_edgebus(nursery, data_dir, {})
    yield handle
    with trio.move_on_after(5):
        await handle.shutdown()

"""Fixtures the bridge tests share: real upstream engines, started per test and killed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.bridge.mosquitto_upstream import UpstreamFactory, open_upstreams
from tests.bridge.nats_upstream import NatsServer, running_nats_server


@pytest.fixture
async def start_upstream(tmp_path: Path) -> AsyncIterator[UpstreamFactory]:
    """Mosquitto upstreams (persistence on), killed at teardown."""
    async with open_upstreams(tmp_path) as start:
        yield start


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    async with running_nats_server(tmp_path / "nats") as server:
        yield server

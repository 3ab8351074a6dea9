"""The fleet audited from the cloud log (issue 13, part 4): devices -> a real edgebus process -> its bridge ->
the simulator's uplink proxy (cut every few seconds) -> a real redis-server; the backend reads the stream and
the usual audit must pass: every acknowledged QoS 1/2 device message in the log [MQTT-4.3.2-2] (the broker
owns a message once it sent PUBACK), and no QoS 2 message twice [MQTT-4.3.3-1]."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from edgebus_fleet.engine import Engine
from edgebus_fleet.profiles import load_fleet

from tests.bridge.nats_upstream import open_nats_admin, running_nats_server
from tests.bridge.redis_upstream import read_stream, running_redis_server
from tests.clients import PEER
from tests.fleet.conftest import FIRMWARE_SIM
from tests.processes import free_port, start_edgebus_process

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's bridge")

GATEWAY = "gw-fleet"
PREFIX = f"gw/{GATEWAY}/"


def gateway_config(
    tmp_path: Path,
    port: int,
    uplink_port: int,
    kind: str = "redis-stream",
    prefix: str = PREFIX,
    extra: str = "",
) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{tmp_path / "data"}"\n'
        f'gateway_id = "{GATEWAY}"\n'
        f'[[bridge]]\nname = "cloud"\nkind = "{kind}"\naddresses = ["127.0.0.1:{uplink_port}"]\n{extra}'
        "keep_alive = 1.0\nack_timeout = 2.0\nconnect_timeout = 1.0\nbackoff_initial = 0.05\n"
        "backoff_max = 0.3\n"
        f'topics = [{{ pattern = "fleet/+/+", qos = 1, remote_prefix = "{prefix}" }},\n'
        f'  {{ pattern = "fleet/+/cmd/result", qos = 1, remote_prefix = "{prefix}" }}]\n'
    )
    return config


async def test_a_fleet_is_audited_from_the_redis_stream_through_uplink_cuts(tmp_path: Path) -> None:
    fleet = load_fleet(FIRMWARE_SIM / "fleets" / "cloud_redis.toml")
    assert fleet.log is not None and fleet.log.stream == f"edgebus:{GATEWAY}"
    async with running_redis_server(tmp_path / "redis") as redis_server:
        uplink_port = free_port()
        log = dataclasses.replace(fleet.log, port=redis_server.port, uplink_proxy_port=uplink_port)
        fleet = dataclasses.replace(fleet, log=log)
        port = free_port()
        with (tmp_path / "gateway.log").open("ab") as gateway_log:
            gateway = await start_edgebus_process(
                ["--config", str(gateway_config(tmp_path, port, uplink_port))], port, gateway_log
            )
            try:
                result = await Engine(fleet, "127.0.0.1", port, duration=8.0).run()
            finally:
                gateway.kill()
                await gateway.wait()
        entries = read_stream(redis_server.port, log.stream)
    for summary in result.summaries:
        print(summary.as_dict())
    assert result.passed, result.violations
    assert result.events["uplink_flaps"] >= 2
    delivered = result.ledger.delivered
    assert delivered >= 50, "too little load to mean anything"
    assert len(entries) >= delivered  # the audit counted what is in the stream (plus wills and commands)


async def test_a_fleet_is_audited_from_a_jetstream_stream_through_uplink_cuts(tmp_path: Path) -> None:
    fleet = load_fleet(FIRMWARE_SIM / "fleets" / "cloud_jetstream.toml")
    assert fleet.log is not None
    async with running_nats_server(tmp_path / "nats") as nats_server:
        async with open_nats_admin(nats_server.url) as admin:
            await admin.create_stream(fleet.log.stream, [f"{fleet.log.remote_prefix}.>"])
        uplink_port = free_port()
        log = dataclasses.replace(fleet.log, port=nats_server.port, uplink_proxy_port=uplink_port)
        fleet = dataclasses.replace(fleet, log=log)
        port = free_port()
        config = gateway_config(
            tmp_path, port, uplink_port, "nats-jetstream", log.remote_prefix, f'stream = "{log.stream}"\n'
        )
        with (tmp_path / "gateway.log").open("ab") as gateway_log:
            gateway = await start_edgebus_process(["--config", str(config)], port, gateway_log)
            try:
                result = await Engine(fleet, "127.0.0.1", port, duration=8.0).run()
            finally:
                gateway.kill()
                await gateway.wait()
    assert result.passed, result.violations
    assert result.events["uplink_flaps"] >= 2
    assert result.ledger.delivered >= 50, "too little load to mean anything"

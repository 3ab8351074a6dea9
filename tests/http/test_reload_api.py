"""POST /api/v1/reload against a real `edgebus serve --config FILE` process whose file the test rewrites:
the whole file is re-read and checked as on SIGHUP (the same function), a bridge and a listener added by it
show up in /api/v1/bridges, /api/v1/listeners and /metrics and go away with them, a file that does not
validate is refused with its file:line (422) and changes nothing, and the http listener the request came
through can itself be changed by the reload it answers."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from edgebus.config import ListenerConfig, parse_listen_address
from edgebus.server.reload import ReloadRefused
from tests.clients import MQTT_5, PahoClient, edgebus_only
from tests.conftest import StartBroker
from tests.http.helpers import ADMIN, VIEWER, basic, request, write_auth_files
from tests.http.test_metrics import parse_exposition
from tests.processes import free_port, start_edgebus_process

pytestmark = edgebus_only("the HTTP API is edgebus's")


@dataclass
class Gateway:
    directory: Path
    mqtt_port: int
    http_port: int
    passwords: Path
    process: trio.Process | None = None

    @property
    def config(self) -> Path:
        return self.directory / "edgebus.toml"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def write(self, extra: str = "", admins: str = '["admin"]') -> None:
        self.config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{self.mqtt_port}"]\ndata_dir = "{self.directory / "data"}"\n'
            f'[storage]\ndurability = "os"\n[sys]\ninterval = 0\n'
            f'[security]\npassword_file = "{self.passwords}"\nauth_failure_delay = 0.2\n\n'
            f'[[listener]]\ntype = "http"\naddress = "127.0.0.1:{self.http_port}"\n'
            f"credentials_over_http = true\nadmins = {admins}\n\n{extra}"
        )

    async def reload(self, who: tuple[str, str] = ADMIN) -> tuple[int, Any]:
        reply = await request(self.base + "/api/v1/reload", "POST", basic(who))
        return reply.status, reply.json()

    async def get(self, resource: str) -> Any:
        reply = await request(self.base + "/api/v1/" + resource, headers=basic(VIEWER))
        assert reply.status == 200, reply.body
        return reply.json()

    async def metrics(self) -> dict[str, float]:
        reply = await request(self.base + "/metrics", headers=basic(VIEWER))
        assert reply.status == 200, reply.body
        return parse_exposition(reply.body.decode())[2]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    passwords, _ = write_auth_files(tmp_path)
    handle = Gateway(tmp_path, free_port(), free_port(), passwords)
    handle.write()
    with (tmp_path / "edgebus.log").open("ab") as log_file:
        handle.process = await start_edgebus_process(
            ["--config", str(handle.config)], handle.http_port, log_file
        )
    try:
        yield handle
    finally:
        process = handle.process
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def bridge_toml(port: int) -> str:
    """An MQTT bridge to a port nothing listens on: its outbox fills (the upstream is down)."""
    return (
        f'[[bridge]]\nname = "cloud"\nkind = "mqtt"\naddresses = ["127.0.0.1:{port}"]\n'
        'topics = [{ pattern = "sensors/#", qos = 1 }]\n\n'
    )


async def test_api_reload_applies_the_file(gateway: Gateway, paho: Callable[..., PahoClient]) -> None:
    extra_port = free_port()
    http_listener = f"listener http 127.0.0.1:{gateway.http_port}"
    assert (await gateway.get("bridges")) == {"bridges": [], "parked": []}
    before = await gateway.metrics()
    assert not any(name.startswith("edgebus_bridge_") for name in before)
    device = paho("device", MQTT_5)
    await device.connect("127.0.0.1", gateway.mqtt_port)

    # A bridge and an MQTT listener added by the file: the report names them, the API and /metrics show them.
    gateway.write(
        bridge_toml(free_port()) + f'[[listener]]\ntype = "tcp"\naddress = "127.0.0.1:{extra_port}"\n'
    )
    status, report = await gateway.reload()
    assert status == 200, report
    assert report["source"] == str(gateway.config) and report["errors"] == []
    assert "bridge cloud: added" in report["changed"]
    assert f"listener tcp 127.0.0.1:{extra_port}: added" in report["changed"]
    assert [b["name"] for b in (await gateway.get("bridges"))["bridges"]] == ["cloud"]
    listeners = {(entry["type"], entry["address"]) for entry in (await gateway.get("listeners"))["listeners"]}
    assert ("tcp", f"127.0.0.1:{extra_port}") in listeners
    await device.publish("sensors/1", b"21.5", qos=1)
    with trio.fail_after(10):
        while True:  # the bridge takes the message once the store committed it
            if (await gateway.metrics()).get('edgebus_bridge_queued_messages{bridge="cloud"}') == 1:
                break
            await trio.sleep(0.1)
    samples = await gateway.metrics()
    assert f'edgebus_listener_connections{{type="tcp",address="127.0.0.1:{extra_port}"}}' in samples
    other = paho("other", MQTT_5)
    await other.connect("127.0.0.1", extra_port)  # the new listener accepts
    await other.disconnect()

    # A file that does not validate: 422 with its file:line; nothing changes.
    gateway.write(bridge_toml(free_port()) + '[mqtt]\nmax_inflight = "many"\n')
    line = gateway.config.read_text().splitlines().index('max_inflight = "many"') + 1
    status, refused = await gateway.reload()
    assert status == 422, refused
    assert any(problem.startswith(f"{gateway.config}:{line}:") for problem in refused["problems"])
    assert [b["name"] for b in (await gateway.get("bridges"))["bridges"]] == ["cloud"]
    # One that loads but cannot run (a missing password file): 422 naming the file; nothing changes.
    gateway.write(bridge_toml(free_port()))
    gateway.config.write_text(gateway.config.read_text().replace(str(gateway.passwords), "/nonexistent/pw"))
    status, refused = await gateway.reload()
    assert status == 422 and "/nonexistent/pw" in " ".join(refused["problems"]), refused
    assert (await gateway.get("bridges"))["bridges"][0]["queued"] == 1

    # Both removed again: gone from the API and from /metrics (the outbox row is kept for a bridge of
    # that name configured later).
    gateway.write()
    status, report = await gateway.reload()
    assert status == 200, report
    assert {"bridge cloud: removed", f"listener tcp 127.0.0.1:{extra_port}: removed"} <= set(
        report["changed"]
    )
    bridges = await gateway.get("bridges")
    assert bridges["bridges"] == []
    assert [(p["name"], p["queued"]) for p in bridges["parked"]] == [("cloud", 1)]
    samples = await gateway.metrics()
    assert not any(name.startswith("edgebus_bridge_") for name in samples)
    assert samples['edgebus_parked_outbox_messages{bridge="cloud"}'] == 1
    assert not any(f":{extra_port}" in name for name in samples)

    # The http listener itself changed (viewer made an admin), by a reload sent through it: the answer
    # still arrives, and the new listener on the same address applies the new rules.
    assert (await gateway.reload(VIEWER))[0] == 403
    gateway.write(admins='["admin", "viewer"]')
    status, report = await gateway.reload()
    assert status == 200, report
    assert {f"{http_listener}: removed", f"{http_listener}: added"} <= set(report["changed"])
    assert (await gateway.reload(VIEWER))[0] == 200
    # The device's connection was never dropped.
    await device.publish("sensors/2", b"22.0", qos=1)
    await device.disconnect()


async def test_an_http_listener_added_and_removed_by_a_reload(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    """A broker started without any http listener gets one from a reload (`reload_config`, what SIGHUP and
    the API apply), and loses it again: its port then refuses connections. A refused reload leaves none."""
    handle = await start_broker()
    broker = handle.broker
    assert broker is not None
    port = free_port()
    listener = ListenerConfig(
        type="http", address=parse_listen_address(f"127.0.0.1:{port}"), allow_anonymous=True
    )
    # Refused (an unreadable password file): nothing changes, and the server built for the listener is
    # dropped, not left among the running ones.
    security = dataclasses.replace(broker.config.security, password_file=str(tmp_path / "missing"))
    refused = dataclasses.replace(broker.config, listener=(listener,), security=security)
    with pytest.raises(ReloadRefused, match="missing"):
        await broker.reload_config(refused)
    assert broker.http is not None and broker.http.servers == {} and broker.listener_info()[0].type == "tcp"
    assert len(broker.listener_info()) == 1
    report = await broker.reload_config(dataclasses.replace(broker.config, listener=(listener,)))
    assert report.changed == [f"listener http 127.0.0.1:{port}: added"], report
    reply = await request(f"http://127.0.0.1:{port}/api/v1/listeners")
    assert reply.status == 200
    assert ("http", f"127.0.0.1:{port}") in {(e["type"], e["address"]) for e in reply.json()["listeners"]}
    report = await broker.reload_config(dataclasses.replace(broker.config, listener=()))
    assert report.changed == [f"listener http 127.0.0.1:{port}: removed"], report
    with pytest.raises(OSError, match="attempts to connect"):
        await trio.open_tcp_stream("127.0.0.1", port)

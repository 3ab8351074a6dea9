"""SIGHUP reloads the whole configuration of a running `edgebus serve` (a real process) under device traffic:
a bridge to a real Mosquitto added, changed and removed, then re-added, with the upstream log audited; an
invalid file refused with its file:line; listeners added and removed; settings that need a restart named;
RELOADING=1 / READY=1 on a real notify socket. No device connection is dropped by any of it."""

from __future__ import annotations

import signal
import socket
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from edgebus.client_trio import connect_mqtt
from edgebus.core.client import ClientOptions, MqttClient
from edgebus.protocol.enums import MQTT_3_1_1
from tests.bridge.audit import DeviceLoad
from tests.bridge.mosquitto_upstream import Upstream, open_upstreams
from tests.bridge.outage_logs import FAST_LINK_TOML, GATEWAY, MosquittoLog
from tests.processes import edgebus_env, free_port, start_edgebus_process

RATE = 60.0  # device messages per second
PHASE_S = 1.5  # traffic in each phase
#: After a reload is logged, PUBACKs of messages routed before it may still arrive for a moment (their
#: commit): those acknowledged within this margin are "either way" in the audit.
MARGIN_S = 0.5
RELOAD_TIMEOUT_S = 20.0
#: How long the owed messages may take to reach the upstream after the last phase (the test has 60 s).
LOG_WAIT_S = 15.0

Acked = frozenset[tuple[str, int]]


class Gateway:
    """An `edgebus serve --config FILE` process, its config file rewritten and SIGHUP'd."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.port = port
        self.config = tmp_path / "gateway.toml"
        self.data_dir = tmp_path / "data"
        self.log_path = tmp_path / "gateway.log"
        self.process: trio.Process | None = None

    def write(self, extra: str = "", *, data_dir: Path | None = None) -> None:
        self.config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{self.port}"]\ndata_dir = "{data_dir or self.data_dir}"\n'
            f'gateway_id = "{GATEWAY}"\n[storage]\ndurability = "os"\n[sys]\ninterval = 0\n\n{extra}'
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def start(self, env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log_file:
            if env is None:
                self.process = await start_edgebus_process(
                    ["--config", str(self.config)], self.port, log_file
                )
            else:
                self.process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "edgebus", "serve", "--config", str(self.config)],
                    env=env,
                    stdout=log_file,
                    stderr=log_file,
                )

    async def reload(self, expect: str = "configuration") -> str:
        """SIGHUP, and wait for the log line that says how it went; returns the new log text."""
        assert self.process is not None
        before = len(self.log_text())
        self.process.send_signal(signal.SIGHUP)
        with trio.fail_after(RELOAD_TIMEOUT_S):
            while True:
                new = self.log_text()[before:]
                if "reloaded;" in new or "reload refused" in new:
                    assert expect in new, new
                    return new
                await trio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    handle = Gateway(tmp_path, free_port())
    try:
        yield handle
    finally:
        await handle.stop()


def _bridge_toml(upstream: Upstream, remote_prefix: str) -> str:
    return (
        f'[[bridge]]\nname = "cloud"\nkind = "mqtt"\naddresses = ["127.0.0.1:{upstream.port}"]\n'
        f"{FAST_LINK_TOML}"
        f'topics = [{{ pattern = "sensors/#", qos = 2, remote_prefix = "{remote_prefix}" }}]\n'
    )


def _outbox_rows(data_dir: Path, bridge: str) -> int:
    """Rows the store holds for ``bridge`` (read-only, beside the running broker: SQLite WAL)."""
    with sqlite3.connect(f"file:{data_dir}/edgebus.db?mode=ro", uri=True) as db:
        (count,) = db.execute("SELECT count(*) FROM bridge_outbox WHERE bridge = ?", (bridge,)).fetchone()
    return int(count)


async def test_bridges_added_changed_removed_and_readded_under_traffic(
    gateway: Gateway, tmp_path: Path
) -> None:
    """The audit: every message acknowledged while the bridge was configured reaches the upstream exactly
    once and in per-topic order (the bridge publishes at QoS 2, [MQTT-4.3.3-1]); none acknowledged while it
    was not; the device's one connection is never dropped by a reload."""
    async with open_upstreams(tmp_path) as start_upstream:
        upstream = await start_upstream()
        cloud = MosquittoLog(upstream)
        await cloud.open()
        try:
            await _run_bridge_phases(gateway, upstream, cloud)
        finally:
            cloud.close()


async def _run_bridge_phases(gateway: Gateway, upstream: Upstream, cloud: MosquittoLog) -> None:
    v1, v2 = f"gw/{GATEWAY}/", f"gw/{GATEWAY}/v2/"
    gateway.write()
    await gateway.start()
    load = DeviceLoad()
    stop = trio.Event()

    def acked() -> Acked:
        return frozenset((topic, n) for topic, numbers in load.acked.items() for n in numbers)

    async def wait_backlog(rows: int) -> None:
        with trio.fail_after(RELOAD_TIMEOUT_S):
            while _outbox_rows(gateway.data_dir, "cloud") < rows:  # noqa: ASYNC110 - polling a file
                await trio.sleep(0.1)

    marks: dict[str, Acked] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, "127.0.0.1", gateway.port, RATE, stop)
        await trio.sleep(PHASE_S)  # no bridge: owed to no one

        # Added: flowing upstream from the reload on.
        gateway.write(_bridge_toml(upstream, v1))
        marks["add_sent"] = acked()
        report = await gateway.reload()
        assert "bridge cloud: added" in report
        await trio.sleep(MARGIN_S)
        marks["add_done"] = acked()
        await trio.sleep(PHASE_S)

        # Changed (the remote prefix) while the upstream is stopped, so the outbox holds a backlog the new
        # bridge must take over: none of it may be lost.
        upstream.pause()
        await wait_backlog(20)
        gateway.write(_bridge_toml(upstream, v2))
        report = await gateway.reload()
        assert "bridge cloud: changed" in report
        await trio.sleep(MARGIN_S)
        marks["change_done"] = acked()
        upstream.cont()
        await trio.sleep(PHASE_S)

        # Removed, with a backlog (upstream stopped again): the rows stay in the store.
        upstream.pause()
        await wait_backlog(20)
        gateway.write()
        marks["remove_sent"] = acked()
        report = await gateway.reload()
        assert "bridge cloud: removed" in report
        await trio.sleep(MARGIN_S)
        marks["remove_done"] = acked()
        kept = _outbox_rows(gateway.data_dir, "cloud")
        assert kept >= 20, kept
        upstream.cont()
        await trio.sleep(PHASE_S)  # acknowledged now: owed to no one
        assert _outbox_rows(gateway.data_dir, "cloud") == kept  # nothing added, nothing sent

        # Re-added: the kept backlog goes up first, then the new traffic.
        gateway.write(_bridge_toml(upstream, v2))
        marks["readd_sent"] = acked()
        report = await gateway.reload()
        assert "bridge cloud: added" in report
        await trio.sleep(MARGIN_S)
        marks["readd_done"] = acked()
        await trio.sleep(PHASE_S)
        stop.set()

    final = acked()
    owed = (marks["remove_sent"] - marks["add_done"]) | (final - marks["readd_done"])
    either = (
        (marks["add_done"] - marks["add_sent"])
        | (marks["remove_done"] - marks["remove_sent"])
        | (marks["readd_done"] - marks["readd_sent"])
        | load.unanswered
    )
    not_owed = final - owed - either
    assert len(not_owed) > RATE  # the phases without the bridge had traffic

    def read_log() -> list[tuple[str, int, str]]:
        entries = []
        for topic, payload in list(cloud.received):
            prefix = v2 if topic.startswith(v2) else v1
            assert topic.startswith(prefix), topic
            entries.append((topic[len(prefix) :], int(payload), prefix))
        return entries

    with trio.move_on_after(LOG_WAIT_S):
        while not owed <= {(topic, n) for topic, n, _ in read_log()}:  # noqa: ASYNC110 - paho's thread
            await trio.sleep(0.25)
    await trio.sleep(1.0)  # late duplicates
    log = read_log()
    counts = Counter((topic, n) for topic, n, _ in log)
    lost = sorted(owed - counts.keys())
    duplicated = sorted(key for key, count in counts.items() if count > 1)
    unexpected = sorted(key for key in counts if key not in owed and key not in either)
    last: dict[str, int] = {}
    reordered = []
    for topic, n, _ in log:
        if n <= last.get(topic, 0):
            reordered.append((topic, last[topic], n))
        last[topic] = max(n, last.get(topic, 0))
    print(f"owed {len(owed)}, either {len(either)}, not owed {len(not_owed)}, log {len(log)}, kept {kept}")
    assert (lost, duplicated, unexpected, reordered) == ([], [], [], []), (
        f"lost {lost[:10]} ({len(lost)}), duplicated {duplicated[:10]} ({len(duplicated)}), "
        f"unexpected {unexpected[:10]} ({len(unexpected)}), reordered {reordered[:10]}"
    )
    # Changed applies: what was acknowledged after the change went up under the new prefix.
    prefix_of = {(topic, n): prefix for topic, n, prefix in log}
    after_change = (marks["remove_sent"] - marks["change_done"]) | (final - marks["readd_done"])
    assert after_change and all(prefix_of[key] == v2 for key in after_change)
    assert load.connections == 1  # the device was never disconnected
    assert _outbox_rows(gateway.data_dir, "cloud") == 0  # the backlog was forwarded


async def _accepts(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def test_invalid_config_listeners_restart_settings_and_notify(gateway: Gateway, tmp_path: Path) -> None:
    """An invalid file is refused with file:line and the broker keeps serving; a [[listener]] added starts
    accepting and removed stops, while the connection made through it stays; data_dir needs a restart;
    systemd hears RELOADING=1 then READY=1 (sd_notify(3))."""
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify")
    await notify.bind(address)
    gateway.write()
    await gateway.start(env=dict(edgebus_env(), NOTIFY_SOCKET=address))
    with trio.fail_after(20):
        assert b"READY=1" in await notify.recv(4096)

    extra_port = free_port()
    listener = f'[[listener]]\ntype = "tcp"\naddress = "127.0.0.1:{extra_port}"\n'
    async with trio.open_nursery() as nursery:
        # A device on the main listener, kept through every reload below.
        device = await connect_mqtt(
            nursery, "127.0.0.1", gateway.port, MqttClient(ClientOptions("steady", protocol_level=MQTT_3_1_1))
        )

        # Invalid: refused, file:line in the log, the running config stays (no listener appears).
        gateway.config.write_text(gateway.config.read_text() + listener + "[limits]\nmax_connections = -1\n")
        report = await gateway.reload(expect="reload refused")
        assert f"{gateway.config}:" in report and "limits.max_connections" in report
        line = gateway.config.read_text().splitlines().index("max_connections = -1") + 1
        assert f"{gateway.config}:{line}: limits.max_connections" in report
        assert not await _accepts(extra_port)
        with trio.fail_after(10):
            assert b"RELOADING=1" in await notify.recv(4096)
            assert b"READY=1" in await notify.recv(4096)

        # A listener added, and a data_dir change that is not applied but named.
        gateway.write(listener, data_dir=tmp_path / "elsewhere")
        report = await gateway.reload()
        assert f"listener tcp 127.0.0.1:{extra_port}: added" in report
        assert "needs a restart: server.data_dir" in report
        via_listener = await connect_mqtt(
            nursery,
            "127.0.0.1",
            extra_port,
            MqttClient(ClientOptions("via-extra", protocol_level=MQTT_3_1_1)),
        )
        reloading = await notify.recv(4096)
        assert b"RELOADING=1" in reloading and b"MONOTONIC_USEC=" in reloading
        assert b"READY=1" in await notify.recv(4096)

        # Removed: no new connections there; the one it accepted stays open and working.
        gateway.write()
        report = await gateway.reload()
        assert f"listener tcp 127.0.0.1:{extra_port}: removed" in report
        assert not await _accepts(extra_port)
        for connection in (device, via_listener):
            assert not connection.closed.is_set()
            with trio.fail_after(10):
                acknowledged = await connection.publish_and_wait("after/reload", b"1", qos=1)
            assert acknowledged is not None and acknowledged.success
        assert not (tmp_path / "elsewhere").exists()
        for connection in (device, via_listener):
            connection.disconnect()
            with trio.fail_after(10):
                await connection.wait_closed()
    notify.close()

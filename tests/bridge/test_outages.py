"""Outage cycles against the real engines: the uplink cut mid-stream by a proxy, the upstream killed and
restarted, the gateway SIGKILLed while forwarding and restarted; several cycles each. Every time, the log
must hold every acknowledged device message exactly once, in per-topic order (tests/bridge/audit.py).

The bridge's promise (issue 6) stacked on MQTT's: a device's PUBACK means the message is the broker's
[MQTT-4.3.2-2]; the broker then owes it to the log once.
"""

from __future__ import annotations

import functools
import random
import signal
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import IO

import pytest
import trio
from edgebus_fleet.proxy import ChaosProxy

from edgebus.bridge.runner import Bridge
from tests.bridge.audit import DeviceLoad, audit, wait_for_log
from tests.bridge.kafka_log import kafka_log
from tests.bridge.kafka_upstream import kafka_available
from tests.bridge.outage_logs import CYCLES, FAST_LINK, GATEWAY, OUTAGE_S, Log, jetstream_log, mosquitto_log
from tests.bridge.qos1_logs import mosquitto_qos1_log, rabbitmq_mqtt_log
from tests.bridge.rabbitmq_log import rabbitmq_log
from tests.bridge.redis_log import redis_log
from tests.clients import PEER
from tests.conftest import StartBroker
from tests.processes import free_port, start_edgebus_process

pytestmark = pytest.mark.skipif(PEER != "edgebus", reason="edgebus's bridge")

RATE = 300.0  # device messages per second
LOG_TIMEOUT_S = 40.0

# --- the engines: each opens a log (tests/bridge/outage_logs.py has the shape) --------------------------

LOGS: dict[str, Callable[[Path], AbstractAsyncContextManager[Log]]] = {
    "jetstream": jetstream_log,
    "mosquitto": mosquitto_log,
    "redis": redis_log,
    "rabbitmq-stream": rabbitmq_log,
    "kafka": kafka_log,
    # QoS-1-only upstreams: at least once, duplicates counted (tests/bridge/qos1_logs.py)
    "mosquitto-qos1": mosquitto_qos1_log,
    "rabbitmq-mqtt": rabbitmq_mqtt_log,
}
#: Engines whose server is fetched by scripts/test and may be missing on a machine that did not run it.
NEEDS = {"kafka": (kafka_available, "Kafka's jars are not in .cache/kafka (run scripts/test)")}
#: Engines that store a batch for good only after the client saw every record's ack (Kafka transactions).
COMMIT_AFTER_ACKS = {"kafka"}
ENGINES = [
    pytest.param(name, marks=pytest.mark.skipif(not NEEDS[name][0](), reason=NEEDS[name][1]))
    if name in NEEDS
    else name
    for name in LOGS
]


def open_log(engine: str, tmp_path: Path) -> AbstractAsyncContextManager[Log]:
    return LOGS[engine](tmp_path)


def proxy_route(log: Log) -> tuple[int, int]:
    """(the port a ChaosProxy in front of the log forwards to, the port it must listen on; 0 = any).
    A log whose clients follow advertised addresses (Kafka) names both; the others take server.port."""
    route: tuple[int, int] | None = getattr(log, "proxy_route", None)
    return route if route is not None else (log.server.port, 0)


# --- the scenarios ---------------------------------------------------------------------------------------


async def _run_load(address: tuple[str, int], chaos: Callable[[], Awaitable[None]], load: DeviceLoad) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, *address, RATE, stop)
        await chaos()
        stop.set()


async def _check(log: Log, load: DeviceLoad, failures: int) -> None:
    """Audit the log. ``failures``: the uplink connections that ended in failure (or with the gateway),
    each of which may cost an at-least-once log up to its ``duplicates_per_failure``."""
    found = await wait_for_log(log.read, load, LOG_TIMEOUT_S, log.count)
    verdict = audit(load, found, log.exactly_once)
    print(
        f"\naudit: {load.acked_count} acknowledged, {verdict.total} in the log, lost {len(verdict.lost)}, "
        f"duplicated {len(verdict.duplicated)} ({verdict.copies} extra copies), "
        f"reordered {len(verdict.reordered)}, "
        f"unacknowledged but logged {verdict.total - verdict.copies - load.acked_count}; "
        f"{failures} uplink failures"
    )
    assert verdict.ok, verdict
    assert load.acked_count >= 300, "too little load to mean anything"
    bound: int | None = getattr(log, "duplicates_per_failure", None)
    if not log.exactly_once and bound is not None:
        assert verdict.copies <= failures * bound, f"more than {bound} duplicates per failure: {verdict}"


async def _cycles(fault: Callable[[], Awaitable[None]], cycles: int = CYCLES) -> None:
    """``cycles`` times: forward for a while, then the fault, then the outage it causes."""
    for _ in range(cycles):
        await trio.sleep(random.uniform(0.6, 1.2))  # up, forwarding
        await fault()
        await trio.sleep(OUTAGE_S)
    await trio.sleep(0.5)


async def _through_proxy(
    engine: str,
    start_broker: StartBroker,
    tmp_path: Path,
    nursery: trio.Nursery,
    fault: Callable[[ChaosProxy], None],
) -> Bridge:
    """The uplink through a ChaosProxy that ``fault`` breaks CYCLES times under load; audited."""
    async with open_log(engine, tmp_path) as log:
        target, listen = proxy_route(log)
        proxy = ChaosProxy("127.0.0.1", target, listen)
        port = await nursery.start(proxy.serve)
        broker = await start_broker(bridges=(log.bridge(port),))
        load = DeviceLoad()

        async def break_proxy() -> None:
            fault(proxy)

        await _run_load(broker.address, functools.partial(_cycles, break_proxy), load)
        assert broker.broker is not None
        bridge: Bridge = broker.broker.bridges[0]
        await _check(log, load, bridge.connects - 1)
        return bridge


@pytest.mark.parametrize("engine", ENGINES)
async def test_uplink_cut_by_proxy(
    engine: str, start_broker: StartBroker, tmp_path: Path, nursery: trio.Nursery
) -> None:
    # Cut mid-stream, down for longer than the duplicate window. A Kafka link rides out a cut shorter than
    # ack_timeout that falls in a commit (librdkafka reconnects and the commit completes: the point of
    # edgebus.bridge.kafka's `committing`), so its cuts last longer than ack_timeout: a dead link must
    # then be noticed and ended.
    outage = OUTAGE_S if engine != "kafka" else float(str(FAST_LINK["ack_timeout"])) + 1.0
    bridge = await _through_proxy(engine, start_broker, tmp_path, nursery, lambda proxy: proxy.flap(outage))
    if engine == "kafka":
        # A cut that falls while the bridge is still connecting fails that connect instead of ending a link.
        assert bridge.connects >= 2
    else:
        assert bridge.connects >= CYCLES + 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_acknowledgements_lost(
    engine: str, start_broker: StartBroker, tmp_path: Path, nursery: trio.Nursery
) -> None:
    # The upstream stores the batch but its acks never come back (a half-dead uplink): the stuck window
    # is detected, the link dropped, and on reconnect the log's last id says the batch is in. The outage
    # outlasts JetStream's duplicate window, so only resume() stands between the resend and a duplicate.
    bridge = await _through_proxy(engine, start_broker, tmp_path, nursery, lambda proxy: proxy.mute(OUTAGE_S))
    if engine in COMMIT_AFTER_ACKS:
        # The batch's records are stored, their acks lost; the client commits only after every ack, so
        # the transaction is aborted by the next connection's init_transactions and the batch goes again:
        # the audit's "no duplicate" is the check. (A lost reply to the commit itself, a narrow window,
        # is what resume() then skips.)
        assert bridge.connects > 1, "the muted link was never given up"
    else:
        assert bridge.skipped > 0, "no batch was caught between storage and acknowledgement"


@pytest.mark.parametrize("engine", ENGINES)
async def test_upstream_killed_and_restarted(engine: str, start_broker: StartBroker, tmp_path: Path) -> None:
    async with open_log(engine, tmp_path) as log:
        broker = await start_broker(bridges=(log.bridge(log.server.port),))
        load = DeviceLoad()

        # A log whose server takes long to restart (an Erlang node: ~8 s here) may ask for fewer cycles.
        cycles: int = getattr(log, "restart_cycles", CYCLES)
        await _run_load(broker.address, functools.partial(_cycles, log.restart, cycles), load)
        assert broker.broker is not None
        await _check(log, load, broker.broker.bridges[0].connects - 1)


# --- the gateway SIGKILLed -------------------------------------------------------------------------------


def _gateway_config(path: Path, port: int, bridge_toml: str) -> Path:
    config = path / "gateway.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ndata_dir = "{path / "data"}"\ngateway_id = "{GATEWAY}"\n'
        f"[sys]\ninterval = 0\n\n{bridge_toml}"
    )
    return config


async def _start_gateway(config: Path, port: int, log_file: IO[bytes]) -> trio.Process:
    return await start_edgebus_process(["--config", str(config)], port, log_file)


async def _gateway_sigkill_cycles(tmp_path: Path, log: Log, bridge_toml: str) -> None:
    port = free_port()
    config = _gateway_config(tmp_path, port, bridge_toml)
    load = DeviceLoad()
    with (tmp_path / "gateway.log").open("ab") as log_file:
        process = await _start_gateway(config, port, log_file)
        try:

            async def crashes() -> None:
                nonlocal process
                for _ in range(CYCLES):
                    await trio.sleep(random.uniform(0.8, 1.5))
                    process.send_signal(signal.SIGKILL)  # mid-forwarding: the load never stops
                    await process.wait()
                    await trio.sleep(0.2)
                    process = await _start_gateway(config, port, log_file)
                await trio.sleep(0.5)

            await _run_load(("127.0.0.1", port), crashes, load)
            # Every connection after the first follows a failure or a SIGKILL (mqtt sink's log line).
            gateway_log = (tmp_path / "gateway.log").read_text(errors="replace")
            connects = gateway_log.count("bridge cloud: connected to")
            await _check(log, load, max(CYCLES, connects - 1))
        finally:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("engine", ENGINES)
async def test_gateway_sigkilled_while_forwarding(engine: str, tmp_path: Path) -> None:
    async with open_log(engine, tmp_path) as log:
        await _gateway_sigkill_cycles(tmp_path, log, log.bridge_toml(log.server.port))

"""Shared fixtures: the broker under test (edgebus in-process, or Mosquitto as a reference), client factories.

``EDGEBUS_TEST_PEER=mosquitto`` runs the broker tests against Mosquitto 2.0.11 to validate the tests
themselves; by default edgebus runs in the test's own nursery on port 0.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from tests import shared_engines
from tests.clients import PEER, AmqttClient, PahoClient, RawClient
from tests.processes import free_port

#: The per-test guard: a hung test fails after this long instead of blocking the suite.
TEST_TIMEOUT_S: Final = 60.0
#: Bound for a broker to start and to shut down.
BROKER_START_S: Final = 10.0
BROKER_STOP_S: Final = 5.0
MOSQUITTO: Final = "/usr/sbin/mosquitto"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Boot the shared engines the selected tests need in the background (tests/shared_engines.py)."""
    if not session.config.option.collectonly:
        shared_engines.start_early(session.items)


def pytest_unconfigure(config: pytest.Config) -> None:
    shared_engines.wait_for_early_start()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Run every async test body under ``trio.fail_after(TEST_TIMEOUT_S)``.

    This wrapper runs before pytest-trio's hook turns ``item.obj`` into a ``trio.run`` call, so the
    deadline applies inside the test's trio run.
    """
    test_function = getattr(item, "obj", None)
    skip_reason: list[str] = []
    # Hypothesis tests are left alone: pytest-trio reaches into their ``.hypothesis`` attribute.
    if inspect.iscoroutinefunction(test_function) and not hasattr(test_function, "hypothesis"):

        @functools.wraps(test_function)
        async def guarded(**kwargs: Any) -> None:
            try:
                with trio.fail_after(TEST_TIMEOUT_S):
                    await test_function(**kwargs)
            except pytest.skip.Exception as skip:
                skip_reason.append(skip.msg or "")  # pytest-trio re-raises skips without their reason
                raise

        item.obj = guarded  # type: ignore[attr-defined]
    try:
        return (yield)
    except pytest.skip.Exception:
        if skip_reason:
            pytest.skip(skip_reason[0])
        raise


# ---------------------------------------------------------------------------------------------------------
# The broker under test
# ---------------------------------------------------------------------------------------------------------


@dataclass
class BrokerHandle:
    """A running broker: where it listens, which implementation it is, and how to stop it."""

    host: str
    port: int
    peer: str
    broker: Any | None  # the edgebus.server.broker.Broker on the edgebus peer
    data_dir: Path
    _stop: Callable[[], Awaitable[None]] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def shutdown(self) -> None:
        """Graceful shutdown (edgebus: ``Broker.shutdown()`` until ``serve`` returns; Mosquitto: SIGTERM).
        Fails the test if it takes longer than BROKER_STOP_S."""
        if not self._stopped:
            self._stopped = True
            await self._stop()


#: Config keys (section, key) -> Mosquitto option that has the same effect; global options.
_MOSQUITTO_GLOBAL_OPTIONS: Final = {
    ("mqtt", "max_packet_size"): "max_packet_size",
    # Mosquitto advertises max_inflight_messages as its Receive Maximum and also uses it as the
    # outgoing in-flight window, so both edgebus knobs map to it.
    ("mqtt", "receive_maximum"): "max_inflight_messages",
    ("mqtt", "max_inflight"): "max_inflight_messages",
    ("mqtt", "max_keep_alive"): "max_keepalive",
    ("mqtt", "retain_available"): "retain_available",
    ("queue", "max_messages"): "max_queued_messages",
    ("queue", "max_bytes"): "max_queued_bytes",
    ("sys", "interval"): "sys_interval",
}
#: Per-listener Mosquitto options (must follow the ``listener`` line).
_MOSQUITTO_LISTENER_OPTIONS: Final = {
    ("mqtt", "max_qos"): "max_qos",
    ("mqtt", "topic_alias_maximum"): "max_topic_alias",
}


def _mosquitto_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _mosquitto_config(port: int, overrides: dict[str, dict[str, Any]]) -> str:
    """A mosquitto.conf equivalent to the test's overrides; skips the test if one has no equivalent."""
    global_lines = ["persistence false", "log_type all", "log_dest stderr"]
    listener_lines = [f"listener {port} 127.0.0.1", "allow_anonymous true"]
    seen: dict[str, str] = {}
    for section, values in overrides.items():
        for key, value in values.items():
            if (section, key) == ("queue", "overflow") and value == "drop-newest":
                continue  # Mosquitto drops new messages when a client's queue is full
            option = _MOSQUITTO_GLOBAL_OPTIONS.get((section, key))
            lines = global_lines
            if option is None:
                option = _MOSQUITTO_LISTENER_OPTIONS.get((section, key))
                lines = listener_lines
            if option is None:
                pytest.skip(f"Mosquitto has no equivalent of {section}.{key} = {value!r}")
            text = _mosquitto_value(value)
            if seen.setdefault(option, text) != text:
                pytest.skip(f"Mosquitto has a single {option} for different edgebus settings")
            lines.append(f"{option} {text}")
    return "\n".join([*dict.fromkeys(global_lines), *dict.fromkeys(listener_lines)]) + "\n"




async def _start_mosquitto(data_dir: Path, overrides: dict[str, dict[str, Any]]) -> BrokerHandle:
    port = free_port()
    config_path = data_dir / "mosquitto.conf"
    config_path.write_text(_mosquitto_config(port, overrides))
    log = (data_dir / "mosquitto.log").open("wb")
    process = await trio.lowlevel.open_process([MOSQUITTO, "-c", str(config_path)], stdout=log, stderr=log)

    async def stop() -> None:
        process.terminate()
        try:
            with trio.fail_after(BROKER_STOP_S):
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            log.close()

    try:
        with trio.fail_after(BROKER_START_S):
            while True:
                if process.returncode is not None or process.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {(data_dir / 'mosquitto.log').read_text()}")
                try:
                    probe = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await probe.aclose()
                break
    except BaseException:
        await stop()
        raise
    return BrokerHandle("127.0.0.1", port, "mosquitto", None, data_dir, stop)


async def _start_edgebus(
    nursery: trio.Nursery,
    data_dir: Path,
    overrides: dict[str, dict[str, Any]],
    listeners: list[dict[str, Any]] | None = None,
    bridges: tuple[Any, ...] = (),
) -> BrokerHandle:
    from edgebus.config import (
        Config,
        LimitsConfig,
        ListenAddress,
        ListenerConfig,
        MqttConfig,
        QueueConfig,
        SecurityConfig,
        ServerConfig,
        StorageConfig,
        SysConfig,
        parse_listen_address,
    )
    from edgebus.server.broker import Broker

    config = Config(
        server=ServerConfig(
            listen=(ListenAddress("127.0.0.1", 0),), data_dir=str(data_dir), gateway_id="gw-test"
        ),
        mqtt=MqttConfig(**overrides.get("mqtt", {})),
        queue=QueueConfig(**overrides.get("queue", {})),
        sys=SysConfig(**overrides.get("sys", {})),
        storage=StorageConfig(**overrides.get("storage", {})),
        security=SecurityConfig(**overrides.get("security", {})),
        limits=LimitsConfig(**overrides.get("limits", {})),
        # [[listener]] entries: {"type": "tls", "certfile": ...}; the address defaults to 127.0.0.1:0.
        listener=tuple(
            ListenerConfig(**{**entry, "address": parse_listen_address(entry.get("address", "127.0.0.1:0"))})
            for entry in listeners or []
        ),
        bridge=bridges,
    )
    broker = Broker(config)
    stopped = trio.Event()

    async def serve(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await broker.serve(task_status=task_status)
        finally:
            stopped.set()

    with trio.fail_after(BROKER_START_S):
        addresses = await nursery.start(serve)
    host, port = addresses[0]

    async def stop() -> None:
        broker.shutdown()
        with trio.fail_after(BROKER_STOP_S):
            await stopped.wait()

    return BrokerHandle(host, port, "edgebus", broker, data_dir, stop)


StartBroker = Callable[..., Awaitable[BrokerHandle]]


@pytest.fixture
async def start_broker(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartBroker]:
    """Factory: ``await start_broker(mqtt={...}, queue={...}, sys={...}, security={...}, limits={...},
    listeners=[{...}], data_dir=None, bridges=(BridgeConfig(...), ...))``.

    Each call starts a broker with those config overrides (keys as in edgebus.config). A broker still
    running at the end of the test is shut down; pass ``data_dir`` to restart on the same state.
    """
    handles: list[BrokerHandle] = []

    async def start(
        *,
        mqtt: dict[str, Any] | None = None,
        queue: dict[str, Any] | None = None,
        sys: dict[str, Any] | None = None,
        storage: dict[str, Any] | None = None,
        security: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        listeners: list[dict[str, Any]] | None = None,
        data_dir: Path | None = None,
        bridges: tuple[Any, ...] = (),
    ) -> BrokerHandle:
        overrides = {"mqtt": mqtt or {}, "queue": queue or {}, "sys": sys or {}, "storage": storage or {}}
        if security or limits or listeners or bridges:
            if PEER == "mosquitto":
                pytest.skip("security, limits and extra listeners are tested on edgebus only")
            overrides |= {"security": security or {}, "limits": limits or {}}
        if data_dir is None:
            data_dir = tmp_path / f"broker{len(handles)}"
            data_dir.mkdir()
        if PEER == "mosquitto":
            handle = await _start_mosquitto(data_dir, overrides)
        else:
            handle = await _start_edgebus(nursery, data_dir, overrides, listeners or [], bridges)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        if not handle._stopped:
            handle._stopped = True
            # A broker that does not stop gracefully is left to the nursery's cancellation; its shutdown
            # is tested on its own (test_connect.py) rather than failing every test's teardown.
            with trio.move_on_after(BROKER_STOP_S):
                await handle._stop()


@pytest.fixture
async def broker(start_broker: StartBroker) -> BrokerHandle:
    """A broker with default settings."""
    return await start_broker()


# ---------------------------------------------------------------------------------------------------------
# Client factories with cleanup
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
async def paho() -> AsyncIterator[Callable[..., PahoClient]]:
    """Factory: ``paho("client-id", version=5)`` -> an unconnected PahoClient, stopped at teardown."""
    created: list[PahoClient] = []

    def make(client_id: str = "", version: int = 5) -> PahoClient:
        client = PahoClient(client_id, version)
        created.append(client)
        return client

    yield make
    for client in created:
        await trio.to_thread.run_sync(client.force_close)


@pytest.fixture
async def amqtt() -> AsyncIterator[Callable[[str], AmqttClient]]:
    """Factory: ``amqtt("client-id")`` -> an unconnected AmqttClient, stopped at teardown."""
    created: list[AmqttClient] = []

    def make(client_id: str) -> AmqttClient:
        client = AmqttClient(client_id)
        created.append(client)
        return client

    yield make
    for client in created:
        await trio.to_thread.run_sync(client.force_close)


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """Factory: ``await raw(broker, protocol_level=5)`` -> a connected RawClient, closed at teardown."""
    created: list[RawClient] = []

    async def make(target: BrokerHandle, protocol_level: int = 5) -> RawClient:
        client = await RawClient.connect(target.host, target.port, protocol_level)
        created.append(client)
        return client

    yield make
    for client in created:
        await client.aclose()

"""Benchmark driver: starts each broker under test, runs the load scenarios and compares them to Mosquitto."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TextIO

from bench import loadgen

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "latest.json"
HOST = "127.0.0.1"
BROKER_CORE = 0
LOADGEN_CORE = 1
BROKER_START_TIMEOUT_S = 20.0
BROKER_STOP_TIMEOUT_S = 5.0
LOADGEN_CPU_WARNING_PCT = 90.0
# Outgoing QoS 1/2 messages in flight per client: edgebus's default `mqtt.max_inflight`, given to Mosquitto
# (whose default is 20) so that both deliver to the subscriber under the same flow-control window.
INFLIGHT_WINDOW = 100
MAX_QUEUED_MESSAGES = 100_000
# Where the brokers' temporary directories (edgebus's --data-dir among them) are made. /proc/PID/io
# write_bytes only counts writes to a block device, so this must not be tmpfs: /var/tmp is disk-backed by
# convention (FHS), unlike /tmp on many systems. --workdir overrides it; the run prints the file system.
DEFAULT_WORK_ROOT = Path("/var/tmp")
# File systems where write_bytes says nothing about the disk (memory-backed, or FUSE/overlay layers).
NON_DISK_FILESYSTEMS = ("tmpfs", "ramfs", "overlay", "fuse", "9p", "nfs", "squashfs")
# edgebus settings for one scenario on top of the default (or --edgebus-config) configuration: in
# durable-q1-offline the whole offline queue must fit, as in Mosquitto (max_queued_messages).
EDGEBUS_SCENARIO_CONFIG: dict[str, dict[str, dict[str, Any]]] = {
    "durable-q1-offline": {"queue": {"max_messages": MAX_QUEUED_MESSAGES}},
}
PEER_NAMES = ("mosquitto", "edgebus", "amqtt")
REFERENCE_PEER = "mosquitto"
PR_SET_PDEATHSIG = 1


class BrokerStartError(Exception):
    """The broker process exited or never accepted a connection."""


def free_port() -> int:
    """A loopback port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _broker_preexec(core: int | None, nofile: int) -> Callable[[], None]:
    """Runs in the forked child before exec: pin it, give it the fd limit, die with the harness."""

    def preexec() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        # A harness killed with SIGKILL cannot run its finally blocks; the kernel then stops the broker.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


class BrokerProcess:
    """One broker run as a child process on its own loopback port, in its own temporary directory."""

    name: ClassVar[str] = "broker"

    def __init__(self, *, core: int | None = BROKER_CORE, work_root: Path | None = None) -> None:
        self.core = core
        self.work_root = work_root
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None

    @property
    def workdir(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("broker not started")
        return Path(self._tmp.name)

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def command(self, port: int, workdir: Path) -> list[str]:
        raise NotImplementedError

    def cwd(self) -> Path | None:
        return None

    def start(self) -> None:
        if self.work_root is not None:
            self.work_root.mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"bench-{self.name}-",
                                                dir=None if self.work_root is None else str(self.work_root))
        self.port = free_port()
        command = self.command(self.port, self.workdir)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = nofile if nofile != resource.RLIM_INFINITY else 1 << 20
        self._log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                command, cwd=self.cwd(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                preexec_fn=_broker_preexec(self.core, nofile), start_new_session=True)
        except OSError as exc:
            raise BrokerStartError(f"cannot execute {command[0]}: {exc}") from exc
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise BrokerStartError(f"exited with code {code}: {self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerStartError(f"no connection accepted on port {self.port} within "
                               f"{BROKER_START_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except (OSError, RuntimeError):
            return "(no log)"
        return " | ".join(text[-lines:]) if text else "(empty log)"

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        """terminate, then kill after BROKER_STOP_TIMEOUT_S; always clean up the temporary directory."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(BROKER_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    # loadgen.BrokerProbe
    def rss_kib(self) -> int:
        if self.proc is None:
            raise OSError("broker not running")
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise OSError("VmRSS missing")

    def cpu_seconds(self) -> float:
        if self.proc is None:
            raise OSError("broker not running")
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of proc(5); fields[0] here is field 3 (state).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def io_counters(self) -> dict[str, int]:
        """/proc/PID/io (proc(5)): write_bytes = bytes this process (all its threads) caused to be sent
        to the block layer, counted when a page cache page is dirtied; wchar = bytes passed to write()
        and send() of any kind, sockets included."""
        if self.proc is None:
            raise OSError("broker not running")
        counters = {}
        with open(f"/proc/{self.proc.pid}/io") as io:
            for line in io:
                key, _, value = line.partition(":")
                counters[key.strip()] = int(value)
        return counters

    def version(self) -> str:
        return "?"


class MosquittoBroker(BrokerProcess):
    """The reference: Debian's mosquitto with a generated config (settings listed in bench/README.md)."""

    name = "mosquitto"
    DEFAULT_EXECUTABLE = "/usr/sbin/mosquitto"

    def __init__(self, *, executable: str | None = None, core: int | None = BROKER_CORE,
                 work_root: Path | None = None) -> None:
        super().__init__(core=core, work_root=work_root)
        self.executable = executable or shutil.which("mosquitto") or self.DEFAULT_EXECUTABLE

    def config_text(self, port: int) -> str:
        # Started as root, mosquitto switches to the `mosquitto` user, and a uid change clears the
        # parent-death signal set in _broker_preexec; staying root keeps that safety net.
        run_as = ["user root"] if os.geteuid() == 0 else []
        return "\n".join([
            *run_as,
            f"listener {port} {HOST}",
            "allow_anonymous true",
            "persistence false",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"max_inflight_messages {INFLIGHT_WINDOW}",
            "max_connections -1",
            # trio (edgebus) and asyncio (amqtt) sockets run with TCP_NODELAY; so should the reference.
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "connection_messages false",
            "",
        ])

    def command(self, port: int, workdir: Path) -> list[str]:
        config = workdir / "mosquitto.conf"
        config.write_text(self.config_text(port))
        return [self.executable, "-c", str(config)]

    def version(self) -> str:
        try:
            out = subprocess.run([self.executable, "-h"], capture_output=True, text=True, timeout=5,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        first = (out.stdout or out.stderr).strip().splitlines()
        return first[0] if first else "?"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(config: Mapping[str, Any]) -> str:
    """A configuration of edgebus's shape (tables of scalars and lists, arrays of tables) as TOML."""
    lines: list[str] = []
    for name, table in config.items():
        tables = table if isinstance(table, list) else [table]
        for entry in tables:
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
            lines.append("")
    return "\n".join(lines)


def merged_config(base: Path | None, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if base is not None:
        with base.open("rb") as file:
            config = tomllib.load(file)
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    return config


class EdgebusBroker(BrokerProcess):
    """edgebus from this repository, run as `python -m edgebus serve` with a fresh data directory.

    config: a TOML file for `--config` (--edgebus-config); overrides: settings on top of it (or of the
    defaults) for one scenario, written with it to a file in the broker's temporary directory.
    """

    name = "edgebus"

    def __init__(self, *, core: int | None = BROKER_CORE, work_root: Path | None = None,
                 config: Path | None = None,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__(core=core, work_root=work_root)
        self.config = config
        self.overrides = overrides or {}

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def command(self, port: int, workdir: Path) -> list[str]:
        data_dir = workdir / "data"
        data_dir.mkdir()
        config = self.config
        if self.overrides:
            config = workdir / "edgebus.toml"
            config.write_text(toml_text(merged_config(self.config, self.overrides)))
        # --listen and --data-dir override the file.
        return [sys.executable, "-m", "edgebus", "serve", "--listen", f"{HOST}:{port}",
                "--data-dir", str(data_dir), *(["--config", str(config)] if config else [])]

    def cwd(self) -> Path | None:
        return REPO_ROOT

    def version(self) -> str:
        try:
            out = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                                 capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return out.stdout.strip() or "(no commit)"


class AmqttBroker(BrokerProcess):
    """amqtt (pure-Python asyncio broker) through its `amqtt` console script, with only anonymous auth."""

    name = "amqtt"

    def executable(self) -> str:
        beside = Path(sys.executable).parent / "amqtt"
        return str(beside) if beside.exists() else (shutil.which("amqtt") or "amqtt")

    def config_text(self, port: int) -> str:
        # Only the anonymous-auth plugin: the default config also loads packet/event logging and $SYS
        # plugins, which would measure logging rather than the broker.
        return "\n".join([
            "listeners:",
            "  default:",
            "    type: tcp",
            f"    bind: {HOST}:{port}",
            "    max_connections: -1",
            "plugins:",
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:",
            "    allow_anonymous: true",
            "",
        ])

    def command(self, port: int, workdir: Path) -> list[str]:
        config = workdir / "amqtt.yaml"
        config.write_text(self.config_text(port))
        return [self.executable(), "-c", str(config)]

    def version(self) -> str:
        try:
            from importlib.metadata import version
            return f"amqtt {version('amqtt')}"
        except Exception:
            return "?"


BROKERS: dict[str, type[BrokerProcess]] = {
    "mosquitto": MosquittoBroker, "edgebus": EdgebusBroker, "amqtt": AmqttBroker}


# --------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Target:
    """An issue target: a ratio to Mosquitto (min or max), or an absolute maximum."""

    kind: str  # "ratio_min" | "ratio_max" | "abs_max"
    value: float
    unit: str = ""

    def text(self) -> str:
        if self.kind == "ratio_min":
            return f">={self.value:.1f}x"
        if self.kind == "ratio_max":
            return f"<={self.value:.1f}x"
        return f"<={self.value:g} {self.unit}".strip()

    def met(self, value: float, ratio: float | None) -> bool | None:
        if self.kind == "abs_max":
            return value <= self.value
        if ratio is None:
            return None
        return ratio >= self.value if self.kind == "ratio_min" else ratio <= self.value


@dataclass(frozen=True)
class Row:
    scenario: str
    key: str
    label: str
    style: str  # "count" | "ms" | "kib"
    target: Target | None = None


ROWS = (
    Row("fanin-q0", "msgs_per_s", "msg/s", "count", Target("ratio_min", 1.0)),
    Row("fanin-q0", "lost", "lost msgs", "count"),
    Row("fanin-q1", "msgs_per_s", "msg/s", "count", Target("ratio_min", 0.5)),
    Row("fanin-q1", "lost", "lost msgs", "count"),
    Row("fanin-q2", "msgs_per_s", "msg/s", "count", Target("ratio_min", 0.5)),
    Row("fanin-q2", "lost", "lost msgs", "count"),
    Row("fanout-q0", "deliveries_per_s", "deliveries/s", "count", Target("ratio_min", 1.0)),
    Row("fanout-q0", "lost", "lost deliv.", "count"),
    Row("latency-q1", "p50_ms", "p50 ms", "ms"),
    Row("latency-q1", "p99_ms", "p99 ms", "ms", Target("ratio_max", 2.0)),
    Row("latency-q1", "max_ms", "max ms", "ms"),
    Row("idle-rss", "kib_per_conn", "KiB/conn", "kib", Target("abs_max", 8.0, "KiB")),
    Row("durable-q1", "msgs_per_s", "msg/s", "count", Target("ratio_min", 0.5)),
    Row("durable-q1", "ack_p50_ms", "ack p50 ms", "ms"),
    Row("durable-q1", "ack_p99_ms", "ack p99 ms", "ms"),
    Row("durable-q1", "bytes_per_msg", "disk B/msg", "count", Target("abs_max", 1024, "B")),
    Row("durable-q1", "lost", "lost msgs", "count"),
    Row("durable-q1-offline", "accepted_per_s", "queued msg/s", "count"),
    Row("durable-q1-offline", "ack_p99_ms", "ack p99 ms", "ms"),
    Row("durable-q1-offline", "drain_per_s", "drain msg/s", "count"),
    Row("durable-q1-offline", "total_bytes_per_msg", "disk B/msg", "count", Target("abs_max", 1024, "B")),
    Row("durable-q1-offline", "lost", "lost msgs", "count"),
)


def format_value(value: Any, style: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if style == "count":
        return f"{round(value):,}"
    if style == "ms":
        return f"{value:.2f}"
    return f"{value:.1f}"


def cell(results: dict[str, dict[str, Any]], peer: str, row: Row) -> Any:
    """The row's value for a peer, or a short reason why there is none."""
    outcome = results.get(peer, {}).get(row.scenario)
    if outcome is None:
        return None
    if "error" in outcome:
        return "error"
    return outcome.get(row.key)


def build_rows(results: dict[str, dict[str, Any]], peers: list[str]) -> list[dict[str, Any]]:
    """One record per table row: values, ratios to Mosquitto and target status per non-reference peer."""
    records = []
    for row in ROWS:
        if not any(row.scenario in results.get(peer, {}) for peer in peers):
            continue
        values = {peer: cell(results, peer, row) for peer in peers}
        reference = values.get(REFERENCE_PEER)
        comparisons: dict[str, dict[str, Any]] = {}
        for peer in peers:
            if peer == REFERENCE_PEER:
                continue
            value = values[peer]
            numeric = isinstance(value, int | float)
            ratio = None
            if numeric and isinstance(reference, int | float) and reference:
                ratio = value / reference
            status = None
            if row.target is not None and numeric:
                met = row.target.met(float(value), ratio)
                status = None if met is None else ("MET" if met else "MISSED")
            comparisons[peer] = {"ratio": None if ratio is None else round(ratio, 3), "status": status}
        records.append({"scenario": row.scenario, "metric": row.label, "key": row.key, "style": row.style,
                        "target": row.target.text() if row.target else None,
                        "values": values, "vs_reference": comparisons})
    return records


def print_table(records: list[dict[str, Any]], peers: list[str], out: TextIO = sys.stdout) -> None:
    others = [peer for peer in peers if peer != REFERENCE_PEER]
    header = ["scenario", "metric", *peers, "target", *(f"{peer}/{REFERENCE_PEER[:4]}" for peer in others)]
    lines: list[list[str]] = [header]
    for record in records:
        line = [record["scenario"], record["metric"]]
        line += [format_value(record["values"][peer], record["style"]) for peer in peers]
        line.append(record["target"] or "")
        for peer in others:
            comparison = record["vs_reference"][peer]
            text = "-" if comparison["ratio"] is None else f"{comparison['ratio']:.2f}x"
            if comparison["status"]:
                text += f" {comparison['status']}"
            line.append(text)
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [value.rjust(widths[i + 2]) for i, value in enumerate(line[2:])]
        print("  ".join(cells), file=out)


def print_cpu_summary(results: dict[str, dict[str, Any]], peers: list[str],
                      scenarios: list[str]) -> list[str]:
    """Print load-generator and broker CPU per scenario; return the WARNING lines (also printed)."""
    warnings = []
    print()
    for scenario in scenarios:
        parts = []
        for peer in peers:
            outcome = results.get(peer, {}).get(scenario)
            if not outcome or "error" in outcome:
                continue
            loadgen_pct = outcome.get("loadgen_cpu_pct")
            broker_pct = outcome.get("broker_cpu_pct")
            parts.append(f"{peer} loadgen {loadgen_pct:.0f}% / broker "
                         + ("?" if broker_pct is None else f"{broker_pct:.0f}%"))
            if loadgen_pct is not None and loadgen_pct > LOADGEN_CPU_WARNING_PCT and scenario != "idle-rss":
                broker_text = "?" if broker_pct is None else f"{broker_pct:.0f}%"
                warnings.append(f"WARNING: loadgen at {loadgen_pct:.0f}% of a core in {scenario} against "
                                f"{peer} (broker {broker_text}): the load generator may be the bottleneck, "
                                "the figure may be a lower bound")
        if parts:
            print(f"CPU (% of one core) {scenario:<11} " + "; ".join(parts))
    for warning in warnings:
        print(warning)
    return warnings


def print_notes(results: dict[str, dict[str, Any]], peers: list[str]) -> None:
    for peer in peers:
        for scenario, outcome in results.get(peer, {}).items():
            if "error" in outcome:
                print(f"NOTE: {peer} {scenario}: {outcome['error']}")
            elif outcome.get("failed_runs"):
                failed, total = outcome["failed_runs"], len(outcome["runs"])
                print(f"NOTE: {peer} {scenario}: {failed} of {total} runs failed; medians of the others")
            if "error" not in outcome and outcome.get("protocol_errors"):
                print(f"NOTE: {peer} {scenario}: {outcome['protocol_errors']} protocol errors seen by the "
                      "loadgen")
            if scenario == "idle-rss" and "error" not in outcome:
                if outcome.get("connect_failures"):
                    print(f"NOTE: {peer} idle-rss: {outcome['connect_failures']} connections failed "
                          f"(first: {outcome['first_failure']})")
                if not outcome.get("settled", True):
                    print(f"NOTE: {peer} idle-rss: RSS had not settled within the timeout")
            if scenario in ("fanin-q1", "fanin-q2") and "error" not in outcome and outcome.get("lost"):
                # The broker acknowledged (PUBACK / PUBCOMP) messages it then never delivered: it took
                # more than it could forward and dropped or stranded the rest. Its msg/s is the
                # delivery rate under overload, not a steady state.
                print(f"NOTE: {peer} {scenario}: accepted {outcome.get('accepted_per_s', 0):,.0f} msg/s, "
                      f"delivered {outcome['msgs_per_s']:,.0f} msg/s; {outcome['lost']:,.0f} acknowledged "
                      "QoS>0 messages never reached the subscriber")
            if scenario.startswith("durable-q1") and "error" not in outcome:
                if outcome.get("lost"):
                    print(f"NOTE: {peer} {scenario}: {outcome['lost']:,.0f} acknowledged messages never "
                          "reached the persistent subscriber")
                if outcome.get("unacknowledged"):
                    print(f"NOTE: {peer} {scenario}: {outcome['unacknowledged']:,.0f} PUBLISHes still "
                          "unacknowledged at the end (the lost count is then a lower bound)")
                if outcome.get("bytes_per_msg") is None:
                    print(f"NOTE: {peer} {scenario}: no disk-write figure (/proc/PID/io unreadable or "
                          "nothing acknowledged in the window)")
            if scenario == "latency-q1" and "error" not in outcome and outcome.get("window_full_events"):
                print(f"NOTE: {peer} latency-q1: publisher window (1000 in flight) was full "
                      f"{outcome['window_full_events']} times; rate {outcome['sent_rate_per_s']}/s")


# --------------------------------------------------------------------------------------------- driver


def progress_line(scenario: str, peer: str, outcome: dict[str, Any]) -> str:
    if "error" in outcome:
        return f"[{scenario}] {peer}: ERROR {outcome['error']}"
    keys = ("msgs_per_s", "accepted_per_s", "backlog_at_end", "deliveries_per_s", "p50_ms", "p99_ms",
            "max_ms", "ack_p50_ms", "ack_p99_ms", "bytes_per_msg", "drain_per_s", "total_bytes_per_msg",
            "kib_per_conn", "connections", "lost", "loadgen_cpu_pct", "broker_cpu_pct")
    shown = ", ".join(f"{key}={outcome[key]}" for key in keys if outcome.get(key) is not None)
    return f"[{scenario}] {peer}: {shown}"


def run_one(peer: str, scenario: str, settings: loadgen.ScenarioSettings,
            broker_factory: Callable[[str], BrokerProcess]) -> dict[str, Any]:
    """Start a fresh broker (for this scenario), run the scenario against it, stop the broker (also on
    errors and Ctrl-C).

    Raises BrokerStartError if the broker does not come up.
    """
    broker = broker_factory(scenario)
    try:
        broker.start()
        try:
            outcome = loadgen.scenario_result(scenario, HOST, broker.port, settings, broker)
        except Exception as exc:  # one failed scenario must not end the comparison of the others
            outcome = {"error": f"{type(exc).__name__}: {exc}"}
        code = broker.exit_code()
        if code is not None:
            outcome = {"error": f"broker exited with code {code} during the run: {broker.log_tail()}"}
        return outcome
    finally:
        broker.stop()


def combine_runs(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric figure over the successful runs (the first error if none succeeded)."""
    good = [outcome for outcome in outcomes if "error" not in outcome]
    if not good:
        return outcomes[0]
    if len(outcomes) == 1:
        return good[0]
    combined: dict[str, Any] = dict(good[0])
    for key, value in good[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers = [o[key] for o in good if isinstance(o.get(key), int | float)]
            combined[key] = statistics.median(numbers)
    combined["runs"] = outcomes
    combined["failed_runs"] = len(outcomes) - len(good)
    return combined


def filesystem_of(path: Path) -> dict[str, str]:
    """Mount point, type and device of the file system holding path (longest match in /proc/self/mounts)."""
    target = os.path.realpath(path)
    best = {"mount": "?", "type": "?", "device": "?"}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            mount = mount.replace("\\040", " ")
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and (best["mount"] == "?" or len(mount) >= len(best["mount"])):
                best = {"mount": mount, "type": fstype, "device": device}
    return best


def machine_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute per broker)")
    parser.add_argument("--only",
                        help=f"comma-separated scenarios out of: {', '.join(loadgen.SCENARIO_NAMES)}")
    parser.add_argument("--peers", default="edgebus,mosquitto,amqtt",
                        help=f"comma-separated brokers out of: {', '.join(PEER_NAMES)} (default: all)")
    parser.add_argument("--mosquitto",
                        help="mosquitto executable (default: from PATH, else /usr/sbin/mosquitto)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every scenario N times per broker and report the medians (default 1)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    parser.add_argument("--edgebus-config", type=Path, metavar="FILE",
                        help="TOML file given to edgebus as --config (default: its built-in defaults)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORK_ROOT,
                        help="where the brokers' temporary directories (edgebus's data dir) are made; "
                             f"on a real disk, not tmpfs (default {DEFAULT_WORK_ROOT})")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.edgebus_config is not None:
        try:
            with args.edgebus_config.open("rb") as file:
                tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            parser.error(f"--edgebus-config {args.edgebus_config}: {exc}")
    args.scenarios = (loadgen.SCENARIO_NAMES if not args.only
                      else tuple(s.strip() for s in args.only.split(",")))
    unknown = [s for s in args.scenarios if s not in loadgen.SCENARIO_NAMES]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(loadgen.SCENARIO_NAMES)}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEER_NAMES]
    if bad or not peers:
        parser.error(f"unknown peer(s) {', '.join(bad)}; known: {', '.join(PEER_NAMES)}")
    # The reference comes first in the table whatever order was given.
    args.peer_list = sorted(dict.fromkeys(peers), key=lambda p: (p != REFERENCE_PEER, PEER_NAMES.index(p)))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peers: list[str] = args.peer_list
    scenarios: list[str] = list(args.scenarios)
    settings = loadgen.ScenarioSettings.quick() if args.quick else loadgen.ScenarioSettings()

    nofile = loadgen.raise_nofile_limit()
    needed = settings.idle_connections + 200
    if "idle-rss" in scenarios and nofile < needed:
        print(f"WARNING: RLIMIT_NOFILE is {nofile}, idle-rss needs about {needed}; "
              "lowering its connection count")
        settings = replace(settings, idle_connections=max(100, nofile - 200))
    pinned = len(os.sched_getaffinity(0)) >= 2 and loadgen.pin_to_core(LOADGEN_CORE)
    broker_core = BROKER_CORE if pinned else None
    print(f"pinning: broker -> core {BROKER_CORE}, loadgen -> core {LOADGEN_CORE}" if pinned
          else "pinning: disabled (fewer than 2 usable cores)")

    work_root: Path = args.workdir.resolve()
    filesystem = filesystem_of(work_root if work_root.exists() else work_root.parent)
    print(f"broker directories: {work_root} ({filesystem['type']} on {filesystem['device']}, "
          f"mounted at {filesystem['mount']})")
    durable = any(s.startswith("durable-q1") for s in scenarios)
    if durable and filesystem["type"].startswith(NON_DISK_FILESYSTEMS):
        print(f"WARNING: {work_root} is on {filesystem['type']}: /proc/PID/io write_bytes will not show the "
              "disk writes; pass --workdir DIR on a disk-backed file system")
    if args.edgebus_config is not None:
        print(f"edgebus config: {args.edgebus_config}")
    factories: dict[str, Callable[[str], BrokerProcess]] = {
        "mosquitto": lambda scenario: MosquittoBroker(executable=args.mosquitto, core=broker_core,
                                                      work_root=work_root),
        "edgebus": lambda scenario: EdgebusBroker(core=broker_core, work_root=work_root,
                                                  config=args.edgebus_config,
                                                  overrides=EDGEBUS_SCENARIO_CONFIG.get(scenario)),
        "amqtt": lambda scenario: AmqttBroker(core=broker_core, work_root=work_root),
    }
    versions = {peer: factories[peer]("").version() for peer in peers}
    results: dict[str, dict[str, Any]] = {peer: {} for peer in peers}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    start_errors: dict[str, str] = {}
    interrupted = False
    started = time.monotonic()
    try:
        # Scenario-major order: each scenario sees every broker under the same machine conditions, and
        # every scenario gets a freshly started broker (no backlog or memory carried over).
        for scenario in scenarios:
            for repetition in range(args.repeat):
                for peer in peers:
                    if peer in start_errors:
                        continue
                    try:
                        outcome = run_one(peer, scenario, settings, factories[peer])
                    except BrokerStartError as exc:
                        start_errors[peer] = str(exc)
                        print(f"{peer}: failed to start")
                        print(f"    {exc}")
                        continue
                    runs.setdefault(peer, {}).setdefault(scenario, []).append(outcome)
                    label = scenario if args.repeat == 1 else f"{scenario} #{repetition + 1}"
                    print(progress_line(label, peer, outcome), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: brokers stopped; partial results follow")
    for peer, by_scenario in runs.items():
        for scenario, outcomes in by_scenario.items():
            results[peer][scenario] = combine_runs(outcomes)

    records = build_rows(results, peers)
    print()
    print_table(records, peers)
    warnings = print_cpu_summary(results, peers, scenarios)
    print_notes(results, peers)
    for peer, error in start_errors.items():
        print(f"NOTE: {peer} failed to start, no figures: {error}")
    elapsed = time.monotonic() - started

    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "repeat": args.repeat,
        "interrupted": interrupted,
        "elapsed_s": round(elapsed, 1),
        "machine": machine_info(),
        "pinned": {"broker_core": broker_core, "loadgen_core": LOADGEN_CORE if pinned else None},
        "settings": asdict(settings),
        "broker_settings": {"inflight_window": INFLIGHT_WINDOW, "max_queued_messages": MAX_QUEUED_MESSAGES,
                            "edgebus_config": args.edgebus_config and str(args.edgebus_config),
                            "edgebus_scenario_config": EDGEBUS_SCENARIO_CONFIG},
        "broker_workdir": {"path": str(work_root), **filesystem},
        "peers": peers,
        "versions": versions,
        "start_errors": start_errors,
        "results": results,
        "rows": records,
        "warnings": warnings,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.output} ({elapsed:.0f} s)")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

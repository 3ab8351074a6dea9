"""Benchmark driver: starts each broker under test, drives it with the C load generator (bench/mqttgen.c),
judges every run and compares the brokers to Mosquitto."""

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
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TextIO

from bench import generator
from bench.generator import SCENARIO_NAMES, GeneratorError, ScenarioSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "latest.json"
HOST = "127.0.0.1"
BROKER_CORE = 0
LOADGEN_CORE = 1  # the load generator's core (the driver pins itself there; the generator inherits it)
BROKER_START_TIMEOUT_S = 20.0
BROKER_STOP_TIMEOUT_S = 5.0
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
# drain-q1 the whole offline queue must fit, as in Mosquitto (max_queued_messages).
EDGEBUS_SCENARIO_CONFIG: dict[str, dict[str, dict[str, Any]]] = {
    "drain-q1": {"queue": {"max_messages": MAX_QUEUED_MESSAGES}},
}
PEER_NAMES = ("mosquitto", "mosquitto-persist", "edgebus", "amqtt", "trio-floor")
REFERENCE_PEER = "mosquitto"
# Peers that only make sense in some scenarios (the others are skipped for them).
PEER_SCENARIOS: dict[str, tuple[str, ...]] = {"mosquitto-persist": ("durable-q1", "drain-q1"),
                                              "trio-floor": ("latency-q1",)}
# (peer, reference) pairs that get a ratio column, where both were run.
COMPARISONS = (("edgebus", "mosquitto"), ("amqtt", "mosquitto"), ("edgebus", "mosquitto-persist"),
               ("trio-floor", "mosquitto"))
SHORT_NAMES = {"mosquitto": "mosq", "mosquitto-persist": "mosq-p", "edgebus": "edgebus", "amqtt": "amqtt",
               "trio-floor": "floor"}
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

    # generator.BrokerProbe
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

    def persistence_settings(self, workdir: Path) -> list[str]:
        return ["persistence false"]  # the default: in memory only

    def config_text(self, port: int, workdir: Path) -> str:
        # Started as root, mosquitto switches to the `mosquitto` user, and a uid change clears the
        # parent-death signal set in _broker_preexec; staying root keeps that safety net.
        run_as = ["user root"] if os.geteuid() == 0 else []
        return "\n".join([
            *run_as,
            f"listener {port} {HOST}",
            "allow_anonymous true",
            *self.persistence_settings(workdir),
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
        config.write_text(self.config_text(port, workdir))
        return [self.executable, "-c", str(config)]

    def version(self) -> str:
        try:
            out = subprocess.run([self.executable, "-h"], capture_output=True, text=True, timeout=5,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        first = (out.stdout or out.stderr).strip().splitlines()
        return first[0] if first else "?"


class MosquittoPersistentBroker(MosquittoBroker):
    """Mosquitto saving its in-memory state (sessions, queued messages) to disk every second: the closest
    it comes to durability. It still acknowledges before anything is on disk."""

    name = "mosquitto-persist"

    def persistence_settings(self, workdir: Path) -> list[str]:
        return ["persistence true", f"persistence_location {workdir}/", "autosave_interval 1"]


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


class TrioFloorBroker(BrokerProcess):
    """bench/trio_floor.py: the least a relay on trio costs (latency-q1 only): the floor under edgebus."""

    name = "trio-floor"

    def command(self, port: int, workdir: Path) -> list[str]:
        return [sys.executable, "-m", "bench.trio_floor", "--host", HOST, "--port", str(port)]

    def cwd(self) -> Path | None:
        return REPO_ROOT

    def version(self) -> str:
        from importlib.metadata import version
        return f"trio {version('trio')}"


BROKERS: dict[str, type[BrokerProcess]] = {
    "mosquitto": MosquittoBroker, "mosquitto-persist": MosquittoPersistentBroker, "edgebus": EdgebusBroker,
    "amqtt": AmqttBroker, "trio-floor": TrioFloorBroker}




# --------------------------------------------------------------------------------------------- process setup


def pin_to_core(core: int) -> bool:
    """Pin the calling process to one core if the machine has it; return whether it did."""
    if not hasattr(os, "sched_setaffinity") or core not in os.sched_getaffinity(0):
        return False
    os.sched_setaffinity(0, {core})
    return True


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def runs_scenario(peer: str, scenario: str) -> bool:
    return scenario in PEER_SCENARIOS.get(peer, SCENARIO_NAMES)


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
    style: str  # "count" | "us" | "kib" | "mb" | "s" | "text"
    target: Target | None = None


def table_rows(settings: ScenarioSettings) -> list[Row]:
    """The figures of the table; bench/README.md says what each one measures."""
    # The targets of the speed issue (part 2), as ratios to Mosquitto in the same run where they are ratios.
    per_conn = [Row("idle-rss", f"kib_per_conn_{count}", f"KiB/conn @{count:,}", "kib",
                    Target("abs_max", 4.0, "KiB")) for count in settings.idle_steps]
    return [
        Row("fanin-q0", "msgs_per_s", "msg/s", "count", Target("ratio_min", 1.3)),
        Row("fanin-q1", "msgs_per_s", "msg/s", "count", Target("ratio_min", 1.3)),
        Row("fanin-q2", "msgs_per_s", "msg/s", "count", Target("ratio_min", 2.0)),
        Row("fanout-q0", "deliveries_per_s", "deliveries/s", "count", Target("ratio_min", 2.5)),
        Row("latency-q1", "p50_us", "p50 us", "us"),
        Row("latency-q1", "p99_us", "p99 us", "us", Target("ratio_max", 1.0)),
        Row("idle-rss", "idle_rss_mb", "RSS, no client MB", "mb", Target("abs_max", 20.0, "MB")),
        *per_conn,
        Row("drain-q1", "drain_s", f"drain s ({settings.drain_messages:,})", "s", Target("ratio_max", 1.5)),
        Row("drain-q1", "queued_per_s", "queued msg/s", "count"),
        Row("drain-q1", "total_bytes_per_msg", "disk B/msg", "count", Target("abs_max", 512, "B")),
        Row("durable-q1", "msgs_per_s", "msg/s", "count", Target("ratio_min", 1.0)),
        Row("durable-q1", "ack_p50_us", "ack p50 us", "us"),
        Row("durable-q1", "ack_p99_us", "ack p99 us", "us"),
        Row("durable-q1", "bytes_per_msg", "disk B/msg", "count", Target("abs_max", 512, "B")),
    ]


def format_value(value: Any, style: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) or style == "text":
        return str(value)
    if style in ("count", "us"):
        return f"{round(value):,}"
    if style == "s":
        return f"{value:.3f}"
    return f"{value:.1f}"


def audit_text(scenario: str, outcome: dict[str, Any]) -> str:
    """lost/duplicated/reordered of the worst run (for QoS 1/2, lost = acknowledged and never delivered);
    idle-rss: the connections that were open."""
    if scenario == "idle-rss":
        return f"{outcome.get('connections', 0):,} conn"
    worst = outcome.get("audit_worst", outcome)
    lost = worst.get("lost_acked" if generator.QOS_OF[scenario] else "lost", 0)
    return f"{lost:,}/{worst.get('duplicated', 0):,}/{worst.get('reordered', 0):,}"


def verdict_text(outcome: dict[str, Any]) -> str:
    return "; ".join(outcome.get("verdicts") or []) or "ok"


def value_cell(outcome: dict[str, Any], row: Row) -> str:
    """The median, with min-max when there were several runs."""
    text = format_value(outcome.get(row.key), row.style)
    spread = outcome.get("ranges", {}).get(row.key)
    if spread and spread[0] != spread[1]:
        text += f" ({format_value(spread[0], row.style)}-{format_value(spread[1], row.style)})"
    return text


def comparison(row: Row, peer_outcome: dict[str, Any] | None, ref_outcome: dict[str, Any] | None,
               ref: str, peer: str) -> dict[str, Any] | None:
    """The ratio peer / reference for one row, its target status, or why no ratio is given."""
    if peer_outcome is None or ref_outcome is None or row.style == "text":
        return None
    flagged = [(name, outcome["verdicts"]) for name, outcome in ((ref, ref_outcome), (peer, peer_outcome))
               if outcome.get("verdicts")]
    reason = "; ".join(f"{SHORT_NAMES[name]} {' + '.join(v)}" for name, v in flagged) or None
    value, reference = peer_outcome.get(row.key), ref_outcome.get(row.key)
    if not isinstance(value, int | float) or peer_outcome.get("verdicts"):
        return {"ratio": None, "status": None, "withheld": reason}
    ratio = None
    if reason is None and isinstance(reference, int | float) and reference:
        ratio = value / reference
    status = None
    if row.target is not None:
        # An absolute target holds whatever the reference did; a ratio target needs a ratio.
        met = row.target.met(float(value), ratio)
        status = None if met is None else ("MET" if met else "MISSED")
    return {"ratio": None if ratio is None else round(ratio, 3), "status": status, "withheld": reason}


def build_rows(results: dict[str, dict[str, Any]], peers: list[str],
               settings: ScenarioSettings) -> list[dict[str, Any]]:
    """One record per table row: cells, ratios to the references, and the generator's CPU per peer."""
    by_scenario: dict[str, list[Row]] = {}
    for row in table_rows(settings):
        by_scenario.setdefault(row.scenario, []).append(row)
    records = []
    for scenario, rows in by_scenario.items():
        outcomes = {peer: results.get(peer, {}).get(scenario) for peer in peers}
        if not any(outcomes.values()):
            continue
        rows = [*rows, Row(scenario, "audit", "connected" if scenario == "idle-rss" else "lost/dup/reord",
                           "text"), Row(scenario, "verdicts", "verdict", "text")]
        for row in rows:
            cells: dict[str, str] = {}
            values: dict[str, Any] = {}
            for peer, outcome in outcomes.items():
                if outcome is None:
                    cells[peer] = ""
                elif "error" in outcome:
                    cells[peer] = "error" if row.key != "verdicts" else verdict_text(outcome)
                elif row.key == "audit":
                    cells[peer] = audit_text(scenario, outcome)
                elif row.key == "verdicts":
                    cells[peer] = verdict_text(outcome)
                else:
                    values[peer] = outcome.get(row.key)
                    cells[peer] = value_cell(outcome, row)
            comparisons = {}
            for peer, ref in COMPARISONS:
                if peer in peers and ref in peers:
                    found = comparison(row, outcomes[peer], outcomes[ref], ref, peer)
                    if found is not None:
                        comparisons[f"{peer}/{ref}"] = found
            gen_cpu = {peer: None if outcome is None else outcome.get("gen_cpu_pct")
                       for peer, outcome in outcomes.items()}
            records.append({"scenario": scenario, "metric": row.label, "key": row.key, "style": row.style,
                            "target": row.target.text() if row.target else None, "values": values,
                            "cells": cells, "vs_reference": comparisons, "gen_cpu_pct": gen_cpu})
    return records


def comparison_text(found: dict[str, Any] | None) -> str:
    if found is None:
        return ""
    if found["withheld"]:
        return f"no ratio: {found['withheld']}" + (f"; {found['status']}" if found["status"] else "")
    text = "-" if found["ratio"] is None else f"{found['ratio']:.2f}x"
    return f"{text} {found['status']}" if found["status"] else text


def print_table(records: list[dict[str, Any]], peers: list[str], out: TextIO = sys.stdout) -> None:
    pairs = [f"{peer}/{ref}" for peer, ref in COMPARISONS if peer in peers and ref in peers]
    header = ["scenario", "metric", *peers, "target",
              *(f"{SHORT_NAMES[p.split('/')[0]]}/{SHORT_NAMES[p.split('/')[1]]}" for p in pairs),
              "gen CPU % " + "/".join(SHORT_NAMES[peer] for peer in peers)]
    lines: list[list[str]] = [header]
    for record in records:
        line = [record["scenario"], record["metric"], *(record["cells"][peer] for peer in peers),
                record["target"] or ""]
        line += [comparison_text(record["vs_reference"].get(pair)) for pair in pairs]
        cpu = record["gen_cpu_pct"]
        line.append("/".join("-" if cpu[peer] is None else f"{cpu[peer]:.0f}" for peer in peers)
                    if record["key"] not in ("audit", "verdicts") else "")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    previous = ""
    for line in lines:
        if line[0] != previous and previous not in ("", "scenario"):
            print(file=out)
        previous = line[0]
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [value.rjust(widths[i + 2]) for i, value in enumerate(line[2:-1])]
        cells.append(line[-1])
        print("  ".join(cells).rstrip(), file=out)


# The first key found in a verdict explains it ("CONNECTION" before "CONNECT").
VERDICT_EXPLANATIONS = {
    "GENERATOR-BOUND": "the load generator used more than {limit:.0f}% of its core, so it may have held the "
                       "broker back: the figure is a lower bound",
    "LOST": "messages the broker acknowledged (PUBACK / PUBCOMP) never reached the subscriber",
    "DUPLICATED": "QoS 2 messages were delivered more than once",
    "CONNECTION ERRORS": "protocol errors, or connections the broker closed during the run",
    "CONNECT FAILURES": "connections could not be set up",
    "RATE MISSED": "the paced publisher did not reach its rate",
    "ERROR": "the scenario did not complete",
}


def print_notes(results: dict[str, dict[str, Any]], peers: list[str]) -> None:
    """Why a figure has a verdict, and what else a reader should know about a run."""
    for peer in peers:
        for scenario, outcome in results.get(peer, {}).items():
            for verdict in outcome.get("verdicts") or []:
                key = next((key for key in VERDICT_EXPLANATIONS if key in verdict), "ERROR")
                explanation = VERDICT_EXPLANATIONS[key].format(limit=generator.GENERATOR_CPU_LIMIT_PCT)
                print(f"VERDICT {peer} {scenario}: {verdict}: {explanation}; no ratio")
            if "error" in outcome:
                print(f"NOTE: {peer} {scenario}: {outcome['error']}")
                continue
            if outcome.get("failed_runs"):
                print(f"NOTE: {peer} {scenario}: {outcome['failed_runs']} of {len(outcome['runs'])} runs "
                      "failed; medians of the others")
            if outcome.get("first_error"):
                print(f"NOTE: {peer} {scenario}: first connection error: {outcome['first_error']}")
            qos = generator.QOS_OF.get(scenario)
            if qos == 0 and outcome.get("audit_worst", {}).get("lost"):
                print(f"NOTE: {peer} {scenario}: {outcome['audit_worst']['lost']:,} QoS 0 messages not "
                      "delivered (allowed: QoS 0 is at most once)")
            if qos and outcome.get("audit_worst", {}).get("unacked"):
                print(f"NOTE: {peer} {scenario}: {outcome['audit_worst']['unacked']:,} PUBLISHes still "
                      "unacknowledged at the end")
            if scenario == "idle-rss" and outcome.get("connect_failures"):
                print(f"NOTE: {peer} idle-rss: {outcome['connect_failures']:,} connections failed; the "
                      "per-connection figures divide by the connections that were open")
            if scenario == "idle-rss" and not outcome.get("settled", True):
                print(f"NOTE: {peer} idle-rss: RSS had not settled within the timeout")
            if scenario == "drain-q1" and outcome.get("session_present") is False:
                print(f"NOTE: {peer} drain-q1: the broker did not keep the subscriber's session")
            if scenario in ("durable-q1", "drain-q1") and outcome.get(
                    "bytes_per_msg" if scenario == "durable-q1" else "total_bytes_per_msg") is None:
                print(f"NOTE: {peer} {scenario}: no disk-write figure (/proc/PID/io unreadable)")
            if scenario == "latency-q1" and outcome.get("window_full_events"):
                print(f"NOTE: {peer} latency-q1: {outcome['window_full_events']} due messages skipped, "
                      "publisher window (1000 in flight) full")


# --------------------------------------------------------------------------------------------- driver


PROGRESS_KEYS = ("msgs_per_s", "accepted_per_s", "deliveries_per_s", "p50_us", "p99_us", "ack_p50_us",
                 "ack_p99_us", "bytes_per_msg", "queued_per_s", "drain_s", "total_bytes_per_msg",
                 "idle_rss_mb", "connections")


def progress_line(scenario: str, peer: str, outcome: dict[str, Any]) -> str:
    if "error" in outcome:
        return f"[{scenario}] {peer}: ERROR {outcome['error']}"
    broker_cpu = outcome.get("broker_cpu_pct")
    keys = [*PROGRESS_KEYS, *(key for key in outcome if key.startswith("kib_per_conn_"))]
    shown = ", ".join(f"{key}={outcome[key]}" for key in keys if outcome.get(key) is not None)
    return (f"[{scenario}] {peer}: gen CPU {outcome.get('gen_cpu_pct')}%, broker CPU "
            f"{'?' if broker_cpu is None else broker_cpu}% | {shown} | "
            f"audit {audit_text(scenario.split(' ')[0], outcome)} | {verdict_text(outcome)}")


def run_one(peer: str, scenario: str, settings: ScenarioSettings, binary: Path,
            broker_factory: Callable[[str], BrokerProcess]) -> dict[str, Any]:
    """Start a fresh broker (for this scenario), run the scenario against it, judge the run, stop the
    broker (also on errors and Ctrl-C).

    Raises BrokerStartError if the broker does not come up.
    """
    broker = broker_factory(scenario)
    try:
        broker.start()
        try:
            outcome = generator.run_scenario(scenario, binary, HOST, broker.port, settings, broker)
        except Exception as exc:  # one failed scenario must not end the comparison of the others
            outcome = {"error": f"{type(exc).__name__}: {exc}"}
        code = broker.exit_code()
        if code is not None:
            outcome = {"error": f"broker exited with code {code} during the run: {broker.log_tail()}"}
        outcome["verdicts"] = generator.verdicts(scenario, outcome)
        return outcome
    finally:
        broker.stop()


AUDIT_KEYS = ("lost", "lost_acked", "duplicated", "reordered", "unacked", "foreign")


def combine_runs(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every numeric figure over the successful runs, with their min and max; every verdict of
    every run (with how many runs had it); the worst run's audit counts."""
    good = [outcome for outcome in outcomes if "error" not in outcome]
    combined: dict[str, Any] = dict(good[0] if good else outcomes[0])
    counts = Counter(verdict for outcome in outcomes for verdict in outcome.get("verdicts", []))
    total = len(outcomes)
    combined["verdicts"] = [verdict if total == 1 or count == total else f"{verdict} ({count}/{total} runs)"
                            for verdict, count in counts.items()]
    combined["audit_worst"] = {key: max((o.get(key) or 0 for o in good), default=0) for key in AUDIT_KEYS}
    if total == 1:
        return combined
    ranges: dict[str, list[float]] = {}
    for key, value in combined.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers = [o[key] for o in good if isinstance(o.get(key), int | float)]
            combined[key] = statistics.median(numbers)
            ranges[key] = [min(numbers), max(numbers)]
    combined |= {"ranges": ranges, "runs": outcomes, "failed_runs": total - len(good)}
    combined.pop("generator", None)
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


# --------------------------------------------------------------------------------------------- self-check


def books_problems(scenario: str, outcome: dict[str, Any], settings: ScenarioSettings) -> list[str]:
    """What is wrong with a self-check run against Mosquitto: anything lost, or books that do not balance."""
    if "error" in outcome:
        return [outcome["error"]]
    if scenario == "idle-rss":
        wanted = settings.idle_steps[-1]
        return ([] if outcome["connections"] == wanted and outcome["complete"]
                else [f"connected {outcome['connections']}/{wanted}"])
    gen = outcome["generator"]
    qos = generator.QOS_OF[scenario]
    problems = [f"{key}={gen[key]}" for key in ("lost", "duplicated", "reordered", "foreign", "stray_acks",
                                                "protocol_errors", "closed_unexpectedly", "connect_failures")
                if gen[key]]
    if not gen["complete"]:
        problems.append("not every message arrived within the grace period")
    if qos and (gen["unacked"] or gen["acked"] != gen["sent"]):
        problems.append(f"acked {gen['acked']} of {gen['sent']} sent")
    owed = (gen["acked"] if qos else gen["sent"]) * gen["subscribers"]
    balances = {
        "owed = (sent or acked) x subscribers": gen["owed"] == owed,
        "owed = delivered_unique + lost": gen["owed"] == gen["delivered_unique"] + gen["lost"],
        "received = delivered_unique + duplicated + foreign":
            gen["received"] == gen["delivered_unique"] + gen["duplicated"] + gen["foreign"],
    }
    for key in ("sent", "acked", "owed", "delivered_unique", "lost", "duplicated", "reordered"):
        balances[f"per-publisher {key} adds up"] = sum(p[key] for p in gen["per_publisher"]) == gen[key]
    problems += [f"books: not {name}" for name, ok in balances.items() if not ok]
    if gen["owed"] == 0:
        problems.append("nothing delivered")
    if scenario == "latency-q1" and abs(outcome["sent_rate_per_s"] - outcome["target_rate_per_s"]) > (
            0.1 * outcome["target_rate_per_s"]):
        problems.append(f"rate {outcome['sent_rate_per_s']}/s")
    if scenario == "drain-q1" and not (outcome["drained"] == outcome["queued"] == settings.drain_messages
                                       and outcome["session_present"]):
        problems.append(f"drained {outcome['drained']} of {outcome['queued']}")
    return problems


def self_check(binary: Path, mosquitto: str | None, core: int | None) -> int:
    """The generator's own tests, then every scenario for about a second against a fresh Mosquitto:
    nothing may be lost and the books must balance."""
    test = subprocess.run([str(binary), "--self-test"], capture_output=True, text=True, check=False)
    print(f"mqttgen --self-test: {(test.stdout + test.stderr).strip()}")
    failures = 1 if test.returncode else 0
    settings = ScenarioSettings.self_check()
    for scenario in SCENARIO_NAMES:
        broker = MosquittoBroker(executable=mosquitto, core=core)
        try:
            broker.start()
            outcome = generator.run_scenario(scenario, binary, HOST, broker.port, settings, broker)
        except (GeneratorError, BrokerStartError) as exc:
            outcome = {"error": str(exc)}
        finally:
            broker.stop()
        found = books_problems(scenario, outcome, settings)
        failures += bool(found)
        print(f"{scenario:<11} {'ok' if not found else 'FAILED ' + '; '.join(found)}  "
              f"(gen CPU {outcome.get('gen_cpu_pct')}%, audit {audit_text(scenario, outcome)})")
    print("self-check:", "PASSED" if not failures else f"FAILED ({failures} problems)")
    return 0 if not failures else 1


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (0.5 s warm-up + 2 s measurement)")
    parser.add_argument("--only", help=f"comma-separated scenarios out of: {', '.join(SCENARIO_NAMES)}")
    parser.add_argument("--peers", default=",".join(PEER_NAMES),
                        help=f"comma-separated brokers out of: {', '.join(PEER_NAMES)} (default: all; "
                             "mosquitto-persist runs durable-q1 and drain-q1 only, "
                             "trio-floor latency-q1 only)")
    parser.add_argument("--mosquitto",
                        help="mosquitto executable (default: from PATH, else /usr/sbin/mosquitto)")
    parser.add_argument("--repeat", type=int,
                        help="run every scenario N times per broker and report medians with min-max "
                             "(default 3, or 1 with --quick)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    parser.add_argument("--edgebus-config", type=Path, metavar="FILE",
                        help="TOML file given to edgebus as --config (default: its built-in defaults)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORK_ROOT,
                        help="where the brokers' temporary directories (edgebus's data dir) are made; "
                             f"on a real disk, not tmpfs (default {DEFAULT_WORK_ROOT})")
    parser.add_argument("--self-check", action="store_true",
                        help="check the load generator against a fresh Mosquitto (~20 s) and exit")
    parser.add_argument("--no-read-batching", action="store_true",
                        help="the generator wakes up for every packet (SO_RCVLOWAT 1): to see what its read "
                             "batching costs a broker")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.edgebus_config is not None:
        try:
            with args.edgebus_config.open("rb") as file:
                tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            parser.error(f"--edgebus-config {args.edgebus_config}: {exc}")
    args.scenarios = SCENARIO_NAMES if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = [s for s in args.scenarios if s not in SCENARIO_NAMES]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIO_NAMES)}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEER_NAMES]
    if bad or not peers:
        parser.error(f"unknown peer(s) {', '.join(bad)}; known: {', '.join(PEER_NAMES)}")
    # The references come first in the table whatever order was given.
    args.peer_list = sorted(dict.fromkeys(peers), key=PEER_NAMES.index)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        binary = generator.build()
    except GeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    peers: list[str] = args.peer_list
    scenarios: list[str] = list(args.scenarios)
    settings = ScenarioSettings.quick() if args.quick else ScenarioSettings()
    if args.no_read_batching:
        settings = replace(settings, fanin_rcvlowat=1, fanout_rcvlowat=1, ack_batch=1, delivery_batch=1)

    nofile = raise_nofile_limit()
    if "idle-rss" in scenarios and nofile < max(settings.idle_steps) + 200:
        print(f"WARNING: RLIMIT_NOFILE is {nofile}, idle-rss needs about {max(settings.idle_steps) + 200}; "
              "lowering its connection counts")
        settings = replace(settings, idle_steps=tuple(n for n in settings.idle_steps if n + 200 <= nofile)
                           or (max(100, nofile - 200),))
    pinned = len(os.sched_getaffinity(0)) >= 2 and pin_to_core(LOADGEN_CORE)
    broker_core = BROKER_CORE if pinned else None
    print(f"pinning: broker -> core {BROKER_CORE}, load generator (and this driver) -> core {LOADGEN_CORE}"
          if pinned else "pinning: disabled (fewer than 2 usable cores)")
    print(f"load generator: {binary}")
    if args.self_check:
        return self_check(binary, args.mosquitto, broker_core)

    work_root: Path = args.workdir.resolve()
    filesystem = filesystem_of(work_root if work_root.exists() else work_root.parent)
    print(f"broker directories: {work_root} ({filesystem['type']} on {filesystem['device']}, "
          f"mounted at {filesystem['mount']})")
    durable = any(s in ("durable-q1", "drain-q1") for s in scenarios)
    if durable and filesystem["type"].startswith(NON_DISK_FILESYSTEMS):
        print(f"WARNING: {work_root} is on {filesystem['type']}: /proc/PID/io write_bytes will not show the "
              "disk writes; pass --workdir DIR on a disk-backed file system")
    if args.edgebus_config is not None:
        print(f"edgebus config: {args.edgebus_config}")
    factories: dict[str, Callable[[str], BrokerProcess]] = {
        "mosquitto": lambda scenario: MosquittoBroker(executable=args.mosquitto, core=broker_core,
                                                      work_root=work_root),
        "mosquitto-persist": lambda scenario: MosquittoPersistentBroker(
            executable=args.mosquitto, core=broker_core, work_root=work_root),
        "edgebus": lambda scenario: EdgebusBroker(core=broker_core, work_root=work_root,
                                                  config=args.edgebus_config,
                                                  overrides=EDGEBUS_SCENARIO_CONFIG.get(scenario)),
        "amqtt": lambda scenario: AmqttBroker(core=broker_core, work_root=work_root),
        "trio-floor": lambda scenario: TrioFloorBroker(core=broker_core, work_root=work_root),
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
                    if peer in start_errors or not runs_scenario(peer, scenario):
                        continue
                    try:
                        outcome = run_one(peer, scenario, settings, binary, factories[peer])
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

    records = build_rows(results, peers, settings)
    print()
    if args.repeat > 1:
        print(f"medians of {args.repeat} runs, (min-max) where they differ")
    print_table(records, peers)
    print()
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
        "pinned": {"broker_core": broker_core, "generator_core": LOADGEN_CORE if pinned else None},
        "generator": {"binary": str(binary), "source": str(generator.SOURCE),
                      "cflags": list(generator.CFLAGS), "cpu_limit_pct": generator.GENERATOR_CPU_LIMIT_PCT},
        "settings": asdict(settings),
        "broker_settings": {"inflight_window": INFLIGHT_WINDOW, "max_queued_messages": MAX_QUEUED_MESSAGES,
                            "mosquitto_persist": "persistence true, autosave_interval 1",
                            "edgebus_config": args.edgebus_config and str(args.edgebus_config),
                            "edgebus_scenario_config": EDGEBUS_SCENARIO_CONFIG},
        "broker_workdir": {"path": str(work_root), **filesystem},
        "peers": peers,
        "versions": versions,
        "start_errors": start_errors,
        "results": results,
        "rows": records,
        "verdicts": {peer: {scenario: outcome.get("verdicts", []) for scenario, outcome in by.items()}
                     for peer, by in results.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.output} ({elapsed:.0f} s)")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

"""The Python side of the C load generator (bench/mqttgen.c): build it, run one scenario with it, turn its
output and the broker readings taken at its phase marks into the figures of one run, and judge the run.

The generator prints `mark NAME` at phase boundaries (the broker's CPU time and /proc/PID/io are read
when the line arrives), `hold NAME` when it waits for us (the broker's RSS is read, then we answer), and
finally `result {JSON}`.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

BENCH_DIR = Path(__file__).resolve().parent
SOURCE = BENCH_DIR / "mqttgen.c"
BUILD_DIR = BENCH_DIR / "build"  # git-ignored (`build/` in .gitignore)
CFLAGS = ("-O2", "-Wall", "-Wextra")
COMPILERS = ("cc", "gcc", "clang")

# A run whose generator used more than this share of its core may have been held back by it.
GENERATOR_CPU_LIMIT_PCT = 50.0
# The paced latency run must send at least this share of its target rate.
LATENCY_RATE_TOLERANCE = 0.95

SCENARIO_NAMES = ("fanin-q0", "fanin-q1", "fanin-q2", "fanout-q0", "latency-q1", "idle-rss", "drain-q1",
                  "durable-q1")
QOS_OF = {"fanin-q0": 0, "fanin-q1": 1, "fanin-q2": 2, "fanout-q0": 0, "latency-q1": 1, "drain-q1": 1,
          "durable-q1": 1}
IO_FIELDS = ("write_bytes", "cancelled_write_bytes", "read_bytes", "wchar", "rchar", "syscw")


class GeneratorError(Exception):
    """The generator could not be built, or did not finish a scenario."""


# --------------------------------------------------------------------------------------------- build


def find_compiler() -> str | None:
    """$CC if set, else the first of cc, gcc, clang on PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def build(build_dir: Path = BUILD_DIR, *, force: bool = False) -> Path:
    """Compile bench/mqttgen.c with `cc -O2` unless the binary is newer than the source; return its path.

    The binary is written under a temporary name and renamed, so a concurrent run never executes a
    half-written file.
    """
    binary = build_dir / "mqttgen"
    if not force and binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    compiler = find_compiler()
    if compiler is None:
        raise GeneratorError(
            "no C compiler found ($CC, cc, gcc or clang): the load generator bench/mqttgen.c is compiled "
            "on first use; install one (Debian: apt-get install gcc) or set CC")
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=build_dir, prefix=".mqttgen-", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        command = [compiler, *CFLAGS, "-o", str(partial), str(SOURCE)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise GeneratorError(f"cannot run the C compiler {compiler}: {exc}") from exc
        if done.returncode != 0:
            raise GeneratorError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
        os.replace(partial, binary)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return binary


# --------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ScenarioSettings:
    """Sizes and durations of one run; `quick()` and `self_check()` give the shorter variants."""

    duration_s: float = 10.0
    warmup_s: float = 1.0
    grace_s: float = 10.0
    quiet_s: float = 0.5  # QoS 0: delivery counts as finished after this long without progress
    publishers: int = 4
    fanout_subscribers: int = 100
    payload_size: int = 64
    window: int = 20  # QoS 1/2 messages in flight per publisher
    qos0_batch: int = 128  # QoS 0: PUBLISH packets per send(), each batch closed by a PINGREQ
    qos0_batches_ahead: int = 8  # ... and batches not yet answered by PINGRESP, per publisher
    fanout_batch: int = 64  # fan-out: each message becomes 100 deliveries, so keep fewer ahead
    # QoS 0 subscribers wake up once this many bytes are queued (SO_RCVLOWAT) while messages flow: a
    # broker that sends every delivery on its own would otherwise cost the generator a wake-up each.
    fanin_rcvlowat: int = 16384
    fanout_rcvlowat: int = 4096
    # QoS 1/2 (unpaced): a publisher with a full window wakes up for this many acknowledgements, and a
    # subscriber that is owed at least this many messages wakes up for this many deliveries (at most a
    # quarter of the brokers' in-flight window of 100 towards it). Mosquitto 2.0.11 sends every PUBACK
    # and delivery on its own; waking up for each cost the generator 70-80 % of its core.
    ack_batch: int = 10
    delivery_batch: int = 25
    latency_rate_per_s: float = 2000.0
    latency_duration_s: float = 10.0
    latency_max_inflight: int = 1000
    idle_steps: tuple[int, ...] = (5000, 10000)
    idle_warmup_clients: int = 10
    idle_concurrency: int = 200
    settle_timeout_s: float = 30.0
    drain_messages: int = 10_000

    @classmethod
    def quick(cls) -> ScenarioSettings:
        return cls(duration_s=2.0, warmup_s=0.5, grace_s=3.0, latency_duration_s=3.0, settle_timeout_s=10.0)

    @classmethod
    def self_check(cls) -> ScenarioSettings:
        return cls(duration_s=1.0, warmup_s=0.2, grace_s=3.0, latency_duration_s=1.0, fanout_subscribers=10,
                   idle_steps=(200, 400), settle_timeout_s=3.0, drain_messages=2000)


def generator_options(scenario: str, host: str, port: int, settings: ScenarioSettings) -> list[str]:
    """The mqttgen command-line options that make up one scenario."""
    s = settings
    common = ["--host", host, "--port", str(port), "--payload", str(s.payload_size),
              "--warmup", str(s.warmup_s), "--duration", str(s.duration_s), "--grace", str(s.grace_s),
              "--quiet", str(s.quiet_s), "--topic", f"bench/{scenario}", "--prefix", f"bench-{scenario}"]
    fanin = ["--mode", "flow", "--publishers", str(s.publishers), "--subscribers", "1",
             "--window", str(s.window), "--batch", str(s.qos0_batch),
             "--batches-ahead", str(s.qos0_batches_ahead), "--rcvlowat", str(s.fanin_rcvlowat),
             "--ack-batch", str(s.ack_batch), "--delivery-batch", str(s.delivery_batch)]
    options: dict[str, list[str]] = {
        "fanin-q0": [*fanin, "--qos", "0"],
        "fanin-q1": [*fanin, "--qos", "1"],
        "fanin-q2": [*fanin, "--qos", "2"],
        "fanout-q0": ["--mode", "flow", "--qos", "0", "--publishers", "1",
                      "--subscribers", str(s.fanout_subscribers), "--batch", str(s.fanout_batch),
                      "--batches-ahead", str(s.qos0_batches_ahead), "--rcvlowat", str(s.fanout_rcvlowat)],
        # --duration comes last and wins over the common one.
        "latency-q1": ["--mode", "flow", "--qos", "1", "--publishers", "1", "--subscribers", "1",
                       "--rate", str(s.latency_rate_per_s), "--window", str(s.latency_max_inflight),
                       "--duration", str(s.latency_duration_s)],
        "durable-q1": [*fanin, "--qos", "1", "--persistent"],
        "drain-q1": ["--mode", "drain", "--qos", "1", "--publishers", str(s.publishers),
                     "--window", str(s.window), "--messages", str(s.drain_messages),
                     "--ack-batch", str(s.ack_batch), "--delivery-batch", str(s.delivery_batch)],
        "idle-rss": ["--mode", "idle", "--connections", ",".join(str(n) for n in s.idle_steps),
                     "--warmup-clients", str(s.idle_warmup_clients),
                     "--concurrency", str(s.idle_concurrency)],
    }
    if scenario not in options:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIO_NAMES)}")
    return common + options[scenario]


# --------------------------------------------------------------------------------------------- running


class BrokerProbe(Protocol):
    """What a scenario may read about the broker process (bench.run's broker classes provide it)."""

    def rss_kib(self) -> int: ...

    def cpu_seconds(self) -> float: ...

    def io_counters(self) -> dict[str, int]: ...


@dataclass
class BrokerSample:
    """The broker's counters when the driver read a `mark` line (None: unreadable)."""

    wall_s: float
    cpu_s: float | None
    io: dict[str, int] | None


def sample(probe: BrokerProbe | None) -> BrokerSample:
    cpu: float | None = None
    io: dict[str, int] | None = None
    if probe is not None:
        with contextlib.suppress(OSError):
            cpu = probe.cpu_seconds()
        with contextlib.suppress(OSError):
            io = probe.io_counters()
    return BrokerSample(time.monotonic(), cpu, io)


@dataclass
class GeneratorRun:
    result: dict[str, Any]
    marks: dict[str, BrokerSample] = field(default_factory=dict)
    holds: dict[str, Any] = field(default_factory=dict)


def run_generator(binary: Path, options: list[str], probe: BrokerProbe | None, *, timeout_s: float,
                  on_hold: Callable[[str], Any] | None = None) -> GeneratorRun:
    """Run mqttgen to the end, answering its line protocol; raise GeneratorError if it fails or hangs.

    It inherits this process's CPU affinity (the driver pins itself to the generator's core).
    """
    marks: dict[str, BrokerSample] = {}
    holds: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    with tempfile.TemporaryFile() as errors, subprocess.Popen(
            [str(binary), *options], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        deadline = time.monotonic() + timeout_s
        pending = b""
        with contextlib.ExitStack() as on_error, selectors.DefaultSelector() as selector:
            on_error.callback(proc.kill)  # Ctrl-C or an error here: the generator stops at once
            selector.register(proc.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise GeneratorError(f"mqttgen did not finish within {timeout_s:.0f} s "
                                         f"({' '.join(options)})")
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    verb, _, rest = line.decode().partition(" ")
                    if verb == "mark":
                        marks[rest] = sample(probe)
                    elif verb == "hold":
                        holds[rest] = on_hold(rest) if on_hold else None
                        proc.stdin.write(b"go\n")
                        proc.stdin.flush()
                    elif verb == "result":
                        result = json.loads(rest)
            on_error.pop_all()
        code = proc.wait()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace").strip()
    if code != 0 or result is None:
        detail = stderr.splitlines()[-1] if stderr else "no output"
        raise GeneratorError(f"mqttgen exited with code {code}: {detail}")
    return GeneratorRun(result, marks, holds)


def settle_rss(probe: BrokerProbe, timeout_s: float, interval_s: float = 0.5,
               samples: int = 4) -> tuple[int, bool]:
    """Read the broker's RSS until `samples` readings in a row agree within max(64 KiB, 0.5 %)."""
    readings = [probe.rss_kib()]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        readings.append(probe.rss_kib())
        recent = readings[-samples:]
        if len(recent) == samples and max(recent) - min(recent) <= max(64, max(recent) // 200):
            return recent[-1], True
    return readings[-1], False


# --------------------------------------------------------------------------------------------- figures


def io_delta(before: BrokerSample | None, after: BrokerSample | None) -> dict[str, int] | None:
    if before is None or after is None or before.io is None or after.io is None:
        return None
    return {key: after.io[key] - before.io[key] for key in IO_FIELDS if key in after.io and key in before.io}


def broker_cpu_pct(before: BrokerSample | None, after: BrokerSample | None) -> float | None:
    if before is None or after is None or before.cpu_s is None or after.cpu_s is None:
        return None
    wall = after.wall_s - before.wall_s
    return round((after.cpu_s - before.cpu_s) / wall * 100.0, 1) if wall > 0 else None


def per_message(delta: dict[str, int] | None, key: str, messages: int) -> float | None:
    if delta is None or key not in delta or messages <= 0:
        return None
    return round(delta[key] / messages, 1)


def per_second(count: float, seconds: float) -> float | None:
    return round(count / seconds) if seconds > 0 else None


def audit_figures(gen: dict[str, Any]) -> dict[str, Any]:
    """The generator's books: owed = sent (QoS 0) or acknowledged (QoS 1/2) x subscribers."""
    keys = ("sent", "acked", "unacked", "owed", "received", "delivered_unique", "lost", "lost_acked",
            "duplicated", "reordered", "foreign", "dup_flagged", "stray_acks", "protocol_errors",
            "connect_failures", "closed_unexpectedly")
    figures = {key: gen[key] for key in keys if key in gen}
    figures["complete"] = gen.get("complete")
    if gen.get("first_error"):
        figures["first_error"] = gen["first_error"]
    return figures


def latency_figures(prefix: str, latency: dict[str, Any]) -> dict[str, Any]:
    if not latency.get("samples"):
        return {f"{prefix}samples": 0}
    return {f"{prefix}samples": latency["samples"], f"{prefix}p50_us": latency["p50"],
            f"{prefix}p99_us": latency["p99"], f"{prefix}max_us": round(latency["max"])}


def flow_figures(scenario: str, run: GeneratorRun) -> dict[str, Any]:
    """fan-in, fan-out, latency and durable runs: rates over the measurement window."""
    gen = run.result
    window = gen["window"]
    seconds = window["seconds"]
    start, end = run.marks.get("window-start"), run.marks.get("window-end")
    figures: dict[str, Any] = {
        "window_s": round(seconds, 3),
        "gen_cpu_pct": round(window["gen_cpu_pct"], 1),
        "broker_cpu_pct": broker_cpu_pct(start, end),
    }
    rate = per_second(window["delivered"], seconds)
    if scenario == "fanout-q0":
        figures["deliveries_per_s"] = rate
    elif scenario != "latency-q1":
        figures["msgs_per_s"] = rate
    if QOS_OF[scenario] and scenario != "latency-q1":
        # Flows the broker completed with the publishers (PUBACK / PUBCOMP) per second.
        figures["accepted_per_s"] = per_second(window["acked"], seconds)
    if scenario == "latency-q1":
        figures |= {"target_rate_per_s": gen["target_rate_per_s"],
                    "sent_rate_per_s": round(gen["sent_rate_per_s"]),
                    "window_full_events": gen["window_full_events"]}
        figures |= latency_figures("", gen["latency_us"])
    else:
        figures |= latency_figures("e2e_", gen["latency_us"])
    if scenario == "durable-q1":
        figures |= latency_figures("ack_", gen["ack_latency_us"])
        io = io_delta(start, end)
        # Disk bytes per message the broker acknowledged in the window.
        figures |= {"window_io": io, "window_write_bytes": None if io is None else io.get("write_bytes"),
                    "bytes_per_msg": per_message(io, "write_bytes", window["acked"])}
    return figures | audit_figures(gen)


def drain_figures(run: GeneratorRun) -> dict[str, Any]:
    """drain-q1: the queueing phase, then the drain from reconnect to the last message."""
    gen = run.result
    marks = run.marks
    queued = gen["queued"]
    total_io = io_delta(marks.get("queue-start"), marks.get("drain-end"))
    figures: dict[str, Any] = {
        "window_s": round(gen["window"]["seconds"], 4),
        "gen_cpu_pct": round(gen["window"]["gen_cpu_pct"], 1),
        "broker_cpu_pct": broker_cpu_pct(marks.get("drain-start"), marks.get("drain-end")),
        "queued": queued,
        "queued_per_s": round(gen["queued_per_s"]),
        "queue_gen_cpu_pct": round(gen["queue_window"]["gen_cpu_pct"], 1),
        "drained": gen["drained"],
        # No figure when nothing came back (the broker did not keep the session or its queue).
        "drain_s": round(gen["drain_s"], 4) if gen["drained"] else None,
        "drain_per_s": round(gen["drain_per_s"]) if gen["drained"] else None,
        "session_present": gen["session_present"],
        # What a queued message costs in all: stored while away, then delivered and deleted.
        "total_bytes_per_msg": per_message(total_io, "write_bytes", queued),
        "queue_io": io_delta(marks.get("queue-start"), marks.get("queue-end")),
        "drain_io": io_delta(marks.get("drain-start"), marks.get("drain-end")),
    }
    return figures | audit_figures(gen)


def run_scenario(scenario: str, binary: Path, host: str, port: int, settings: ScenarioSettings,
                 probe: BrokerProbe | None) -> dict[str, Any]:
    """Run one scenario against a broker listening on host:port; return the figures of the run (with the
    generator's own result under "generator")."""
    options = generator_options(scenario, host, port, settings)
    budget = settings.warmup_s + max(settings.duration_s, settings.latency_duration_s) + 3 * settings.grace_s
    if scenario == "idle-rss":
        if probe is None:
            raise ValueError("idle-rss needs a broker probe to read the broker's RSS")
        # The broker with no client at all, then (held by the generator) after a few clients came and
        # went, and with each number of idle connections open.
        idle_kib, idle_settled = settle_rss(probe, settings.settle_timeout_s)
        run = run_generator(binary, options, probe,
                            on_hold=lambda _: settle_rss(probe, settings.settle_timeout_s),
                            timeout_s=120 + len(settings.idle_steps) * (180 + settings.settle_timeout_s))
        figures = idle_figures(run, idle_kib, idle_settled, settings)
    elif scenario == "drain-q1":
        run = run_generator(binary, options, probe, timeout_s=60 + budget)
        figures = drain_figures(run)
    else:
        run = run_generator(binary, options, probe, timeout_s=60 + budget)
        figures = flow_figures(scenario, run)
    figures["generator"] = run.result
    return figures


def idle_figures(run: GeneratorRun, idle_kib: int, idle_settled: bool,
                 settings: ScenarioSettings) -> dict[str, Any]:
    baseline_kib, settled = run.holds["baseline"]
    figures: dict[str, Any] = {"idle_rss_mb": round(idle_kib / 1024, 1), "rss_idle_kib": idle_kib,
                               "rss_baseline_kib": baseline_kib}
    for step, count in zip(run.result["steps"], settings.idle_steps, strict=True):
        kib, step_settled = run.holds[f"connected-{count}"]
        settled = settled and step_settled
        figures[f"rss_{count}_kib"] = kib
        figures[f"open_{count}"] = step["open"]
        # Divided by the connections that were open (fewer than asked if some failed).
        opened = step["open"]
        figures[f"kib_per_conn_{count}"] = round((kib - baseline_kib) / opened, 2) if opened else None
        figures[f"connect_s_{count}"] = round(step["connect_s"], 2)
        figures["gen_cpu_pct"] = round(step["gen_cpu_pct"], 1)  # of the last step's connect phase
    figures |= {"connections": run.result["connections"], "settled": idle_settled and settled,
                "connect_failures": run.result["connect_failures"],
                "protocol_errors": run.result["protocol_errors"],
                "closed_unexpectedly": run.result["closed_unexpectedly"],
                "complete": run.result["complete"]}
    if run.result.get("first_error"):
        figures["first_error"] = run.result["first_error"]
    return figures


# --------------------------------------------------------------------------------------------- verdicts


def verdicts(scenario: str, figures: dict[str, Any]) -> list[str]:
    """Why a run's figure must not be compared: the generator may have held it back, or the broker broke
    its delivery guarantees. An empty list: the figure stands."""
    found: list[str] = []
    if "error" in figures:
        return ["ERROR"]
    gen_cpu = figures.get("gen_cpu_pct")
    if scenario != "idle-rss" and gen_cpu is not None and gen_cpu > GENERATOR_CPU_LIMIT_PCT:
        found.append(f"GENERATOR-BOUND {gen_cpu:.0f}%")
    if figures.get("lost_acked"):
        found.append(f"LOST {figures['lost_acked']:,} ACKED")
    if QOS_OF.get(scenario) == 2 and figures.get("duplicated"):
        found.append(f"DUPLICATED {figures['duplicated']:,} (QoS 2)")
    errors = sum(figures.get(key) or 0 for key in ("protocol_errors", "closed_unexpectedly"))
    if errors:
        found.append(f"{errors} CONNECTION ERRORS")
    if scenario != "idle-rss" and figures.get("connect_failures"):
        found.append(f"{figures['connect_failures']} CONNECT FAILURES")
    if scenario == "latency-q1" and figures.get("sent_rate_per_s", 0) < (
            LATENCY_RATE_TOLERANCE * figures.get("target_rate_per_s", 0)):
        found.append("RATE MISSED")
    return found

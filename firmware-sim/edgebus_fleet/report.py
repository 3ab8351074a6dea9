"""The run's summary table (text), DIR/report.json, and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgebus_fleet.engine import RunResult, result_to_dict

__all__ = ["checks_table", "summary_table", "write_plots", "write_report"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def summary_table(result: RunResult) -> Table:
    ledger = result.ledger
    verdict = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
    table = Table(
        title=f"edgebus-fleet: {result.fleet.name} against {result.broker}: {verdict}",
        caption=(
            f"{result.devices} devices, peak {result.peak_connected} connected, "
            f"{ledger.sent} sent, {ledger.delivered} delivered, {result.duration:g} s; "
            + ", ".join(f"{k} {v}" for k, v in result.events.items() if v)
        ),
    )
    for name, justify in (
        ("profile", "left"),
        ("stream", "left"),
        ("QoS", "right"),
        ("sent", "right"),
        ("acked", "right"),
        ("delivered", "right"),
        ("lost", "right"),
        ("dup", "right"),
        ("reord", "right"),
        ("unconf", "right"),
        ("after wake", "right"),
        ("p50 ms", "right"),
        ("p95 ms", "right"),
        ("p99 ms", "right"),
        ("max ms", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in result.summaries:
        style = "red" if s.violations else None
        table.add_row(
            s.profile,
            s.stream,
            str(s.qos),
            str(s.sent),
            str(s.acknowledged),
            str(s.delivered),
            str(s.lost),
            str(s.duplicated),
            str(s.reordered),
            str(s.unconfirmed),
            str(s.after_wake) if s.stream == "command" else "-",
            _ms(s.latency_p50),
            _ms(s.latency_p95),
            _ms(s.latency_p99),
            _ms(s.latency_max),
            style=style,
        )
    return table


def checks_table(result: RunResult) -> Table | None:
    """The per-device checks: retained state read after the run, and wills against abrupt disconnects."""
    if not result.retained and not result.wills:
        return None
    table = Table(title="retained state and wills")
    for name, justify in (
        ("profile", "left"),
        ("check", "left"),
        ("checked / required", "right"),
        ("ok / seen", "right"),
        ("retained mismatch / will missing", "right"),
        ("unchecked / optional", "right"),
        ("will unexpected", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in result.retained:
        table.add_row(
            r.profile,
            f"retained {r.stream}",
            str(r.checked),
            str(r.matched),
            str(r.mismatched + r.missing),
            str(r.unchecked),
            "-",
            style="red" if r.violations else None,
        )
    for w in result.wills:
        table.add_row(
            w.profile,
            "will",
            str(w.required),
            str(w.seen),
            str(w.missing),
            str(w.optional),
            str(w.unexpected),
            style="red" if w.violations else None,
        )
    return table


def print_summary(result: RunResult, console: Console) -> None:
    console.print(summary_table(result))
    checks = checks_table(result)
    if checks is not None:
        console.print(checks)
    for problem in result.violations:
        console.print(f"[red]violation:[/] {problem}")


def write_report(result: RunResult, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.json"
    path.write_text(json.dumps(result_to_dict(result), indent=2) + "\n")
    return path


def write_plots(result: RunResult, directory: Path) -> list[Path]:
    """latency_cdf.png, throughput.png, connected.png and losses.png in ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    samples = result.samples

    fig, ax = plt.subplots(figsize=(8, 5))
    plotted = False
    for (profile, stream, qos), values in result.latencies.items():
        if not values:
            continue
        n = len(values)
        ax.plot(
            [v * 1000 for v in values], [(i + 1) / n for i in range(n)], label=f"{profile}/{stream} QoS {qos}"
        )
        plotted = True
    ax.set_xscale("log" if plotted else "linear")
    ax.set_xlabel("end-to-end latency (ms, log scale)")
    ax.set_ylabel("fraction of messages delivered within")
    ax.set_title("Latency CDF per profile, stream and QoS")
    ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax.legend(fontsize=7)
    paths.append(_save(fig, directory / "latency_cdf.png"))

    times = [s.t for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in ("sent", "delivered"):
        values = [getattr(s, name) for s in samples]
        rates = [0.0] + [
            (values[i] - values[i - 1]) / max(1e-9, times[i] - times[i - 1]) for i in range(1, len(values))
        ]
        ax.plot(times, rates, label=f"{name} msgs/s")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("messages per second")
    ax.set_title("Throughput over time")
    ax.grid(True, alpha=0.3)
    ax.legend()
    paths.append(_save(fig, directory / "throughput.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(times, [s.connected for s in samples], label="connected")
    ax.plot(times, [s.asleep for s in samples], label="asleep")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("devices")
    ax.set_title("Connected devices over time")
    ax.grid(True, alpha=0.3)
    ax.legend()
    paths.append(_save(fig, directory / "connected.png"))

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7))
    labels = [f"{s.profile}/{s.stream}\nQoS {s.qos}" for s in result.summaries]
    x = range(len(labels))
    width = 0.27
    top.bar([i - width for i in x], [s.lost for s in result.summaries], width, label="lost", color="tab:red")
    top.bar(list(x), [s.duplicated for s in result.summaries], width, label="duplicated", color="tab:orange")
    top.bar([i + width for i in x], [s.unconfirmed for s in result.summaries], width, label="unconfirmed")
    top.set_xticks(list(x), labels, fontsize=7, rotation=30, ha="right")
    worst = max([1] + [max(s.lost, s.duplicated, s.unconfirmed) for s in result.summaries])
    top.set_ylim(0, worst * 1.15)
    top.set_ylabel("messages")
    top.set_title("Losses per profile, stream and QoS (after the drain)")
    top.legend()
    bottom.plot(times, [s.overdue for s in samples], label="acked, undelivered > 5 s")
    bottom.plot(times, [s.duplicates for s in samples], label="duplicates (cumulative)")
    bottom.set_xlabel("time since start (s)")
    bottom.set_ylabel("messages")
    bottom.set_ylim(0, max([1] + [max(s.overdue, s.duplicates) for s in samples]) * 1.15)
    bottom.grid(True, alpha=0.3)
    bottom.legend()
    paths.append(_save(fig, directory / "losses.png"))
    return paths


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=100)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path

"""The benchmark's C load generator (bench/mqttgen.c) compiles without warnings and passes its own tests
(encoders, framer and audit, no broker needed). Needs only a C compiler."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import generator


@pytest.fixture(scope="module")
def compiler() -> str:
    found = generator.find_compiler()
    if found is None:
        pytest.skip("no C compiler (cc, gcc or clang)")
    return found


def test_compiles_without_warnings(compiler: str, tmp_path: Path) -> None:
    done = subprocess.run([compiler, *generator.CFLAGS, "-Werror", "-o", str(tmp_path / "mqttgen"),
                           str(generator.SOURCE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_self_test_passes(compiler: str, tmp_path: Path) -> None:
    binary = generator.build(tmp_path)
    done = subprocess.run([str(binary), "--self-test"], capture_output=True, text=True, check=False,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "self-test ok"


def test_build_reuses_an_up_to_date_binary(compiler: str, tmp_path: Path) -> None:
    first = generator.build(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert generator.build(tmp_path) == first
    assert first.stat().st_mtime_ns == mtime


def test_every_scenario_has_generator_options() -> None:
    settings = generator.ScenarioSettings.quick()
    for scenario in generator.SCENARIO_NAMES:
        options = generator.generator_options(scenario, "127.0.0.1", 1883, settings)
        assert options[options.index("--port") + 1] == "1883"
        assert "--mode" in options


def test_verdicts() -> None:
    assert generator.verdicts("fanin-q0", {"gen_cpu_pct": 20.0, "lost": 5}) == []
    assert generator.verdicts("fanin-q0", {"gen_cpu_pct": 51.0}) == ["GENERATOR-BOUND 51%"]
    assert generator.verdicts("fanin-q1", {"gen_cpu_pct": 10.0, "lost_acked": 1200}) == ["LOST 1,200 ACKED"]
    assert generator.verdicts("fanin-q2", {"gen_cpu_pct": 10.0, "duplicated": 3}) == [
        "DUPLICATED 3 (QoS 2)"]
    assert generator.verdicts("idle-rss", {"gen_cpu_pct": 90.0}) == []


def test_qos1_batches_fit_the_windows(compiler: str, tmp_path: Path) -> None:
    """A publisher's acknowledgement batch must fit its window, or it would wait for PUBACKs that are not
    owed; unpaced QoS 1/2 scenarios pass both batch sizes, the paced latency run none."""
    settings = generator.ScenarioSettings.quick()
    assert 1 <= settings.ack_batch <= settings.window
    assert 1 <= settings.delivery_batch <= 25  # a quarter of the brokers' in-flight window of 100
    for scenario in ("fanin-q1", "fanin-q2", "durable-q1", "drain-q1"):
        options = generator.generator_options(scenario, "127.0.0.1", 1883, settings)
        assert options[options.index("--ack-batch") + 1] == str(settings.ack_batch)
        assert options[options.index("--delivery-batch") + 1] == str(settings.delivery_batch)
    assert "--ack-batch" not in generator.generator_options("latency-q1", "127.0.0.1", 1883, settings)
    binary = generator.build(tmp_path)
    refused = subprocess.run([str(binary), "--mode", "flow", "--port", "1883", "--qos", "1", "--window", "20",
                              "--ack-batch", "21"], capture_output=True, text=True, check=False, timeout=30)
    assert refused.returncode == 2

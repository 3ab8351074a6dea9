"""/metrics: the text format checked line by line, and a real Prometheus (Debian ``prometheus``) scraping
edgebus with basic auth, asserted through Prometheus's own query API after known MQTT traffic."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from tests.clients import MQTT_5, PahoClient, edgebus_only
from tests.conftest import StartBroker
from tests.http.helpers import TOKEN, VIEWER, request
from tests.http.test_api import start_http_broker
from tests.processes import free_port

pytestmark = edgebus_only("the HTTP listener is edgebus's")

PROMETHEUS: Final = shutil.which("prometheus") or "/usr/bin/prometheus"
#: Prometheus starts, scrapes (every 1 s) and answers the queries within this.
PROMETHEUS_WAIT_S: Final = 40.0
_SAMPLE_RE: Final = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$'
)


async def send_known_traffic(paho: Callable[..., PahoClient], address: tuple[str, int]) -> None:
    """3 QoS 0, 5 QoS 1 and 2 QoS 2 PUBLISHes from one client, to a persistent subscriber at QoS 2 (its
    deliveries go through the store, so commits are timed)."""
    subscriber = paho("metrics-sub", MQTT_5)
    await subscriber.connect(*address, clean_start=False, session_expiry_interval=60)
    await subscriber.subscribe("m/#", 2)
    publisher = paho("metrics-pub", MQTT_5)
    await publisher.connect(*address)
    for qos, count in ((0, 3), (1, 5), (2, 2)):
        for index in range(count):
            await publisher.publish(f"m/{qos}", f"{index}".encode(), qos=qos)
    await subscriber.expect_messages(10)
    await publisher.disconnect()


def parse_exposition(text: str) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
    """(HELP by family, TYPE by family, value by sample 'name{labels}'); asserts the line syntax."""
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in samples, f"TYPE of {name} after its samples"
            types[name] = kind
        else:
            match = _SAMPLE_RE.match(line)
            assert match is not None, f"not a sample line: {line!r}"
            samples[match[1] + (match[2] or "")] = float(match[3])
    return helps, types, samples


async def test_metrics_text_format(
    start_broker: StartBroker, tmp_path: Path, paho: Callable[..., PahoClient]
) -> None:
    broker, base = await start_http_broker(start_broker, tmp_path)
    await send_known_traffic(paho, broker.address)
    reply = await request(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    helps, types, samples = parse_exposition(reply.body.decode())
    for sample in samples:
        name = sample.partition("{")[0]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types and family in helps, f"{sample}: no HELP/TYPE"
        if types[family] == "counter":
            assert name.endswith("_total"), name
    for name, kind in types.items():
        assert (kind == "counter") == name.endswith("_total"), name
    assert samples['edgebus_messages_received_total{qos="0"}'] == 3
    assert samples['edgebus_messages_received_total{qos="1"}'] == 5
    assert samples['edgebus_messages_received_total{qos="2"}'] == 2
    assert samples['edgebus_messages_sent_total{qos="2"}'] == 2
    assert samples["edgebus_clients_connected"] == 1
    assert samples["edgebus_store_commit_duration_seconds_count"] >= 1
    assert (
        samples['edgebus_store_commit_duration_seconds_bucket{le="+Inf"}']
        == (samples["edgebus_store_commit_duration_seconds_count"])
    )
    assert samples["process_resident_memory_bytes"] > 1e6 and samples["process_open_fds"] > 3
    assert types["edgebus_store_commit_duration_seconds"] == "histogram"


async def query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    reply = await request(url)
    assert reply.status == 200, reply.body
    answer = json.loads(reply.body)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


async def test_prometheus_scrapes_the_series(
    start_broker: StartBroker, tmp_path: Path, paho: Callable[..., PahoClient]
) -> None:
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("prometheus is not installed (scripts/test installs the Debian package)")
    broker, base = await start_http_broker(start_broker, tmp_path)
    target = base.removeprefix("http://")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: edgebus\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
        f"    basic_auth:\n      username: {VIEWER[0]}\n      password: {VIEWER[1]}\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
    prometheus = f"http://127.0.0.1:{port}"
    expected = {
        'edgebus_messages_received_total{qos="0"}': 3.0,
        'edgebus_messages_received_total{qos="1"}': 5.0,
        'edgebus_messages_received_total{qos="2"}': 2.0,
        'edgebus_messages_sent_total{qos="1"}': 5.0,
        "edgebus_clients_connected": 1.0,
        'up{job="edgebus"}': 1.0,
    }
    seen: dict[str, float | None] = {}
    try:
        await send_known_traffic(paho, broker.address)
        with trio.move_on_after(PROMETHEUS_WAIT_S):
            while seen != expected:
                await trio.sleep(1)
                try:
                    for expression in expected:
                        result = await query(prometheus, expression)
                        seen[expression] = float(result[0]["value"][1]) if result else None
                except OSError:
                    continue  # Prometheus is still starting
        assert seen == expected, log_path.read_text()[-3000:]
        # The histogram and the process series are there too, labelled by the target.
        commits = await query(prometheus, "edgebus_store_commit_duration_seconds_count")
        assert commits and float(commits[0]["value"][1]) >= 1 and commits[0]["metric"]["instance"] == target
        assert await query(prometheus, "process_resident_memory_bytes > 0")
        assert await query(prometheus, 'edgebus_listener_connections{type="http"} >= 1')
    finally:
        process.kill()  # by PID: the process this test started
        with trio.CancelScope(shield=True):
            await process.wait()

"""The JSON API over real HTTP (urllib) against a broker with real MQTT clients (paho): every resource,
every action, the auth answers (401, 403) and bad input (4xx JSON, no traceback, the broker serves on)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from edgebus.http import server as http_server
from edgebus.http.metrics import escape_label
from tests.clients import MQTT_5, PahoClient, edgebus_only
from tests.conftest import BrokerHandle, StartBroker
from tests.http.helpers import ADMIN, TOKEN, VIEWER, basic, request, write_auth_files

pytestmark = edgebus_only("the HTTP API is edgebus's")

#: Refused logins wait this long here (the broker's [security] auth_failure_delay).
FAILURE_DELAY_S = 0.3


async def start_http_broker(
    start_broker: StartBroker, tmp_path: Path, **listener: Any
) -> tuple[BrokerHandle, str]:
    passwords, tokens = write_auth_files(tmp_path)
    entry: dict[str, Any] = {"type": "http", "admins": ("admin", "prometheus"), "token_file": str(tokens)}
    entry.update({"credentials_over_http": True, **listener})
    broker = await start_broker(
        security={"password_file": str(passwords), "auth_failure_delay": FAILURE_DELAY_S},
        listeners=[entry],
    )
    assert broker.broker is not None
    host, port = broker.broker.listener_addresses[0][0]
    return broker, f"http://{host}:{port}"


async def get(url: str, who: tuple[str, str] = VIEWER) -> Any:
    reply = await request(url, headers=basic(who))
    assert reply.status == 200, reply.body
    return reply.json()


async def test_every_resource_and_action(
    start_broker: StartBroker, tmp_path: Path, paho: Callable[..., PahoClient]
) -> None:
    broker, base = await start_http_broker(start_broker, tmp_path)
    api = base + "/api/v1"
    device = paho("dev-1", MQTT_5)
    await device.connect(*broker.address, keep_alive=45)
    await device.subscribe("t/#", 1)
    sleeper = paho("sleeper", MQTT_5)
    await sleeper.connect(*broker.address, clean_start=False, session_expiry_interval=300)
    await sleeper.subscribe("q/#", 1)
    await sleeper.disconnect()
    publisher = paho("pub", MQTT_5)
    await publisher.connect(*broker.address)
    await publisher.publish("q/1", b"for the sleeper", qos=1)
    for topic in ("r/a", "r/b", "r/c"):
        await publisher.publish(topic, topic.encode(), qos=1, retain=True)

    info = await get(api + "/broker")
    assert info["version"] and info["sys"]["clients/connected"] == "2"
    listeners = (await get(api + "/listeners"))["listeners"]
    assert {entry["type"] for entry in listeners} == {"tcp", "http"}
    assert next(entry for entry in listeners if entry["type"] == "tcp")["connections"] == 2
    clients = {c["client_id"]: c for c in (await get(api + "/clients"))["clients"]}
    assert set(clients) == {"dev-1", "pub"}
    assert clients["dev-1"]["protocol"] == "5.0" and clients["dev-1"]["keep_alive"] == 45
    assert clients["dev-1"]["inflight"] == 0 and clients["dev-1"]["queued"] == 0
    sessions = {s["client_id"]: s for s in (await get(api + "/sessions"))["sessions"]}
    assert sessions["sleeper"]["connected"] is False and sessions["sleeper"]["queued"] == 1
    subscriptions = (await get(api + "/subscriptions"))["subscriptions"]
    assert {"client_id": "dev-1", "filter": "t/#", "qos": 1} in [
        {k: s[k] for k in ("client_id", "filter", "qos")} for s in subscriptions
    ]
    page = await get(api + "/retained?limit=2")
    assert page["total"] == 3 and [r["topic"] for r in page["retained"]] == ["r/a", "r/b"]
    page = await get(api + "/retained?offset=2&limit=2")
    assert [(r["topic"], r["payload"]) for r in page["retained"]] == [("r/c", "r/c")]
    assert (await get(api + "/bridges")) == {"bridges": [], "parked": []}
    assert len((await get(api + "/throughput"))["samples"]) >= 1

    # Disconnect: the v5 client gets DISCONNECT 0x98 Administrative action [MQTT-3.14.2-1] (the server
    # sends DISCONNECT with a reason code before closing [MQTT-4.13.2-1]).
    reply = await request(api + "/clients/dev-1/disconnect", "POST", basic(ADMIN))
    assert (reply.status, reply.json()) == (200, {"ok": True})
    ended = await device.expect_disconnect()
    assert ended.from_server and ended.reason_code == 0x98
    assert (await request(api + "/clients/dev-1/disconnect", "POST", basic(ADMIN))).status == 404

    # Delete an offline session with its queue; a second delete finds nothing.
    assert (await request(api + "/sessions/sleeper", "DELETE", basic(ADMIN))).status == 200
    assert "sleeper" not in {s["client_id"] for s in (await get(api + "/sessions"))["sessions"]}
    assert (await request(api + "/sessions/sleeper", "DELETE", basic(ADMIN))).status == 404
    # The client id in the path is percent-decoded.
    assert (await request(api + "/sessions/no%2Fsuch", "DELETE", basic(ADMIN))).json()[
        "error"
    ] == "no such session"

    # Clear a retained message: a new subscription gets only the others [MQTT-3.3.1-6].
    assert (await request(api + "/retained?topic=r/b", "DELETE", basic(ADMIN))).status == 200
    assert (await get(api + "/retained"))["total"] == 2
    watcher = paho("watcher", MQTT_5)
    await watcher.connect(*broker.address)
    await watcher.subscribe("r/#", 1)
    got = sorted(message.topic for message in await watcher.expect_messages(2))
    assert got == ["r/a", "r/c"]
    await watcher.expect_no_message(0.3)

    # Reload (password, ACL and token files).
    reply = await request(api + "/reload", "POST", {"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200 and reply.json()["ok"] is True
    for client in (publisher, watcher):
        await client.disconnect()


async def test_authentication_and_roles(start_broker: StartBroker, tmp_path: Path) -> None:
    _, base = await start_http_broker(start_broker, tmp_path)
    api = base + "/api/v1"
    # No credentials: 401 with the schemes to use; the status page shell itself holds no data.
    reply = await request(api + "/clients")
    assert reply.status == 401 and reply.json()["error"] == "authentication required"
    assert 'Basic realm="edgebus"' in reply.headers["www-authenticate"]
    assert "Bearer" in reply.headers["www-authenticate"]
    assert (await request(base + "/metrics")).status == 401
    assert (await request(base + "/")).status == 200
    # A wrong password, an unknown user, a wrong token: 401, each answered after the failure delay.
    for headers in (
        basic(("admin", "wrong")),
        basic(("nobody", "x")),
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": "Basic %%%"},
    ):
        started = trio.current_time()
        reply = await request(api + "/clients", headers=headers)
        assert reply.status == 401, headers
        assert trio.current_time() - started >= FAILURE_DELAY_S * 0.9
    # Right credentials: the delay is forgotten, reads work; a read-only user may not act (403).
    assert (await request(api + "/clients", headers=basic(VIEWER))).status == 200
    reply = await request(api + "/reload", "POST", basic(VIEWER))
    assert reply.status == 403 and "may only read" in reply.json()["error"]
    assert (await request(api + "/reload", "POST", basic(ADMIN))).status == 200
    assert (await request(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200


async def test_credentials_need_tls_unless_allowed_and_anonymous_reads(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    """Plain http without credentials_over_http takes no credentials at all: a password or a token in clear
    text is refused (403) without being checked, so a right one is not confirmed either, and a wrong one
    is not delayed as a failed login."""
    _, base = await start_http_broker(
        start_broker, tmp_path, credentials_over_http=False, allow_anonymous=True
    )
    api = base + "/api/v1"
    for headers in (basic(ADMIN), {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer wrong"}):
        started = trio.current_time()
        reply = await request(api + "/reload", "POST", headers)
        assert reply.status == 403 and "https" in reply.json()["error"], headers
        assert "www-authenticate" not in reply.headers
        assert trio.current_time() - started < FAILURE_DELAY_S
    # allow_anonymous: reads without credentials, but no actions.
    assert (await request(api + "/sessions")).status == 200
    assert (await request(api + "/reload", "POST")).status == 403


async def raw_exchange(host: str, port: int, data: bytes, wait_s: float = 10.0) -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    received = b""
    with trio.move_on_after(wait_s):
        await stream.send_all(data)
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


def body_of(response: bytes) -> Any:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 4"), response[:200]
    parsed = json.loads(body)
    assert set(parsed) == {"error", "status"} and b"Traceback" not in response
    return parsed


async def test_bad_requests_get_json_errors_and_the_broker_serves_on(
    start_broker: StartBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    paho: Callable[..., PahoClient],
) -> None:
    monkeypatch.setattr(http_server, "REQUEST_TIMEOUT_S", 0.5)
    broker, base = await start_http_broker(start_broker, tmp_path)
    api = base + "/api/v1"
    host, port = base.removeprefix("http://").rsplit(":", 1)
    auth = basic(ADMIN)
    reply = await request(api + "/nothing", headers=auth)
    assert (reply.status, reply.json()["status"]) == (404, 404)
    reply = await request(api + "/clients", "PUT", auth, b"{}")
    assert reply.status == 405 and reply.headers["allow"] == "GET"
    assert (await request(api + "/retained?limit=zero", headers=auth)).status == 400
    assert (await request(api + "/retained?limit=100000", headers=auth)).status == 400
    assert (await request(api + "/retained", "DELETE", auth)).json()[
        "error"
    ] == "query parameter 'topic' is required"
    assert (await request(api + "/sessions/%ff", "DELETE", auth)).status == 400
    # Malformed HTTP, a head over the size limit, a body over the limit, a request that never ends.
    assert body_of(await raw_exchange(host, int(port), b"NOT HTTP AT ALL\r\n\r\n"))["status"] == 400
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * (http_server.MAX_HEAD_BYTES + 10) + b"\r\n\r\n"
    assert body_of(await raw_exchange(host, int(port), huge))["status"] == 431
    big_body = b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"
    assert body_of(await raw_exchange(host, int(port), big_body))["status"] == 413
    started = trio.current_time()
    slow = await raw_exchange(host, int(port), b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line
    assert body_of(slow)["status"] == 408 and trio.current_time() - started < 5
    # An idle keep-alive connection is closed after the timeout too.
    assert await raw_exchange(host, int(port), b"") == b""
    # Keep-alive: two requests on one connection.
    two = (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /api/v1/broker HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answers = await raw_exchange(host, int(port), two)
    assert answers.count(b"HTTP/1.1 200 OK") == 1 and answers.count(b"HTTP/1.1 401 Unauthorized") == 1
    # Still serving, both HTTP and MQTT.
    assert (await request(api + "/broker", headers=auth)).status == 200
    client = paho("after", MQTT_5)
    assert (await client.connect(*broker.address)).reason_code == 0
    await client.disconnect()


async def test_connections_past_the_cap_are_closed(
    start_broker: StartBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_server, "MAX_HTTP_CONNECTIONS", 2)
    _, base = await start_http_broker(start_broker, tmp_path)
    host, port = base.removeprefix("http://").rsplit(":", 1)
    idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(2)]
    await trio.sleep(0.2)
    third = await trio.open_tcp_stream(host, int(port))
    with trio.fail_after(5):
        assert await third.receive_some(100) == b""  # closed at once
    for stream in [*idle, third]:
        await stream.aclose()
    assert (await request(base + "/api/v1/broker", headers=basic(VIEWER))).status == 200


def test_label_values_are_escaped() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'

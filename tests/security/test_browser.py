"""MQTT over WebSocket from a real browser: headless Chromium runs MQTT.js (npm ``mqtt``) against edgebus."""

from __future__ import annotations

import secrets
from functools import partial
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import trio

from edgebus.protocol import Publish
from tests.chromium import CHROMIUM, headless_chromium
from tests.clients import MQTT_5, RawClient, Sub
from tests.conftest import StartBroker

#: Installed by scripts/test (npm install --prefix .cache/web mqtt@5).
MQTT_JS: Final = Path(__file__).parents[2] / ".cache/web/node_modules/mqtt/dist/mqtt.min.js"
#: Chromium starts, loads the page, connects and echoes within this bound (about 1 s in practice).
BROWSER_WAIT_S: Final = 20.0

#: The page: MQTT.js connects to the "ws" URL over MQTT 5, subscribes to browser/echo, publishes the token
#: there and, once it comes back, publishes "ok:<token>" to browser/result. Errors are reported to the
#: test's HTTP server (/report) so that a failure says what the browser saw.
PAGE: Final = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgebus browser test</title>
<script src="/mqtt.min.js"></script></head>
<body><script>
const params = new URLSearchParams(location.search);
const token = params.get("token");
const report = (text) => fetch("/report?" + new URLSearchParams({text: String(text)}));
try {
  const client = mqtt.connect(params.get("ws"), {
    protocolVersion: 5, clientId: "browser-" + token, reconnectPeriod: 0, connectTimeout: 10000,
  });
  client.on("connect", () => {
    report("connected");
    client.subscribe("browser/echo", {qos: 1}, (error, granted) => {
      if (error) { report("subscribe failed: " + error); return; }
      report("subscribed: " + JSON.stringify(granted));
      client.publish("browser/echo", token, {qos: 1});
    });
  });
  client.on("message", (topic, payload) => {
    if (topic === "browser/echo" && payload.toString() === token) {
      client.publish("browser/result", "ok:" + token, {qos: 1}, () => report("result published"));
    }
  });
  client.on("error", (error) => report("error: " + error));
  client.on("close", () => report("close"));
} catch (error) {
  report("exception: " + error);
}
</script></body></html>
"""


def http_response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class PageServer:
    """A minimal HTTP/1.1 server for the page and the MQTT.js bundle; one request per connection."""

    def __init__(self, bundle: bytes) -> None:
        self.bundle = bundle
        self.reports: list[str] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            request = b""
            # Chromium may open speculative connections that never send a request.
            with trio.move_on_after(BROWSER_WAIT_S):
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    request += data
            request_line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            target = urlsplit(request_line[1] if len(request_line) >= 2 else "")
            if target.path == "/page.html":
                response = http_response("200 OK", "text/html; charset=utf-8", PAGE)
            elif target.path == "/mqtt.min.js":
                response = http_response("200 OK", "text/javascript; charset=utf-8", self.bundle)
            elif target.path == "/report":
                self.reports.extend(parse_qs(target.query).get("text", []))
                response = http_response("204 No Content", "text/plain", b"")
            else:
                response = http_response("404 Not Found", "text/plain", b"not found")
            await stream.send_all(response)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()


async def test_mqtt_js_in_chromium_subscribes_and_publishes_over_websocket(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    """A browser client works end to end: MQTT.js offers the "mqtt" subprotocol [MQTT-6.0.0-3] which the
    server selects [MQTT-6.0.0-4], and both sides carry MQTT 5 packets in binary frames [MQTT-6.0.0-1].
    The browser subscribes and publishes over the WebSocket; a plain TCP subscriber sees the result."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (scripts/test installs the Debian package chromium)")
    if not MQTT_JS.exists():
        pytest.skip(f"{MQTT_JS} is missing (scripts/test installs it with npm)")
    broker = await start_broker(listeners=[{"type": "ws", "path": "/mqtt"}])
    assert broker.broker is not None
    ws_host, ws_port = broker.broker.listener_addresses[0][0]

    watcher = await RawClient.connect(*broker.address, protocol_level=MQTT_5)
    assert (await watcher.mqtt_connect("result-watcher")).reason_code == 0
    assert (await watcher.subscribe(Sub("browser/result", 0))).reason_codes == (0,)

    token = secrets.token_hex(8)
    server = PageServer(MQTT_JS.read_bytes())
    chromium_log = tmp_path / "chromium.log"
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        http_port = listeners[0].socket.getsockname()[1]
        query = urlencode({"ws": f"ws://{ws_host}:{ws_port}/mqtt", "token": token})
        page_url = f"http://127.0.0.1:{http_port}/page.html?{query}"
        try:
            async with headless_chromium(page_url, tmp_path / "chromium-profile", chromium_log):
                result: Publish | None = None
                with trio.move_on_after(BROWSER_WAIT_S):
                    while result is None:
                        packet = await watcher.receive_packet(timeout=BROWSER_WAIT_S)
                        if isinstance(packet, Publish) and packet.topic == "browser/result":
                            result = packet
        finally:
            nursery.cancel_scope.cancel()
    await watcher.aclose()

    tail = chromium_log.read_text(errors="replace")[-2000:]
    assert result is not None, f"no result within {BROWSER_WAIT_S} s; page reports {server.reports}; {tail}"
    assert result.payload == f"ok:{token}".encode(), server.reports

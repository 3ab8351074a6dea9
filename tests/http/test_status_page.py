"""The status page in headless Chromium, driven over the DevTools protocol: log in, see a client the test
connected appear, see a bridge's backlog grow while its Mosquitto upstream is down and shrink once it is
up; screenshots are saved under the test's tmp dir and copied to the git-ignored artifacts/ directory."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
import trio
from websockets.sync.client import ClientConnection, connect

from edgebus.config import BridgeConfig, BridgeTopic, ListenAddress
from tests.bridge.mosquitto_upstream import open_upstreams
from tests.chromium import CHROMIUM, headless_chromium
from tests.clients import MQTT_5, PahoClient, edgebus_only
from tests.conftest import StartBroker
from tests.http.helpers import VIEWER, write_auth_files
from tests.processes import REPO, free_port

pytestmark = edgebus_only("the status page is edgebus's")

ARTIFACTS: Final = REPO / "artifacts"
#: Chromium starts, and the page shows what the test waits for, within this (polling every 1.5 s).
PAGE_WAIT_S: Final = 20.0
BACKLOG: Final = 12


class DevTools:
    """A minimal Chrome DevTools Protocol client over the page's WebSocket (one call at a time, a thread)."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=PAGE_WAIT_S))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await trio.to_thread.run_sync(self._call, method, params)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        last: Any = None
        with trio.move_on_after(PAGE_WAIT_S):
            while not (last := await self.evaluate(expression)):  # noqa: ASYNC110 - polling the page
                await trio.sleep(0.2)
            return last
        status = await self.evaluate("document.getElementById('status').textContent")
        raise AssertionError(f"the page never showed {what} (last {last!r}, status {status!r})")

    async def screenshot(self, path: Path) -> Path:
        result = await self.call("Page.captureScreenshot", format="png")
        return await trio.to_thread.run_sync(_save_screenshot, path, base64.b64decode(result["data"]))


def _save_screenshot(path: Path, png: bytes) -> Path:
    """Into the test's tmp dir, and a copy into artifacts/ (git-ignored) that outlives it."""
    path.write_bytes(png)
    ARTIFACTS.mkdir(exist_ok=True)
    copy = ARTIFACTS / path.name
    shutil.copyfile(path, copy)
    print(f"status page screenshot: {copy}")
    return copy


def _page_socket_url(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
            targets = json.load(response)
    except OSError:
        return None
    pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
    return str(pages[0]["webSocketDebuggerUrl"]) if pages else None


BRIDGE_QUEUED: Final = "document.querySelector('#bridges tr[data-bridge=\"cloud\"] td.queued')?.textContent"
BRIDGE_STATE: Final = (
    "document.querySelector('#bridges tr[data-bridge=\"cloud\"] td:nth-child(2)')?.textContent"
)


async def test_status_page_in_chromium(
    start_broker: StartBroker, tmp_path: Path, paho: Callable[..., PahoClient]
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (scripts/test installs the Debian package chromium)")
    async with open_upstreams(tmp_path) as start_upstream:
        upstream = await start_upstream()
        await upstream.stop()  # down from the start: the bridge's outbox fills
        passwords, _ = write_auth_files(tmp_path)
        bridge = BridgeConfig(
            name="cloud",
            kind="mqtt",
            addresses=(ListenAddress("127.0.0.1", upstream.port),),
            topics=(BridgeTopic("sensors/#", direction="out", qos=1),),
            backoff_initial=0.1,
            backoff_max=0.3,
        )
        broker = await start_broker(
            security={"password_file": str(passwords)},
            listeners=[{"type": "http", "credentials_over_http": True}],
            bridges=(bridge,),
        )
        assert broker.broker is not None
        host, http_port = broker.broker.listener_addresses[0][0]
        debug_port = free_port()
        page_url = f"http://{host}:{http_port}/"
        profile = tmp_path / "chromium-profile"
        window = ("--window-size=1280,900", f"--remote-debugging-port={debug_port}")
        async with headless_chromium(page_url, profile, tmp_path / "chromium.log", *window):
            socket: ClientConnection | None = None
            try:
                with trio.fail_after(PAGE_WAIT_S):
                    while (url := await trio.to_thread.run_sync(_page_socket_url, debug_port)) is None:  # noqa: ASYNC110
                        await trio.sleep(0.2)
                socket = await trio.to_thread.run_sync(lambda: connect(url, max_size=None, open_timeout=10))
                page = DevTools(socket)
                # Log in through the form, as an operator would.
                await page.wait_for("document.getElementById('login-form') !== null", "the login form")
                user, password = VIEWER
                await page.evaluate(
                    f"document.getElementById('user').value = {json.dumps(user)};"
                    f"document.getElementById('password').value = {json.dumps(password)};"
                    "document.getElementById('login-button').click(); true"
                )
                live = "document.getElementById('status').textContent === 'live'"
                await page.wait_for(live, "the dashboard")

                device = paho("device-on-the-page", MQTT_5)
                await device.connect(*broker.address)
                await page.wait_for(
                    "document.querySelector('#clients tr[data-client-id=\"device-on-the-page\"]') !== null",
                    "the connected client",
                )
                for index in range(BACKLOG):
                    await device.publish(f"sensors/t{index}", b"21.5", qos=1)
                await page.wait_for(f"{BRIDGE_QUEUED} === '{BACKLOG}'", f"a backlog of {BACKLOG}")
                assert await page.evaluate(BRIDGE_STATE) in ("disconnected", "connecting")
                await page.screenshot(tmp_path / "status-page-backlog.png")

                await upstream.start()
                await page.wait_for(f"{BRIDGE_QUEUED} === '0'", "the backlog drained")
                await page.wait_for(f"{BRIDGE_STATE} === 'connected'", "the bridge connected")
                shot = await page.screenshot(tmp_path / "status-page.png")
                assert shot.stat().st_size > 10_000
                await device.disconnect()
            finally:
                with trio.CancelScope(shield=True):
                    if socket is not None:
                        await trio.to_thread.run_sync(socket.close)


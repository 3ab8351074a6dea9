"""A real HTTP client for the HTTP listener's tests (urllib in a thread), and the files it logs in with."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from edgebus.auth import set_password

#: Users of the test password file (PBKDF2 with few rounds: the tests check the logic, not the cost).
ADMIN: Final = ("admin", "admin-secret")
VIEWER: Final = ("viewer", "viewer-secret")
TOKEN: Final = "prometheus-token-0123456789"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def write_auth_files(directory: Path) -> tuple[Path, Path]:
    """A password file with ADMIN and VIEWER, and a token file with TOKEN for the user "prometheus"."""
    passwords = directory / "passwd"
    for user, password in (ADMIN, VIEWER):
        set_password(passwords, user, password, 1000)
    tokens = directory / "tokens"
    tokens.write_text(f"# bearer tokens\nprometheus:{TOKEN}\n")
    return passwords, tokens


def basic(user_password: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(":".join(user_password).encode()).decode()}


async def request(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One HTTP request with urllib (in a thread); 4xx/5xx come back as a Reply, not an exception.
    ``context``: how an https server is verified."""

    def call() -> Reply:
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30, context=context) as response:
                return Reply(response.status, _headers(response.headers), response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, _headers(error.headers), error.read())

    return await trio.to_thread.run_sync(call)


def _headers(message: Any) -> dict[str, str]:
    """Header names in lower case; repeated headers joined with ", " (WWW-Authenticate comes twice)."""
    joined: dict[str, str] = {}
    for name, value in message.items():
        key = name.lower()
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    return joined

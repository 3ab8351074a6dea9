"""Who is asking: HTTP Basic against the broker's password file, bearer tokens from the listener's token
file, or anonymous where the listener allows it; and what they may do (read, or act as an admin).
Failed attempts are answered after the same growing delay as refused MQTT CONNECTs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from edgebus.auth import Authenticator, FailureTracker, NeedsHash, Verdict
from edgebus.config import ListenerConfig, SecurityConfig

log = logging.getLogger("edgebus.http")

#: Password hashes verified at once in worker threads (PBKDF2 takes ~50-100 ms each).
HASHING_THREADS = 1
REALM = "edgebus"


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    admin: bool


@dataclass(frozen=True, slots=True)
class Refusal:
    """401: no or bad credentials; ``message`` says which, without telling a guesser more. 403 where no
    credentials are taken at all (plain http without credentials_over_http)."""

    message: str
    status: int = 401


def read_token_file(path: str) -> dict[bytes, str]:
    """``NAME:TOKEN`` lines -> {sha256(token): name}. Blank lines and '#' comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokenFileError(f"{path}: cannot read token file: {error}") from None
    tokens: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, token = line.partition(":")
        if not colon or not name or len(token) < 16:
            raise TokenFileError(
                f"{path}:{number}: expected NAME:TOKEN with a token of 16 characters or more"
            )
        tokens[hashlib.sha256(token.encode()).digest()] = name
    return tokens


class HttpAuth:
    """The credentials check of one http / https listener. ``passwords`` returns the password file's
    entries as the broker last read them (SIGHUP rereads it), None without a password file."""

    def __init__(
        self,
        listener: ListenerConfig,
        security: SecurityConfig,
        passwords: Callable[[], dict[str, str] | None],
    ) -> None:
        self.listener = listener
        self.admins = frozenset(listener.admins)
        # Passwords and tokens alike are secrets a listener on the network must not take in clear text.
        self.credentials_allowed = listener.type == "https" or listener.credentials_over_http
        self._passwords = passwords
        self._authenticator = Authenticator(False, None)
        self._failures = FailureTracker(security.auth_failure_delay, security.auth_failure_delay_max)
        self._limiter = trio.CapacityLimiter(HASHING_THREADS)
        self.failures = 0
        self.tokens: dict[bytes, str] = self.read_tokens() or {}

    def read_tokens(self) -> dict[bytes, str] | None:
        """The token file's tokens (None without one); raises TokenFileError."""
        return read_token_file(self.listener.token_file) if self.listener.token_file else None

    def challenge(self) -> list[tuple[str, str]]:
        """The WWW-Authenticate headers of a 401: the schemes this listener accepts."""
        schemes = [f'Basic realm="{REALM}", charset="UTF-8"', f'Bearer realm="{REALM}"']
        return [("www-authenticate", scheme) for scheme in schemes]

    async def authenticate(self, authorization: str | None, remote: str) -> Principal | Refusal:
        if authorization is None:
            if self.listener.allow_anonymous:
                return Principal("anonymous", admin=False)
            if not self.credentials_allowed:
                return Refusal("this listener takes no credentials (plain http): use https", 403)
            return Refusal("authentication required")
        if not self.credentials_allowed:
            # Not even checked: a password or token sent in clear text must not be confirmed either.
            return Refusal("credentials need https (or credentials_over_http on a loopback listener)", 403)
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        name: str | None = None
        if scheme == "bearer":
            name = self.tokens.get(hashlib.sha256(credentials.strip().encode()).digest())
        elif scheme == "basic":
            name = await self._check_basic(credentials.strip())
        if name is None:
            return await self._refuse(remote, "bad credentials")
        self._failures.succeeded(_host(remote))
        return Principal(name, admin=name in self.admins)

    async def _check_basic(self, credentials: str) -> str | None:
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return None
        username, colon, password = decoded.partition(b":")
        passwords = self._passwords()
        if not colon or not username or passwords is None:
            return None
        try:
            user = username.decode()
        except UnicodeDecodeError:
            return None
        auth = self._authenticator
        auth.passwords = passwords
        outcome = auth.check(user, password, None)
        if isinstance(outcome, NeedsHash):
            if not await trio.to_thread.run_sync(auth.verify, outcome, limiter=self._limiter):
                return None
            auth.remember(outcome)
            return user
        return user if outcome is Verdict.ACCEPT else None

    async def _refuse(self, remote: str, message: str) -> Refusal:
        self.failures += 1
        delay = self._failures.failed(_host(remote), trio.current_time())
        log.info("HTTP %s: %s; answering in %.1f s", remote, message, delay)
        if delay > 0:
            await trio.sleep(delay)  # slows a guesser down; only this connection waits
        return Refusal(message)


def _host(remote: str) -> str:
    return remote.rpartition(":")[0]

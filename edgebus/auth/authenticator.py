"""The decision at CONNECT (anonymous, password file, certificate identity) and the delay after failures."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from edgebus.auth.passwords import verify_password

__all__ = ["VERIFIED_CACHE_ENTRIES", "Authenticator", "FailureTracker", "NeedsHash", "Verdict"]

#: Most successful verifications remembered (so a reconnecting fleet costs one hash per device).
VERIFIED_CACHE_ENTRIES = 4096


class Verdict(enum.Enum):
    """The outcome of authentication; the broker maps it to a CONNACK code."""

    ACCEPT = 0
    BAD_CREDENTIALS = 1  # v5 0x86 Bad User Name or Password; 3.1.1 0x05
    NOT_AUTHORIZED = 2  # v5 0x87 Not authorized (anonymous refused, no certificate); 3.1.1 0x05


@dataclass(frozen=True, slots=True)
class NeedsHash:
    """Authentication that needs a password hash computed: run `Authenticator.verify` in a thread."""

    username: str
    password: bytes
    encoded: str


class Authenticator:
    """The CONNECT decision: anonymous access, the password file, certificate identities, and a cache of
    successful verifications keyed by (user, stored hash, keyed digest of the password tried)."""

    def __init__(self, allow_anonymous: bool, passwords: dict[str, str] | None) -> None:
        self.allow_anonymous = allow_anonymous
        self.passwords = passwords
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def check(
        self, username: str | None, password: bytes | None, identity: str | None
    ) -> Verdict | NeedsHash:
        """Decide without hashing if possible. ``identity`` is the certificate's name on a listener with
        use_identity_as_username ("" when the client sent no certificate), else None."""
        if identity is not None:
            # The certificate names the client; the password is not checked (as Mosquitto does).
            return Verdict.ACCEPT if identity else Verdict.NOT_AUTHORIZED
        if username is None:
            return Verdict.ACCEPT if self.allow_anonymous else Verdict.NOT_AUTHORIZED
        if self.passwords is None:
            # No password file: a user name is taken as given, and only where anonymous access is allowed.
            return Verdict.ACCEPT if self.allow_anonymous else Verdict.NOT_AUTHORIZED
        encoded = self.passwords.get(username)
        if encoded is None or password is None:
            return Verdict.BAD_CREDENTIALS
        remembered = self._verified.get((username, encoded))
        if remembered is not None and hmac.compare_digest(remembered, self._digest(password)):
            self._verified.move_to_end((username, encoded))
            return Verdict.ACCEPT
        return NeedsHash(username, password, encoded)

    def _digest(self, password: bytes) -> bytes:
        return hmac.new(self._cache_key, password, hashlib.sha256).digest()

    def remember(self, attempt: NeedsHash) -> None:
        """Record a successful verification (call from the event loop after `verify` returned True)."""
        self._verified[(attempt.username, attempt.encoded)] = self._digest(attempt.password)
        self._verified.move_to_end((attempt.username, attempt.encoded))
        while len(self._verified) > VERIFIED_CACHE_ENTRIES:
            self._verified.popitem(last=False)

    @staticmethod
    def verify(attempt: NeedsHash) -> bool:
        """The slow part, for a worker thread."""
        return verify_password(attempt.password, attempt.encoded)


class FailureTracker:
    """Recent authentication failures per remote host, for delaying the next refusal: the first waits
    ``base_s``, each further one twice as long up to ``max_s``. A host is forgotten after ``forget_s``
    without failures or after a success; at most ``max_hosts`` are tracked (the oldest go first)."""

    def __init__(self, base_s: float, max_s: float, forget_s: float = 300.0, max_hosts: int = 10_000) -> None:
        self.base_s = base_s
        self.max_s = max(max_s, base_s)
        self.forget_s = forget_s
        self.max_hosts = max_hosts
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failed(self, host: str, now: float) -> float:
        """Record a failure; returns how long to delay its refusal, in seconds."""
        count, last = self._failures.pop(host, (0, now))
        if now - last > self.forget_s:
            count = 0
        count += 1
        self._failures[host] = (count, now)
        while len(self._failures) > self.max_hosts:
            self._failures.popitem(last=False)
        if self.base_s <= 0:
            return 0.0
        return float(min(self.max_s, self.base_s * 2 ** min(count - 1, 32)))

    def succeeded(self, host: str) -> None:
        self._failures.pop(host, None)

    def __len__(self) -> int:
        return len(self._failures)

"""Who may connect and what they may do: Mosquitto-format password and ACL files, pure logic (no I/O loop)."""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import secrets
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from edgebus.core.topics import (
    LEVEL_SEPARATOR,
    MULTI_LEVEL_WILDCARD,
    SINGLE_LEVEL_WILDCARD,
    is_valid_topic_filter,
    topic_matches,
)

__all__ = [
    "PBKDF2_ITERATIONS",
    "Acl",
    "AclError",
    "Authenticator",
    "FailureTracker",
    "PasswordFileError",
    "Verdict",
    "hash_password",
    "parse_acl",
    "parse_password_file",
    "read_acl_file",
    "read_password_file",
    "set_password",
    "verify_password",
]

#: PBKDF2-SHA512 rounds for hashes that `edgebus passwd` writes. mosquitto_passwd 2.0 writes 101; more
#: rounds cost a guesser more, and a verification (~50-100 ms here) runs off the event loop.
PBKDF2_ITERATIONS = 100_000
#: Salt length of mosquitto_passwd's `$6$` and `$7$` hashes, in bytes.
SALT_BYTES = 12
#: Digest length of a `$7$` hash (the whole SHA-512 output), in bytes.
PBKDF2_DIGEST_BYTES = 64
#: Most successful verifications remembered (so a reconnecting fleet costs one hash per device).
VERIFIED_CACHE_ENTRIES = 4096


class PasswordFileError(ValueError):
    """A password file that cannot be used; the message names the file and line."""


class AclError(ValueError):
    """An ACL file that cannot be used; the message names the file and line."""


# --- password file ---------------------------------------------------------------------------------------


def parse_password_file(text: str, source: str = "<password file>") -> dict[str, str]:
    """``user:hash`` lines as written by mosquitto_passwd -> {user: hash}. Blank lines and lines starting
    with '#' are skipped, as Mosquitto does; a later line for the same user wins."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        username, colon, encoded = line.partition(":")
        if not colon or not username:
            raise PasswordFileError(f"{source}:{number}: expected USER:HASH")
        if not _is_supported_hash(encoded):
            raise PasswordFileError(
                f"{source}:{number}: user {username!r}: unsupported hash (expected $7$, $6$ or $argon2id$)"
            )
        entries[username] = encoded
    return entries


def read_password_file(path: str | os.PathLike[str]) -> dict[str, str]:
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PasswordFileError(f"{source}: cannot read password file: {error}") from None
    return parse_password_file(text, source)


def _is_supported_hash(encoded: str) -> bool:
    if encoded.startswith("$argon2id$"):
        return True
    parts = encoded.split("$")
    try:
        if encoded.startswith("$7$") and len(parts) == 5:
            return (
                int(parts[2]) > 0
                and bool(base64.b64decode(parts[3], validate=True))
                and bool(base64.b64decode(parts[4], validate=True))
            )
        if encoded.startswith("$6$") and len(parts) == 4:
            return bool(base64.b64decode(parts[2], validate=True)) and bool(
                base64.b64decode(parts[3], validate=True)
            )
    except ValueError:
        return False
    return False


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """A mosquitto_passwd-compatible ``$7$ITERATIONS$SALT$HASH`` (PBKDF2-HMAC-SHA512)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, PBKDF2_DIGEST_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: bytes, encoded: str) -> bool:
    """Whether ``password`` matches the stored hash. Blocking and deliberately slow: call it in a thread."""
    parts = encoded.split("$")
    if encoded.startswith("$7$"):
        iterations, salt, expected = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
        actual = hashlib.pbkdf2_hmac("sha512", password, salt, iterations, len(expected))
        return hmac.compare_digest(actual, expected)
    if encoded.startswith("$6$"):
        # Mosquitto 1.x: SHA-512 over the password followed by the salt.
        salt, expected = base64.b64decode(parts[2]), base64.b64decode(parts[3])
        return hmac.compare_digest(hashlib.sha512(password + salt).digest(), expected)
    if encoded.startswith("$argon2id$"):
        try:
            from argon2 import PasswordHasher
            from argon2.exceptions import Argon2Error
        except ImportError:  # pragma: no cover - argon2-cffi is optional
            return False
        try:
            return bool(PasswordHasher().verify(encoded, password))
        except Argon2Error:
            return False
    return False


def set_password(path: str | os.PathLike[str], username: str, password: str, iterations: int) -> bool:
    """Create or update ``username`` in the password file at ``path`` (created with mode 0600), keeping the
    other lines as they are. The file is replaced atomically. Returns True if the user was new."""
    if not username or ":" in username or any(c in username for c in "\r\n"):
        raise PasswordFileError(f"invalid user name {username!r}: it must be non-empty and contain no ':'")
    target = Path(path)
    try:
        lines = target.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    entry = f"{username}:{hash_password(password, iterations)}"
    new = True
    for index, line in enumerate(lines):
        if line.partition(":")[0] == username and not line.startswith("#"):
            lines[index] = entry
            new = False
    if new:
        lines.append(entry)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o600
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return new


# --- ACL file --------------------------------------------------------------------------------------------


class Access(enum.IntFlag):
    """What an ACL line grants; a `deny` line grants nothing and overrides grants (Mosquitto)."""

    DENY = 0
    READ = 1
    WRITE = 2
    READWRITE = 3


_ACCESS_WORDS = {
    "read": Access.READ,
    "write": Access.WRITE,
    "readwrite": Access.READWRITE,
    "deny": Access.DENY,
}


@dataclass(frozen=True, slots=True)
class AclRule:
    access: Access
    topic_filter: str

    def substituted(self, client_id: str, username: str | None) -> str:
        # `pattern` lines: %c is the client id and %u the user name (Mosquitto's acl_file).
        text = self.topic_filter.replace("%c", client_id)
        return text.replace("%u", username) if username is not None else text


@dataclass(frozen=True, slots=True)
class _RuleSet:
    """Rules of one kind in Mosquitto's evaluation order: every `deny` first, then the grants."""

    denies: tuple[AclRule, ...]
    grants: tuple[AclRule, ...]

    @classmethod
    def of(cls, rules: list[AclRule]) -> _RuleSet:
        return cls(
            tuple(r for r in rules if r.access == Access.DENY),
            tuple(r for r in rules if r.access != Access.DENY),
        )


class Acl:
    """A Mosquitto ACL file.

    As in Mosquitto: `topic` lines before any `user` line apply to anonymous clients; the ones after
    ``user NAME`` to that user; `pattern` lines (with %c and %u) to every client, wherever they stand.
    A client's own rules are consulted first, then the patterns; within each, a matching `deny` refuses,
    a matching grant with the access asked for allows, and nothing matching refuses.
    """

    def __init__(
        self, anonymous: list[AclRule], users: dict[str, list[AclRule]], patterns: list[AclRule]
    ) -> None:
        self._anonymous = _RuleSet.of(anonymous)
        self._users = {name: _RuleSet.of(rules) for name, rules in users.items()}
        self._patterns = _RuleSet.of(patterns)

    def _rule_sets(self, username: str | None) -> _RuleSet | None:
        return self._anonymous if username is None else self._users.get(username)

    def allows(self, username: str | None, client_id: str, topic: str, access: Access) -> bool:
        """Whether the client may publish (WRITE) or receive (READ) a message on the topic name."""
        own = self._rule_sets(username)
        if own is not None:
            for rule in own.denies:
                if topic_matches(rule.topic_filter, topic):
                    return False
            for rule in own.grants:
                if rule.access & access and topic_matches(rule.topic_filter, topic):
                    return True
        patterns = self._patterns
        if not patterns.denies and not patterns.grants:
            return False
        if not _safe_for_patterns(username, client_id):
            return False
        for rule in patterns.denies:
            if _pattern_applies(rule, username) and topic_matches(
                rule.substituted(client_id, username), topic
            ):
                return False
        for rule in patterns.grants:
            if (
                rule.access & access
                and _pattern_applies(rule, username)
                and topic_matches(rule.substituted(client_id, username), topic)
            ):
                return True
        return False

    def allows_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        """Whether a SUBSCRIBE to the (non-shared part of the) filter is granted.

        Mosquitto grants every subscription and filters each message; edgebus refuses a subscription that
        a `deny` covers entirely, or that no read grant overlaps (it could never deliver anything), and
        still checks READ for each message delivered, so that a wildcard subscription only yields the
        topics the client may read.
        """
        own = self._rule_sets(username)
        if own is not None:
            for rule in own.denies:
                if _covers(rule.topic_filter, topic_filter):
                    return False
            for rule in own.grants:
                if rule.access & Access.READ and _overlaps(rule.topic_filter, topic_filter):
                    return True
        if not _safe_for_patterns(username, client_id):
            return False
        for rule in self._patterns.denies:
            if _pattern_applies(rule, username) and _covers(
                rule.substituted(client_id, username), topic_filter
            ):
                return False
        for rule in self._patterns.grants:
            if (
                rule.access & Access.READ
                and _pattern_applies(rule, username)
                and _overlaps(rule.substituted(client_id, username), topic_filter)
            ):
                return True
        return False


def _safe_for_patterns(username: str | None, client_id: str) -> bool:
    # Mosquitto refuses pattern access to a client whose id or user name holds a wildcard: substituted
    # into a pattern, "+" or "#" would widen it to other clients' topics.
    for name in (username or "", client_id):
        if SINGLE_LEVEL_WILDCARD in name or MULTI_LEVEL_WILDCARD in name:
            return False
    return True


def _pattern_applies(rule: AclRule, username: str | None) -> bool:
    # A pattern with %u does not apply to a client without a user name (Mosquitto).
    return username is not None or "%u" not in rule.topic_filter


def _starts_with_wildcard(levels: list[str]) -> bool:
    return levels[0] in (SINGLE_LEVEL_WILDCARD, MULTI_LEVEL_WILDCARD)


def _overlaps(first: str, second: str) -> bool:
    """Whether some topic name matches both filters."""
    a, b = first.split(LEVEL_SEPARATOR), second.split(LEVEL_SEPARATOR)
    # A filter that starts with a wildcard matches no topic starting with '$' [MQTT-4.7.2-1].
    if (a[0].startswith("$") and _starts_with_wildcard(b)) or (
        b[0].startswith("$") and _starts_with_wildcard(a)
    ):
        return False
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == MULTI_LEVEL_WILDCARD or y == MULTI_LEVEL_WILDCARD:
            return True  # '#' also matches the parent level [MQTT-4.7.1-2]
        if x is None or y is None:
            return False
        if x != y and SINGLE_LEVEL_WILDCARD not in (x, y):
            return False
    return True


def _covers(general: str, specific: str) -> bool:
    """Whether every topic name that ``specific`` matches is matched by ``general`` too."""
    g, s = general.split(LEVEL_SEPARATOR), specific.split(LEVEL_SEPARATOR)
    if _starts_with_wildcard(g) and s[0].startswith("$"):
        return False  # [MQTT-4.7.2-1]: the wildcard does not reach $-topics
    if _starts_with_wildcard(s) and g[0].startswith("$"):
        return False  # `specific` matches non-$ topics that `general` cannot
    for index, level in enumerate(g):
        if level == MULTI_LEVEL_WILDCARD:
            return True
        if index >= len(s):
            return False
        other = s[index]
        if other == MULTI_LEVEL_WILDCARD:
            return False  # `specific` reaches deeper than `general` (or the parent level)
        if level != SINGLE_LEVEL_WILDCARD and level != other:
            return False
    return len(g) == len(s)


def parse_acl(text: str, source: str = "<acl file>") -> Acl:
    """The rules of an ACL file in Mosquitto's syntax::

        # comment
        topic [read|write|readwrite|deny] FILTER     (before any `user` line: anonymous clients)
        user NAME
        topic [read|write|readwrite|deny] FILTER     (for NAME)
        pattern [read|write|readwrite|deny] FILTER   (every client; %c = client id, %u = user name)

    The access word may be left out (readwrite); FILTER may contain spaces.
    """
    anonymous: list[AclRule] = []
    users: dict[str, list[AclRule]] = {}
    patterns: list[AclRule] = []
    current = anonymous
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "user":
            if not rest:
                raise AclError(f"{source}:{number}: `user` needs a user name")
            current = users.setdefault(rest, [])
            continue
        if keyword not in ("topic", "pattern"):
            raise AclError(
                f"{source}:{number}: unknown keyword {keyword!r} (expected user, topic or pattern)"
            )
        word, _, topic_filter = rest.partition(" ")
        topic_filter = topic_filter.strip()
        if not topic_filter:
            # `topic FILTER`: no access word means readwrite.
            access, topic_filter = Access.READWRITE, word
        elif word in _ACCESS_WORDS:
            access = _ACCESS_WORDS[word]
        else:
            raise AclError(
                f"{source}:{number}: unknown access {word!r} (expected read, write, readwrite or deny)"
            )
        if not topic_filter or not is_valid_topic_filter(topic_filter):
            raise AclError(f"{source}:{number}: invalid topic filter {topic_filter!r}")
        rule = AclRule(access, topic_filter)
        (patterns if keyword == "pattern" else current).append(rule)
    return Acl(anonymous, users, patterns)


def read_acl_file(path: str | os.PathLike[str]) -> Acl:
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AclError(f"{source}: cannot read ACL file: {error}") from None
    return parse_acl(text, source)


# --- the decision at CONNECT -----------------------------------------------------------------------------


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

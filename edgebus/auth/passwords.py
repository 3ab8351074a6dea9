"""Password files in mosquitto_passwd's formats: reading and updating them, hashing and verifying."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

__all__ = [
    "PBKDF2_DIGEST_BYTES",
    "PBKDF2_ITERATIONS",
    "SALT_BYTES",
    "PasswordFileError",
    "hash_password",
    "parse_password_file",
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


class PasswordFileError(ValueError):
    """A password file that cannot be used; the message names the file and line."""


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

"""Who may connect and what they may do: Mosquitto-format password and ACL files, pure logic (no I/O loop).

The package, each module importing only those before it: ``passwords`` (password files, hashing and
verifying), ``acl`` (ACL files and their per-topic decisions), ``authenticator`` (the decision at CONNECT
and the delay after failures). Callers import from here.
"""

from __future__ import annotations

from edgebus.auth.acl import Access, Acl, AclError, AclRule, parse_acl, read_acl_file
from edgebus.auth.authenticator import Authenticator, FailureTracker, NeedsHash, Verdict
from edgebus.auth.passwords import (
    PBKDF2_ITERATIONS,
    PasswordFileError,
    hash_password,
    parse_password_file,
    read_password_file,
    set_password,
    verify_password,
)

__all__ = [
    "PBKDF2_ITERATIONS",
    "Access",
    "Acl",
    "AclError",
    "AclRule",
    "Authenticator",
    "FailureTracker",
    "NeedsHash",
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

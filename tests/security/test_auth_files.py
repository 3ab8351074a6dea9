"""Password files and ACL files in Mosquitto's formats (pure logic), checked against the real
mosquitto_passwd and against Mosquitto's documented ACL rules (mosquitto.conf(5), "acl_file")."""

from __future__ import annotations

import base64
import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgebus.auth import (
    Access,
    Acl,
    AclError,
    Authenticator,
    FailureTracker,
    NeedsHash,
    PasswordFileError,
    Verdict,
    hash_password,
    parse_acl,
    parse_password_file,
    read_password_file,
    set_password,
    verify_password,
)
from edgebus.core.limits import RateQuota

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def test_file_made_by_real_mosquitto_passwd_verifies(tmp_path: Path) -> None:
    """Mosquitto: `mosquitto_passwd -c -b FILE USER PASS` writes `USER:$7$101$SALT$HASH` (PBKDF2-SHA512);
    edgebus reads such a file as it is."""
    path = tmp_path / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(path), "alice", "s3cret"], check=True)
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), "bob", "hunter 2"], check=True)
    entries = read_password_file(path)
    assert set(entries) == {"alice", "bob"}
    assert entries["alice"].startswith("$7$")
    assert verify_password(b"s3cret", entries["alice"])
    assert verify_password(b"hunter 2", entries["bob"])
    assert not verify_password(b"s3cret ", entries["alice"])
    assert not verify_password(b"hunter 2", entries["alice"])


def test_hash_written_by_edgebus_is_mosquitto_format() -> None:
    """`$7$ITERATIONS$base64(salt)$base64(PBKDF2-HMAC-SHA512(password, salt, ITERATIONS, 64))`."""
    encoded = hash_password("pw", iterations=1000, salt=b"0123456789ab")
    _, kind, iterations, salt, digest = encoded.split("$")
    assert (kind, iterations, base64.b64decode(salt)) == ("7", "1000", b"0123456789ab")
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac("sha512", b"pw", b"0123456789ab", 1000, 64)
    assert verify_password(b"pw", encoded)
    assert not verify_password(b"pW", encoded)


def test_mosquitto_1x_sha512_hashes_are_read() -> None:
    """Mosquitto 1.x wrote `$6$SALT$base64(SHA-512(password + salt))`."""
    salt = b"saltsaltsalt"
    digest = hashlib.sha512(b"pw" + salt).digest()
    encoded = f"$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert parse_password_file(f"u:{encoded}\n") == {"u": encoded}
    assert verify_password(b"pw", encoded)
    assert not verify_password(b"px", encoded)


def test_argon2id_hashes_are_read() -> None:
    """Mosquitto 2.1's `$argon2id$...` (PHC string) lines, through argon2-cffi."""
    argon2 = pytest.importorskip("argon2")
    encoded = argon2.PasswordHasher(time_cost=1, memory_cost=1024).hash("pw")
    assert parse_password_file(f"u:{encoded}\n") == {"u": encoded}
    assert verify_password(b"pw", encoded)
    assert not verify_password(b"px", encoded)


def test_password_file_errors_name_file_and_line() -> None:
    with pytest.raises(PasswordFileError, match=r"pw:3: expected USER:HASH"):
        parse_password_file("# comment\n\nno-colon\n", "pw")
    with pytest.raises(PasswordFileError, match=r"pw:1: user 'u': unsupported hash"):
        parse_password_file("u:plaintext\n", "pw")


def test_set_password_creates_and_updates_keeping_other_lines(tmp_path: Path) -> None:
    """Like `mosquitto_passwd -b`: create the file (mode 0600), add a user, replace one's hash."""
    path = tmp_path / "passwd"
    assert set_password(path, "alice", "one", iterations=1000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set_password(path, "bob", "two", iterations=1000)
    assert not set_password(path, "alice", "three", iterations=1000)
    entries = read_password_file(path)
    assert list(entries) == ["alice", "bob"]
    assert verify_password(b"three", entries["alice"])
    assert verify_password(b"two", entries["bob"])
    with pytest.raises(PasswordFileError):
        set_password(path, "a:b", "x", iterations=1000)


def test_authenticator_decisions_and_cache() -> None:
    auth = Authenticator(allow_anonymous=False, passwords={"alice": hash_password("pw", iterations=1000)})
    assert auth.check(None, None, None) is Verdict.NOT_AUTHORIZED  # anonymous refused
    assert auth.check("mallory", b"pw", None) is Verdict.BAD_CREDENTIALS  # unknown user
    assert auth.check("alice", None, None) is Verdict.BAD_CREDENTIALS  # no password
    attempt = auth.check("alice", b"pw", None)
    assert isinstance(attempt, NeedsHash)
    assert Authenticator.verify(attempt)
    auth.remember(attempt)
    assert auth.check("alice", b"pw", None) is Verdict.ACCEPT  # remembered: no hashing
    assert isinstance(auth.check("alice", b"wrong", None), NeedsHash)  # a different password is hashed
    # A certificate identity replaces the password check (use_identity_as_username).
    assert auth.check(None, None, "device-7") is Verdict.ACCEPT
    assert auth.check(None, None, "") is Verdict.NOT_AUTHORIZED
    assert Authenticator(True, None).check("anyone", None, None) is Verdict.ACCEPT
    assert Authenticator(False, None).check("anyone", None, None) is Verdict.NOT_AUTHORIZED


def test_failure_delay_doubles_per_host_up_to_the_cap() -> None:
    tracker = FailureTracker(base_s=0.5, max_s=3.0, forget_s=60)
    assert [tracker.failed("10.0.0.1", t) for t in (0, 1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert tracker.failed("10.0.0.2", 5) == 0.5  # per host
    tracker.succeeded("10.0.0.1")
    assert tracker.failed("10.0.0.1", 6) == 0.5
    assert tracker.failed("10.0.0.1", 100) == 0.5  # forgotten after forget_s without failures
    small = FailureTracker(0.1, 1.0, max_hosts=3)
    for index in range(10):
        small.failed(f"h{index}", 0)
    assert len(small) == 3  # bounded memory


# --- ACL ---------------------------------------------------------------------------------------------------

ACL = """\
# Mosquitto acl_file syntax
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read $SYS/#
topic sensors/+/temp

user bob
topic write commands/#

pattern read devices/%c/in
pattern write devices/%u/out
pattern deny devices/%c/in/blocked
"""


@pytest.fixture
def acl() -> Acl:
    return parse_acl(ACL, "acl")


def test_topic_lines_before_any_user_apply_to_anonymous_clients(acl: Acl) -> None:
    """mosquitto.conf(5): "The first set of topics are applied to anonymous clients"."""
    assert acl.allows(None, "c1", "public/news", Access.READ)
    assert not acl.allows(None, "c1", "public/news", Access.WRITE)
    assert not acl.allows("alice", "c1", "public/news", Access.READ)  # not alice's
    assert not acl.allows(None, "c1", "alice/x", Access.READ)


def test_user_rules_and_deny_precedence(acl: Acl) -> None:
    """Mosquitto checks `deny` lines first: they win over any grant of the same user."""
    assert acl.allows("alice", "c", "alice/a/b", Access.WRITE)
    assert acl.allows("alice", "c", "alice", Access.READ)  # '#' includes the parent level [MQTT-4.7.1-2]
    assert not acl.allows("alice", "c", "alice/secret/key", Access.READ)
    assert acl.allows("alice", "c", "sensors/k/temp", Access.WRITE)  # no access word: readwrite
    assert not acl.allows("alice", "c", "sensors/k/humidity", Access.READ)
    assert acl.allows("bob", "c", "commands/x", Access.WRITE)
    assert not acl.allows("bob", "c", "commands/x", Access.READ)
    assert not acl.allows("carol", "c", "commands/x", Access.WRITE)  # no rules, no access


def test_sys_topics_need_a_rule_that_starts_with_dollar(acl: Acl) -> None:
    """A filter starting with a wildcard does not match `$SYS/...` [MQTT-4.7.2-1], in ACLs too."""
    wide = parse_acl("user root\ntopic read #\n")
    assert wide.allows("root", "c", "a/b", Access.READ)
    assert not wide.allows("root", "c", "$SYS/broker/uptime", Access.READ)
    assert acl.allows("alice", "c", "$SYS/broker/uptime", Access.READ)


def test_patterns_substitute_client_id_and_user_name(acl: Acl) -> None:
    """`pattern` lines apply to every client; %c is its client id, %u its user name (Mosquitto)."""
    assert acl.allows("bob", "dev1", "devices/dev1/in", Access.READ)
    assert not acl.allows("bob", "dev1", "devices/dev2/in", Access.READ)
    assert acl.allows("bob", "dev1", "devices/bob/out", Access.WRITE)
    assert acl.allows(None, "dev1", "devices/dev1/in", Access.READ)
    assert not acl.allows(None, "dev1", "devices/%u/out", Access.WRITE)  # %u needs a user name
    assert not acl.allows("bob", "dev1", "devices/dev1/in/blocked", Access.READ)


def test_wildcards_in_client_id_or_user_name_get_no_pattern_access(acl: Acl) -> None:
    """Mosquitto: "ACL denying access to client with dangerous client id" ('+' or '#')."""
    assert not acl.allows("bob", "+", "devices/+/in", Access.READ)
    assert not acl.allows("a#", "dev1", "devices/dev1/in", Access.READ)


def test_subscribe_is_refused_only_if_nothing_could_ever_be_delivered(acl: Acl) -> None:
    assert acl.allows_subscribe("alice", "c", "alice/#")
    assert acl.allows_subscribe("alice", "c", "#")  # overlaps alice/#: delivery filters per message
    assert acl.allows_subscribe("alice", "c", "sensors/#")
    assert not acl.allows_subscribe("alice", "c", "alice/secret/#")  # a deny covers it entirely
    assert not acl.allows_subscribe("alice", "c", "alice/secret/x/+")
    assert not acl.allows_subscribe("bob", "c", "commands/#")  # write only
    assert not acl.allows_subscribe("alice", "c", "other/#")
    assert acl.allows_subscribe("alice", "c", "$SYS/broker/+")
    assert not acl.allows_subscribe("bob", "c", "$SYS/#")
    sys_only = parse_acl("user root\ntopic read $SYS/#\n")
    assert sys_only.allows_subscribe("root", "c", "$SYS/#")
    assert not sys_only.allows_subscribe("root", "c", "+/broker/uptime")  # '+' misses $SYS [MQTT-4.7.2-1]
    assert not sys_only.allows_subscribe("root", "c", "#")
    assert not acl.allows_subscribe("carol", "dev9", "devices/dev1/in")
    assert acl.allows_subscribe("carol", "dev9", "devices/dev9/in")
    assert acl.allows_subscribe(None, "c", "public/+")


def test_acl_errors_name_file_and_line() -> None:
    with pytest.raises(AclError, match=r"acl:2: unknown access 'rw'"):
        parse_acl("user a\ntopic rw x/y\n", "acl")
    with pytest.raises(AclError, match=r"acl:1: unknown keyword 'topics'"):
        parse_acl("topics read x\n", "acl")
    with pytest.raises(AclError, match=r"acl:1: invalid topic filter 'a/#/b'"):
        parse_acl("topic read a/#/b\n", "acl")
    with pytest.raises(AclError, match=r"acl:1: `user` needs a user name"):
        parse_acl("user\n", "acl")
    assert parse_acl("topic read a topic with spaces\n").allows(None, "c", "a topic with spaces", Access.READ)


# --- rate quota --------------------------------------------------------------------------------------------


def test_rate_quota_allows_a_one_second_burst_then_paces() -> None:
    quota = RateQuota(message_rate=10, byte_rate=0, now=0.0)
    quota.messages = 10
    assert quota.pause(0.0, 100) == 0.0  # the burst
    quota.messages = 5
    assert quota.pause(0.0, 100) == pytest.approx(0.5)  # 5 over budget at 10/s
    quota.messages = 5
    assert quota.pause(1.0, 100) == 0.0  # refilled by 1 s minus the half second owed
    by_bytes = RateQuota(message_rate=0, byte_rate=1000, now=0.0)
    assert by_bytes.pause(0.0, 3000) == pytest.approx(2.0)

"""Mosquitto-syntax ACL files: `topic`, `user` and `pattern` lines, and the decisions they make per topic."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from edgebus.core.topics import (
    LEVEL_SEPARATOR,
    MULTI_LEVEL_WILDCARD,
    SINGLE_LEVEL_WILDCARD,
    is_valid_topic_filter,
    topic_matches,
)

__all__ = ["Access", "Acl", "AclError", "AclRule", "parse_acl", "read_acl_file"]


class AclError(ValueError):
    """An ACL file that cannot be used; the message names the file and line."""


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

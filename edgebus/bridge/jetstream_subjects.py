"""NATS subjects for the JetStream sink: filters covering the out rules, subject matching, consumer names."""

from __future__ import annotations

import hashlib
import re

from edgebus.bridge.rules import TopicMap, topic_to_subject
from edgebus.config import BridgeTopic

__all__ = ["consumer_name", "out_filters", "subject_matches"]

_CONSUMER_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def out_filters(topic_map: TopicMap) -> list[str]:
    """The subject filters that cover every subject the out rules can publish to (in rule order, no repeats).

    An out rule sends ``local_prefix + T`` to ``remote_prefix + subject(T)`` for each T matching its pattern.
    MQTT's '#' also matches the parent level ('a/#' matches 'a') where NATS's '>' needs one more token, so a
    pattern ending in '/#' yields the parent's filter too."""
    found: list[str] = []
    for rule in topic_map.out_rules:
        prefix = _remote_prefix(rule)
        patterns = [rule.pattern]
        if rule.pattern.endswith("/#"):
            patterns.append(rule.pattern[:-2])
        for pattern in patterns:
            subject_filter = prefix + _filter_to_subject(pattern)
            if subject_filter not in found:
                found.append(subject_filter)
    return found


def _remote_prefix(rule: BridgeTopic) -> str:
    """The rule's remote prefix as whole subject tokens (as TopicMap does for NATS)."""
    prefix = rule.remote_prefix
    if prefix and not prefix.endswith("."):
        prefix += "."
    return prefix


def _filter_to_subject(topic_filter: str) -> str:
    """An MQTT topic filter as a NATS subject filter: '+' -> '*', '#' -> '>', other levels as in a topic."""
    wildcards = {"+": "*", "#": ">"}
    return ".".join(wildcards.get(level) or topic_to_subject(level) for level in topic_filter.split("/"))


def subject_matches(subject_filter: str, subject: str) -> bool:
    """NATS subject matching: '*' is one token, a final '>' one or more."""
    wanted = subject_filter.split(".")
    tokens = subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)


def consumer_name(client_id: str) -> str:
    """A durable consumer name for ``client_id``: names cannot hold '.', '*', '>', whitespace or path
    separators, so anything but letters, digits, '_' and '-' becomes '_', and a changed name gets a short
    hash of the original so two client ids cannot share one consumer."""
    safe = _CONSUMER_NAME_UNSAFE.sub("_", client_id)
    if safe != client_id or not safe:
        safe = f"{safe}_{hashlib.sha256(client_id.encode()).hexdigest()[:8]}"
    return safe

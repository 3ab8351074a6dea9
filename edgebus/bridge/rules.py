"""A bridge's topic rules: which local topics go out under which remote name, which remote ones come in.

Pure functions and tables, no I/O. MQTT upstreams use topics as they are (``remote_prefix + T``);
NATS subjects use '.' between levels, so each MQTT level is one subject token, with the characters a
token cannot hold ('.', whitespace, '*', '>', and '%' itself) percent-encoded and an empty level
written ``%00``: the mapping is reversible, so a subject maps back to exactly one topic.

Kafka topics cannot hold '/', so for a kafka bridge a rule's ``remote_prefix`` names the Kafka topic, a
template that may use the MQTT topic's levels (``"telemetry-{1}"``: ``{1}`` is the first level of the local
topic, ``{topic}`` the whole topic; characters a Kafka topic cannot hold become '_'). The remote name of a
message is then ``<kafka topic>/<local MQTT topic>`` (the sink splits it at the first '/'); in rules match
the Kafka topic exactly and the MQTT topic the record carries against their pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from edgebus.config import BridgeConfig, BridgeTopic
from edgebus.core.topics import topic_matches

__all__ = [
    "OutRoute",
    "TopicMap",
    "expand_template",
    "kafka_topic_name",
    "subject_to_topic",
    "topic_to_subject",
]

#: Most local topics whose out route is remembered (topics on a gateway repeat; the rules are few).
ROUTE_CACHE_ENTRIES = 4096

_ESCAPED = {"%": "%25", ".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09", "\r": "%0D", "\n": "%0A"}
_EMPTY_TOKEN = "%00"


def _encode_level(level: str) -> str:
    if not level:
        return _EMPTY_TOKEN
    if any(ch in _ESCAPED for ch in level):
        return "".join(_ESCAPED.get(ch, ch) for ch in level)
    return level


def topic_to_subject(topic: str) -> str:
    """An MQTT topic name as NATS subject tokens ('a/b.c/' -> 'a.b%2Ec.%00')."""
    return ".".join(_encode_level(level) for level in topic.split("/"))


def subject_to_topic(subject: str) -> str:
    """The inverse of `topic_to_subject`."""
    return "/".join("" if token == _EMPTY_TOKEN else unquote(token) for token in subject.split("."))


_PLACEHOLDER = re.compile(r"\{(topic|[1-9][0-9]*)\}")
_NOT_IN_KAFKA_NAME = re.compile(r"[^A-Za-z0-9._-]")


def expand_template(template: str, topic: str) -> str:
    """``template``, ``{topic}`` replaced by ``topic`` and ``{N}`` by its N-th level ('' past the last)."""
    if "{" not in template:
        return template
    levels = topic.split("/")

    def level(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "topic":
            return topic
        index = int(name) - 1
        return levels[index] if index < len(levels) else ""

    return _PLACEHOLDER.sub(level, template)


def kafka_topic_name(template: str, topic: str) -> str:
    """The Kafka topic of local ``topic`` under a rule's ``remote_prefix`` template (legal characters)."""
    return _NOT_IN_KAFKA_NAME.sub("_", expand_template(template, topic))[:249] or "_"


def _filter_to_subject(topic_filter: str) -> str:
    """An MQTT topic filter as a NATS subject filter: '+' -> '*', '#' -> '>'."""
    levels = topic_filter.split("/")
    return ".".join("*" if lv == "+" else ">" if lv == "#" else _encode_level(lv) for lv in levels)


@dataclass(frozen=True, slots=True)
class OutRoute:
    """Where a local topic goes: its remote name and the rule that sent it there."""

    remote: str
    rule: BridgeTopic


class TopicMap:
    """The compiled topic rules of one bridge."""

    def __init__(self, bridge: BridgeConfig) -> None:
        self.nats = bridge.kind == "nats-jetstream"
        self.kafka = bridge.kind == "kafka"
        self.out_rules = [rule for rule in bridge.topics if rule.outbound]
        self.in_rules = [rule for rule in bridge.topics if rule.inbound]
        self._routes: dict[str, OutRoute | None] = {}

    def _remote_prefix(self, rule: BridgeTopic) -> str:
        prefix = rule.remote_prefix
        if self.nats and prefix and not prefix.endswith("."):
            prefix += "."  # a subject prefix is whole tokens
        return prefix

    def route_out(self, local_topic: str) -> OutRoute | None:
        """The out route of a local topic (first matching rule), or None when no out rule matches."""
        routes = self._routes
        try:
            return routes[local_topic]
        except KeyError:
            pass
        route: OutRoute | None = None
        for rule in self.out_rules:
            prefix = rule.local_prefix
            if not local_topic.startswith(prefix):
                continue
            rest = local_topic[len(prefix) :]
            if not rest or not topic_matches(rule.pattern, rest):
                continue
            if self.kafka:
                route = OutRoute(f"{kafka_topic_name(rule.remote_prefix, local_topic)}/{local_topic}", rule)
                break
            remote = topic_to_subject(rest) if self.nats else rest
            route = OutRoute(self._remote_prefix(rule) + remote, rule)
            break
        if len(routes) >= ROUTE_CACHE_ENTRIES:
            routes.clear()
        routes[local_topic] = route
        return route

    def remote_filters(self) -> list[tuple[str, int]]:
        """What to subscribe to upstream for the in rules: (MQTT topic filter or NATS subject, QoS)."""
        found: list[tuple[str, int]] = []
        for rule in self.in_rules:
            if self.kafka:
                found.append((rule.remote_prefix, rule.qos))  # the Kafka topic; the pattern filters later
                continue
            pattern = _filter_to_subject(rule.pattern) if self.nats else rule.pattern
            found.append((self._remote_prefix(rule) + pattern, rule.qos))
        return found

    def route_in(self, remote: str) -> str | None:
        """The local topic of a message received upstream (first matching in rule), or None."""
        if self.kafka:
            kafka_topic, _, topic = remote.partition("/")
            for rule in self.in_rules:
                if rule.remote_prefix == kafka_topic and topic and topic_matches(rule.pattern, topic):
                    return rule.local_prefix + topic
            return None
        for rule in self.in_rules:
            prefix = self._remote_prefix(rule)
            if not remote.startswith(prefix):
                continue
            rest = remote[len(prefix) :]
            if not rest:
                continue
            topic = subject_to_topic(rest) if self.nats else rest
            if topic_matches(rule.pattern, topic):
                return rule.local_prefix + topic
        return None

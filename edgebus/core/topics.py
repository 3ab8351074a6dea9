"""Topic name and topic filter rules of MQTT 3.1.1 / 5.0 (§4.7, §4.8.2): validation, $share parsing, matching.

Pure functions, no I/O. Spec citations use the MQTT 3.1.1 numbering where the brief does; where MQTT 5.0
numbers the same statement differently the 5.0 number is given too.
"""

from __future__ import annotations

__all__ = [
    "LEVEL_SEPARATOR",
    "MAX_TOPIC_BYTES",
    "MULTI_LEVEL_WILDCARD",
    "SHARE_PREFIX",
    "SINGLE_LEVEL_WILDCARD",
    "is_valid_topic_filter",
    "is_valid_topic_name",
    "parse_shared",
    "topic_levels",
    "topic_matches",
]

#: Topic level separator (§4.7.1.1).
LEVEL_SEPARATOR = "/"
#: Multi-level wildcard (§4.7.1.2).
MULTI_LEVEL_WILDCARD = "#"
#: Single-level wildcard (§4.7.1.3).
SINGLE_LEVEL_WILDCARD = "+"
#: Prefix of a shared subscription's topic filter (§4.8.2 of 5.0).
SHARE_PREFIX = "$share/"
#: Topic names and filters are UTF-8 strings, at most 65,535 bytes long [MQTT-4.7.3-3].
MAX_TOPIC_BYTES = 65_535


def _is_well_formed_utf8_within_limit(text: str) -> bool:
    """True if `text` encodes as UTF-8 (no lone surrogates) in at most MAX_TOPIC_BYTES bytes.

    A lone surrogate cannot be encoded and is ill-formed UTF-8 [MQTT-1.5.3-1] (5.0: [MQTT-1.5.4-1]).
    """
    try:
        encoded_length = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return encoded_length <= MAX_TOPIC_BYTES


def topic_levels(topic: str) -> list[str]:
    """Split a topic name or filter into levels (§4.7.1.1); empty levels are kept: "/a/" -> ["", "a", ""]."""
    return topic.split(LEVEL_SEPARATOR)


def is_valid_topic_name(topic: str) -> bool:
    """True if `topic` may be used as the Topic Name of a PUBLISH (or a Will Topic)."""
    if not topic:
        return False  # at least one character long [MQTT-4.7.3-1]
    if SINGLE_LEVEL_WILDCARD in topic or MULTI_LEVEL_WILDCARD in topic:
        return False  # no wildcards in a Topic Name [MQTT-3.3.2-2], [MQTT-4.7.1-1] (5.0: [MQTT-4.7.0-1])
    if "\x00" in topic:
        return False  # no U+0000 [MQTT-4.7.3-2]
    return _is_well_formed_utf8_within_limit(topic)


def is_valid_topic_filter(topic_filter: str) -> bool:
    """True if `topic_filter` is a well-formed Topic Filter.

    A shared subscription must be split with `parse_shared` first and its filter part checked here.
    """
    if not topic_filter:
        return False  # at least one character long [MQTT-4.7.3-1]
    if "\x00" in topic_filter:
        return False  # no U+0000 [MQTT-4.7.3-2]
    has_multi = MULTI_LEVEL_WILDCARD in topic_filter
    if has_multi or SINGLE_LEVEL_WILDCARD in topic_filter:
        levels = topic_filter.split(LEVEL_SEPARATOR)
        last_index = len(levels) - 1
        for index, level in enumerate(levels):
            if MULTI_LEVEL_WILDCARD in level and (level != MULTI_LEVEL_WILDCARD or index != last_index):
                # '#' on its own in its level and the last character of the filter
                # [MQTT-4.7.1-2] (5.0: [MQTT-4.7.1-1])
                return False
            if SINGLE_LEVEL_WILDCARD in level and level != SINGLE_LEVEL_WILDCARD:
                # '+' must occupy an entire level [MQTT-4.7.1-3] (5.0: [MQTT-4.7.1-2])
                return False
    return _is_well_formed_utf8_within_limit(topic_filter)


def parse_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split "$share/{ShareName}/{filter}" into (ShareName, filter); a plain filter gives (None, filter).

    Raises ValueError for a malformed shared subscription. The filter part is not validated here; check it
    with `is_valid_topic_filter`. Shared subscriptions exist only in MQTT 5.0, so a 3.1.1 session should treat
    "$share/..." as an ordinary filter and not call this.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    rest = topic_filter[len(SHARE_PREFIX) :]
    separator_index = rest.find(LEVEL_SEPARATOR)
    share_name = rest if separator_index < 0 else rest[:separator_index]
    if not share_name:
        # ShareName at least one character long [MQTT-4.8.2-1]
        raise ValueError(f"shared subscription {topic_filter!r} has an empty ShareName [MQTT-4.8.2-1]")
    if SINGLE_LEVEL_WILDCARD in share_name or MULTI_LEVEL_WILDCARD in share_name:
        # ShareName must not contain '/', '+' or '#' [MQTT-4.8.2-2]; '/' cannot occur by construction
        raise ValueError(
            f"ShareName {share_name!r} of {topic_filter!r} contains a wildcard character [MQTT-4.8.2-2]"
        )
    if separator_index < 0 or separator_index == len(rest) - 1:
        # ShareName followed by '/' and then a Topic Filter [MQTT-4.8.2-2]
        raise ValueError(f"shared subscription {topic_filter!r} has no topic filter after the ShareName")
    return share_name, rest[separator_index + 1 :]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """The reference matcher: True if the plain (non-$share) `topic_filter` matches the Topic Name `topic`.

    Matching is exact and case sensitive, with no normalisation [MQTT-4.7.3-4] (3.1.1). Routing uses the trie
    in edgebus.core.router; this function is the specification it is tested against.
    """
    filter_levels = topic_filter.split(LEVEL_SEPARATOR)
    if topic.startswith("$") and filter_levels[0] in (SINGLE_LEVEL_WILDCARD, MULTI_LEVEL_WILDCARD):
        # A filter starting with a wildcard does not match a topic starting with '$' [MQTT-4.7.2-1]
        return False
    levels = topic.split(LEVEL_SEPARATOR)
    level_count = len(levels)
    for index, filter_level in enumerate(filter_levels):
        if filter_level == MULTI_LEVEL_WILDCARD:
            # '#' matches the parent level and any number of child levels [MQTT-4.7.1-2] ("sport/#" ~ "sport")
            return True
        if index >= level_count:
            return False
        if filter_level != SINGLE_LEVEL_WILDCARD and filter_level != levels[index]:
            return False
    return len(filter_levels) == level_count

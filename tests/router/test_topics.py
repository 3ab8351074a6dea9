"""Topic name / filter validation, $share parsing, reference matcher (edgebus.core.topics): §4.7, §4.8.2."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edgebus.core.topics import (
    MAX_TOPIC_BYTES,
    is_valid_topic_filter,
    is_valid_topic_name,
    parse_shared,
    topic_levels,
    topic_matches,
)

# --------------------------------------------------------------------------------------------------
# Topic names


@pytest.mark.parametrize(
    "topic",
    [
        "sport/tennis/player1",
        "a",
        "/",  # two zero-length levels: valid (§4.7.1.1)
        "/finance",  # leading '/' makes a distinct, valid name (§4.7.1.1)
        "finance/",
        "a//b",
        "Accounts payable",  # spaces are allowed (§4.7.3)
        "$SYS/broker/uptime",
        "ünïcødé/🚀",
    ],
)
def test_valid_topic_names(topic: str) -> None:
    assert is_valid_topic_name(topic)


def test_topic_name_must_be_at_least_one_character() -> None:
    # [MQTT-4.7.3-1] All Topic Names and Topic Filters MUST be at least one character long
    assert not is_valid_topic_name("")


@pytest.mark.parametrize("topic", ["sport/+", "sport/#", "+", "#", "a+b", "a#b", "sport/tennis/+/x"])
def test_topic_name_must_not_contain_wildcards(topic: str) -> None:
    # [MQTT-3.3.2-2] The Topic Name in the PUBLISH Packet MUST NOT contain wildcard characters
    assert not is_valid_topic_name(topic)


def test_topic_name_must_not_contain_null() -> None:
    # [MQTT-4.7.3-2] Topic Names and Topic Filters MUST NOT include the null character (Unicode U+0000)
    assert not is_valid_topic_name("a\x00b")
    assert not is_valid_topic_name("\x00")


def test_topic_name_length_limit_is_in_utf8_bytes() -> None:
    # [MQTT-4.7.3-3] Topic Names and Topic Filters are UTF-8 encoded strings, at most 65,535 bytes
    assert is_valid_topic_name("a" * MAX_TOPIC_BYTES)
    assert not is_valid_topic_name("a" * (MAX_TOPIC_BYTES + 1))
    # 'é' is two bytes in UTF-8: fewer than 65,535 characters may still be too long
    assert len("é" * 32_768) < MAX_TOPIC_BYTES
    assert not is_valid_topic_name("é" * 32_768)
    assert is_valid_topic_name("é" * 32_767)


def test_topic_name_with_lone_surrogate_is_not_well_formed_utf8() -> None:
    # [MQTT-1.5.3-1] (5.0: [MQTT-1.5.4-1]) the character data MUST be well-formed UTF-8; no surrogates
    assert not is_valid_topic_name("a/\ud800")
    assert not is_valid_topic_filter("a/\udfff/#")


# --------------------------------------------------------------------------------------------------
# Topic filters: the examples of §4.7.1.2 and §4.7.1.3


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",  # "#" is valid and will receive every Application Message
        "sport/tennis/#",
        "sport/tennis/player1/#",
        "+",  # "+" is valid
        "+/tennis/#",
        "sport/+/player1",
        "+/+",
        "/+",
        "sport/+",
        "/",
        "$SYS/#",
        "$SYS/monitor/+",
        "a//b",
        "$share",  # not a shared subscription: "$share/" is the prefix
    ],
)
def test_valid_topic_filters(topic_filter: str) -> None:
    assert is_valid_topic_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "sport/tennis#",  # spec example: '#' not alone in its level
        "sport/tennis/#/ranking",  # spec example: '#' not the last level
        "#/a",
        "##",
        "a/#/#",
        "a/b#",
    ],
)
def test_multi_level_wildcard_must_be_alone_and_last(topic_filter: str) -> None:
    # [MQTT-4.7.1-2] (5.0: [MQTT-4.7.1-1]) The multi-level wildcard character MUST be specified either on its
    # own or following a topic level separator. In either case it MUST be the last character of the filter.
    assert not is_valid_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", ["sport+", "sport/+tennis", "+a", "a/b+/c", "++", "+/++"])
def test_single_level_wildcard_must_occupy_an_entire_level(topic_filter: str) -> None:
    # [MQTT-4.7.1-3] (5.0: [MQTT-4.7.1-2]) The single-level wildcard can be used at any level in the Topic
    # Filter, including first and last levels. Where it is used it MUST occupy an entire level of the filter.
    assert not is_valid_topic_filter(topic_filter)


def test_topic_filter_must_be_at_least_one_character() -> None:
    # [MQTT-4.7.3-1]
    assert not is_valid_topic_filter("")


def test_topic_filter_must_not_contain_null() -> None:
    # [MQTT-4.7.3-2]
    assert not is_valid_topic_filter("a/\x00/#")


def test_topic_filter_length_limit() -> None:
    # [MQTT-4.7.3-3]
    assert is_valid_topic_filter("a" * (MAX_TOPIC_BYTES - 2) + "/#")
    assert not is_valid_topic_filter("a" * (MAX_TOPIC_BYTES - 1) + "/#")


def test_topic_levels_keeps_empty_levels() -> None:
    # §4.7.1.1: adjacent separators indicate a zero-length level
    assert topic_levels("/a//b/") == ["", "a", "", "b", ""]
    assert topic_levels("a") == ["a"]


# --------------------------------------------------------------------------------------------------
# Shared subscriptions (§4.8.2 of 5.0)


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/consumer1/sport/tennis/+", ("consumer1", "sport/tennis/+")),
        ("$share/consumer2/sport/tennis/+", ("consumer2", "sport/tennis/+")),
        ("$share/g/#", ("g", "#")),
        ("$share/g//", ("g", "/")),  # the filter part "/" is a valid filter of two empty levels
        ("$share/g/$SYS/#", ("g", "$SYS/#")),
        ("sport/tennis/+", (None, "sport/tennis/+")),
        ("$share", (None, "$share")),
        ("$shared/g/a", (None, "$shared/g/a")),
        ("$SHARE/g/a", (None, "$SHARE/g/a")),  # case sensitive: not a shared subscription
    ],
)
def test_parse_shared(topic_filter: str, expected: tuple[str | None, str]) -> None:
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize("topic_filter", ["$share/", "$share//a", "$share//"])
def test_share_name_must_be_at_least_one_character(topic_filter: str) -> None:
    # [MQTT-4.8.2-1] A Shared Subscription's Topic Filter MUST start with $share/ and MUST contain a ShareName
    # that is at least one character long
    with pytest.raises(ValueError, match="empty ShareName"):
        parse_shared(topic_filter)


@pytest.mark.parametrize("topic_filter", ["$share/g+/a", "$share/+/a", "$share/#/a", "$share/a#b/x"])
def test_share_name_must_not_contain_wildcards(topic_filter: str) -> None:
    # [MQTT-4.8.2-2] The ShareName MUST NOT contain the characters "/", "+" or "#"
    with pytest.raises(ValueError, match="wildcard"):
        parse_shared(topic_filter)


@pytest.mark.parametrize("topic_filter", ["$share/g", "$share/g/"])
def test_share_name_must_be_followed_by_slash_and_filter(topic_filter: str) -> None:
    # [MQTT-4.8.2-2] ... but MUST be followed by a "/" character. This "/" character MUST be followed by a
    # Topic Filter
    with pytest.raises(ValueError, match="no topic filter"):
        parse_shared(topic_filter)


def test_shared_filter_part_is_validated_separately() -> None:
    # parse_shared splits; the filter part must then obey §4.7.1 like any other filter
    share_name, topic_filter = parse_shared("$share/g/sport/tennis#")
    assert share_name == "g"
    assert not is_valid_topic_filter(topic_filter)


# --------------------------------------------------------------------------------------------------
# Matching: the examples of §4.7.1.2, §4.7.1.3, §4.7.2 and §4.7.3


@pytest.mark.parametrize(
    "topic", ["sport/tennis/player1", "sport/tennis/player1/ranking", "sport/tennis/player1/score/wimbledon"]
)
def test_multi_level_wildcard_spec_example(topic: str) -> None:
    # §4.7.1.2: "sport/tennis/player1/#" receives messages published to these topic names;
    # the wildcard includes the parent level [MQTT-4.7.1-2]
    assert topic_matches("sport/tennis/player1/#", topic)


def test_multi_level_wildcard_matches_parent_level() -> None:
    # §4.7.1.2: "sport/#" also matches the singular "sport", since # includes the parent level
    assert topic_matches("sport/#", "sport")
    assert topic_matches("sport/#", "sport/")
    assert not topic_matches("sport/tennis/#", "sport")
    assert not topic_matches("sport/#", "sports")


def test_hash_alone_matches_every_topic_not_starting_with_dollar() -> None:
    # §4.7.1.2: "#" is valid and will receive every Application Message
    for topic in ["a", "/", "/finance", "sport/tennis/player1", "a/b/c/d/e/f"]:
        assert topic_matches("#", topic)


def test_single_level_wildcard_spec_examples() -> None:
    # §4.7.1.3: "sport/tennis/+" matches "sport/tennis/player1" and "sport/tennis/player2",
    # but not "sport/tennis/player1/ranking"
    assert topic_matches("sport/tennis/+", "sport/tennis/player1")
    assert topic_matches("sport/tennis/+", "sport/tennis/player2")
    assert not topic_matches("sport/tennis/+", "sport/tennis/player1/ranking")
    # "sport/+" does not match "sport" but it does match "sport/"
    assert not topic_matches("sport/+", "sport")
    assert topic_matches("sport/+", "sport/")
    # "sport/+/player1" is valid and matches one level
    assert topic_matches("sport/+/player1", "sport/tennis/player1")
    assert not topic_matches("sport/+/player1", "sport/player1")


def test_single_level_wildcard_matches_empty_levels() -> None:
    # §4.7.1.3: "/finance" matches "+/+" and "/+", but not "+"
    assert topic_matches("+/+", "/finance")
    assert topic_matches("/+", "/finance")
    assert not topic_matches("+", "/finance")
    assert topic_matches("+", "")  # a single empty level is still one level
    assert topic_matches("+/+/+", "//")


def test_plus_then_hash_combination() -> None:
    # "+/tennis/#" is valid (§4.7.1.3); '#' also matches the parent level [MQTT-4.7.1-2]
    assert topic_matches("+/tennis/#", "sport/tennis")
    assert topic_matches("+/tennis/#", "sport/tennis/player1/ranking")
    assert not topic_matches("+/tennis/#", "sport/golf")


def test_wildcard_first_level_does_not_match_dollar_topics() -> None:
    # [MQTT-4.7.2-1] The Server MUST NOT match Topic Filters starting with a wildcard character (# or +)
    # with Topic Names beginning with a $ character
    assert not topic_matches("#", "$SYS/monitor/Clients")
    assert not topic_matches("+/monitor/Clients", "$SYS/monitor/Clients")
    assert not topic_matches("+", "$SYS")
    assert not topic_matches("+/#", "$SYS")
    # §4.7.2: "$SYS/#" and "$SYS/monitor/+" do match
    assert topic_matches("$SYS/#", "$SYS/monitor/Clients")
    assert topic_matches("$SYS/monitor/+", "$SYS/monitor/Clients")
    assert topic_matches("$SYS/#", "$SYS")
    # the rule is about the first level only: '$' further down is an ordinary character
    assert topic_matches("#", "a/$SYS")
    assert topic_matches("+/$x", "a/$x")


def test_matching_is_case_sensitive_and_not_normalised() -> None:
    # §4.7.3: "ACCOUNTS" and "Accounts" are two different topic names; [MQTT-4.7.3-4] (3.1.1) no normalisation
    assert not topic_matches("ACCOUNTS", "Accounts")
    assert topic_matches("Accounts payable", "Accounts payable")
    assert not topic_matches("finance", "/finance")  # a leading '/' makes a distinct topic
    assert not topic_matches("finance/", "finance")
    assert not topic_matches("e\u0301", "\u00e9")  # no Unicode normalisation


def test_exact_filter_needs_equal_level_count() -> None:
    assert topic_matches("a/b", "a/b")
    assert not topic_matches("a/b", "a/b/c")
    assert not topic_matches("a/b/c", "a/b")


# --------------------------------------------------------------------------------------------------
# Architecture convention 1: core/topics.py and core/router.py are pure, and lean

_PURE_MODULES = ("topics.py", "router.py")
_ALLOWED_EDGEBUS_IMPORTS = {"edgebus.core.topics", "edgebus.protocol.enums"}
_FORBIDDEN_ROOTS = {"trio", "socket", "sqlite3", "time", "logging", "asyncio", "threading", "os", "select"}


@pytest.mark.parametrize("module_file", _PURE_MODULES)
def test_pure_modules_import_no_io(module_file: str) -> None:
    source_path = Path(__file__).resolve().parents[2] / "edgebus" / "core" / module_file
    tree = ast.parse(source_path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports hide what is imported"
            assert node.module is not None
            imported.add(node.module)
    assert not {name for name in imported if name.split(".")[0] in _FORBIDDEN_ROOTS}
    assert {name for name in imported if name.split(".")[0] == "edgebus"} <= _ALLOWED_EDGEBUS_IMPORTS

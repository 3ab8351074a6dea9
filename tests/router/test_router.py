"""Subscription trie, shared groups and retained index (edgebus.core.router), checked against §4.7, §4.8.2
and the reference matcher edgebus.core.topics.topic_matches."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebus.core.router import (
    ROUTE_CACHE_MATCHES,
    ROUTE_CACHE_TOPIC_LENGTH,
    ROUTE_CACHE_TOPICS,
    RetainedIndex,
    Router,
    SharedGroup,
)
from edgebus.core.topics import is_valid_topic_filter, is_valid_topic_name, parse_shared, topic_matches


@dataclass(frozen=True)
class Options:
    """Stands in for the broker's frozen subscription options."""

    qos: int = 0


def _pairs(router: Router[Options], topic: str) -> Counter[tuple[str, Options]]:
    matched, _groups = router.match(topic)
    return Counter(matched)


def _groups(router: Router[Options], topic: str) -> set[tuple[str, str]]:
    _matched, groups = router.match(topic)
    return {(group.name, group.topic_filter) for group in groups}


# --------------------------------------------------------------------------------------------------
# subscribe / replace / unsubscribe


def test_subscribe_new_then_replace() -> None:
    router: Router[Options] = Router()
    assert router.subscribe("c1", "a/b", Options(qos=0)) is True
    assert router.subscription_count == 1
    # [MQTT-3.8.4-3] a SUBSCRIBE with a filter identical to an existing one replaces that subscription
    assert router.subscribe("c1", "a/b", Options(qos=2)) is False
    assert router.subscription_count == 1
    assert router.match("a/b") == ([("c1", Options(qos=2))], [])
    assert router.subscriptions_of("c1") == {"a/b": Options(qos=2)}


def test_same_filter_different_clients_are_distinct() -> None:
    router: Router[Options] = Router()
    assert router.subscribe("c1", "a/+", Options(1))
    assert router.subscribe("c2", "a/+", Options(2))
    assert router.subscription_count == 2
    assert _pairs(router, "a/x") == Counter({("c1", Options(1)): 1, ("c2", Options(2)): 1})


def test_unsubscribe() -> None:
    router: Router[Options] = Router()
    router.subscribe("c1", "a/b", Options())
    router.subscribe("c1", "a/#", Options())
    assert router.unsubscribe("c1", "a/b") is True
    assert router.unsubscribe("c1", "a/b") is False  # already gone
    assert router.unsubscribe("c2", "a/#") is False  # another client's filter
    assert router.unsubscribe("c1", "$share//x") is False  # malformed: never subscribed, so no error
    assert router.subscription_count == 1
    assert router.match("a/b") == ([("c1", Options())], [])
    assert router.subscriptions_of("c1") == {"a/#": Options()}


def test_unsubscribe_all_removes_only_that_client() -> None:
    router: Router[Options] = Router()
    for topic_filter in ["a/b", "a/#", "+/b", "$share/g/a/b", "$share/h/#"]:
        router.subscribe("c1", topic_filter, Options())
    router.subscribe("c2", "a/b", Options())
    router.subscribe("c2", "$share/g/a/b", Options())
    router.unsubscribe_all("c1")
    router.unsubscribe_all("nobody")  # no-op
    assert router.subscriptions_of("c1") == {}
    assert router.subscription_count == 2
    matched, groups = router.match("a/b")
    assert matched == [("c2", Options())]
    assert [(g.name, g.topic_filter, list(g.members)) for g in groups] == [("g", "a/b", ["c2"])]


def test_subscriptions_of_includes_share_prefix_and_is_a_copy() -> None:
    router: Router[Options] = Router()
    router.subscribe("c1", "$share/g/a/+", Options(1))
    router.subscribe("c1", "a/+", Options(2))
    subscriptions = router.subscriptions_of("c1")
    assert subscriptions == {"$share/g/a/+": Options(1), "a/+": Options(2)}
    subscriptions.clear()
    assert len(router.subscriptions_of("c1")) == 2


@pytest.mark.parametrize(
    "topic_filter",
    ["", "sport/tennis#", "sport/+tennis", "a/#/b", "$share//a", "$share/g", "$share/g+/a", "a\x00"],
)
def test_subscribe_rejects_malformed_filters(topic_filter: str) -> None:
    # [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.3-1], [MQTT-4.7.3-2], [MQTT-4.8.2-1], [MQTT-4.8.2-2]
    router: Router[Options] = Router()
    with pytest.raises(ValueError, match=r"."):
        router.subscribe("c1", topic_filter, Options())
    assert router.subscription_count == 0
    assert router.subscriptions_of("c1") == {}


def test_match_rejects_topic_with_wildcards() -> None:
    # [MQTT-3.3.2-2] a Topic Name never contains wildcards, so it cannot be routed
    router: Router[Options] = Router()
    with pytest.raises(ValueError, match="wildcard"):
        router.match("a/+")


# --------------------------------------------------------------------------------------------------
# matching


def test_overlapping_filters_appear_once_per_filter() -> None:
    # Overlapping subscriptions (§3.3.4): the router reports each matching (client, filter) pair and the
    # broker merges them; a filter that does not match is not reported.
    router: Router[Options] = Router()
    router.subscribe("c1", "a/b", Options(0))
    router.subscribe("c1", "a/+", Options(1))
    router.subscribe("c1", "#", Options(2))
    router.subscribe("c1", "a/c", Options(1))
    router.subscribe("c2", "a/#", Options(0))
    assert _pairs(router, "a/b") == Counter(
        {("c1", Options(0)): 1, ("c1", Options(1)): 1, ("c1", Options(2)): 1, ("c2", Options(0)): 1}
    )


def test_hash_matches_parent_level() -> None:
    # [MQTT-4.7.1-2] "sport/#" also matches the singular "sport"
    router: Router[Options] = Router()
    router.subscribe("c1", "sport/#", Options())
    router.subscribe("c2", "sport/tennis/#", Options())
    assert _pairs(router, "sport") == Counter({("c1", Options()): 1})
    assert _pairs(router, "sport/tennis") == Counter({("c1", Options()): 1, ("c2", Options()): 1})
    assert _pairs(router, "sports") == Counter()


def test_plus_matches_empty_levels() -> None:
    # §4.7.1.3: "/finance" matches "+/+" and "/+", but not "+"
    router: Router[Options] = Router()
    router.subscribe("plus_plus", "+/+", Options())
    router.subscribe("slash_plus", "/+", Options())
    router.subscribe("plus", "+", Options())
    assert {client for client, _ in router.match("/finance")[0]} == {"plus_plus", "slash_plus"}


def test_dollar_topics_not_matched_by_leading_wildcards() -> None:
    # [MQTT-4.7.2-1] filters starting with '#' or '+' do not match topic names beginning with '$'
    router: Router[Options] = Router()
    router.subscribe("hash", "#", Options())
    router.subscribe("plus", "+/monitor/Clients", Options())
    router.subscribe("plus_hash", "+/#", Options())
    router.subscribe("sys_hash", "$SYS/#", Options())
    router.subscribe("sys_plus", "$SYS/monitor/+", Options())
    router.subscribe("sys_exact", "$SYS", Options())
    router.subscribe("c1", "$share/g/#", Options())
    clients = {client for client, _ in router.match("$SYS/monitor/Clients")[0]}
    assert clients == {"sys_hash", "sys_plus"}
    assert _groups(router, "$SYS/monitor/Clients") == set()
    assert {client for client, _ in router.match("$SYS")[0]} == {"sys_hash", "sys_exact"}
    # an ordinary topic reaches the wildcard subscribers
    assert {client for client, _ in router.match("x/monitor/Clients")[0]} == {"hash", "plus", "plus_hash"}
    # '$' below the first level is an ordinary character
    assert {client for client, _ in router.match("a/$SYS")[0]} == {"hash", "plus_hash"}


def test_matching_is_case_sensitive() -> None:
    # §4.7.3: "ACCOUNTS" and "Accounts" are two different topic names
    router: Router[Options] = Router()
    router.subscribe("c1", "Accounts/+", Options())
    assert router.match("ACCOUNTS/x") == ([], [])
    assert router.match("Accounts/x") == ([("c1", Options())], [])


def test_match_reflects_changes_made_after_an_earlier_match() -> None:
    # match() caches each node's subscriber list; every change must be visible to the next match
    router: Router[Options] = Router()
    router.subscribe("c1", "a/#", Options(0))
    assert router.match("a/b") == ([("c1", Options(0))], [])
    router.subscribe("c1", "a/#", Options(1))  # [MQTT-3.8.4-3] replaced options are used from now on
    assert router.match("a/b") == ([("c1", Options(1))], [])
    router.subscribe("c2", "a/#", Options(2))
    assert _pairs(router, "a/b") == Counter({("c1", Options(1)): 1, ("c2", Options(2)): 1})
    router.unsubscribe("c1", "a/#")
    assert router.match("a/b") == ([("c2", Options(2))], [])
    router.unsubscribe_all("c2")
    assert router.match("a/b") == ([], [])


def test_match_results_are_kept_per_topic_within_bounds() -> None:
    """A topic's match result is kept until a subscription changes, for a bounded number of topics, and not
    for a long topic or a wide match (the cache stays small whatever clients publish)."""
    router: Router[Options] = Router()
    router.subscribe("c1", "a/+", Options(1))
    first = router.match("a/b")
    assert router.match("a/b") is first  # kept: the second match is a lookup
    router.subscribe("c2", "x", Options(0))  # any change starts afresh
    assert router.match("a/b") is not first and router.match("a/b") == first
    for i in range(ROUTE_CACHE_TOPICS + 10):
        router.match(f"a/{i}")
    assert len(router._routes) <= ROUTE_CACHE_TOPICS
    long_topic = "a/" + "x" * ROUTE_CACHE_TOPIC_LENGTH
    assert router.match(long_topic) is not router.match(long_topic)
    for i in range(ROUTE_CACHE_MATCHES):
        router.subscribe(f"w{i}", "#", Options(0))
    wide = router.match("a/b")
    assert len(wide[0]) > ROUTE_CACHE_MATCHES and router.match("a/b") is not wide


def test_no_match_returns_empty_lists() -> None:
    router: Router[Options] = Router()
    assert router.match("a/b") == ([], [])
    router.subscribe("c1", "a/b/c", Options())
    assert router.match("a/b") == ([], [])
    assert router.match("a/b/c/d") == ([], [])


# --------------------------------------------------------------------------------------------------
# shared subscriptions (§4.8.2 of 5.0)


def test_each_shared_group_gets_the_message() -> None:
    # §4.8.2: a message matching the filters of several groups is delivered once per group; groups are
    # identified by (ShareName, filter), so "$share/g/a/+" and "$share/g/a/#" are two groups
    router: Router[Options] = Router()
    router.subscribe("c1", "$share/g/a/+", Options())
    router.subscribe("c2", "$share/g/a/#", Options())
    router.subscribe("c3", "$share/h/a/+", Options())
    router.subscribe("c4", "$share/h/a/+", Options())
    router.subscribe("c5", "$share/g/b/+", Options())
    router.subscribe("c1", "a/+", Options(2))  # a client may also hold a non-shared subscription
    matched, groups = router.match("a/x")
    assert matched == [("c1", Options(2))]
    assert sorted((g.name, g.topic_filter, list(g.members)) for g in groups) == [
        ("g", "a/#", ["c2"]),
        ("g", "a/+", ["c1"]),
        ("h", "a/+", ["c3", "c4"]),
    ]
    assert router.subscription_count == 6


def test_shared_membership_replace_and_leave() -> None:
    router: Router[Options] = Router()
    assert router.subscribe("c1", "$share/g/a", Options(0)) is True
    assert router.subscribe("c1", "$share/g/a", Options(1)) is False  # [MQTT-3.8.4-3] replace
    (group,) = router.match("a")[1]
    assert group.members == {"c1": Options(1)}
    assert router.unsubscribe("c1", "$share/g/a") is True
    assert router.match("a") == ([], [])


def test_pick_round_robins() -> None:
    group: SharedGroup[Options] = SharedGroup("g", "a/+")
    for client_id in ["c1", "c2", "c3"]:
        group._add(client_id, Options())
    picks = [group.pick(lambda _client_id: True) for _ in range(7)]
    assert [pick[0] for pick in picks if pick is not None] == ["c1", "c2", "c3", "c1", "c2", "c3", "c1"]


def test_pick_returns_options_of_the_member() -> None:
    router: Router[Options] = Router()
    router.subscribe("c1", "$share/g/a", Options(1))
    router.subscribe("c2", "$share/g/a", Options(2))
    (group,) = router.match("a")[1]
    assert group.pick(lambda _client_id: True) == ("c1", Options(1))
    assert group.pick(lambda _client_id: True) == ("c2", Options(2))


def test_pick_skips_ineligible_members() -> None:
    group: SharedGroup[Options] = SharedGroup("g", "a")
    for client_id in ["c1", "c2", "c3"]:
        group._add(client_id, Options())
    online = {"c1", "c3"}
    picks = [group.pick(online.__contains__) for _ in range(4)]
    assert [pick[0] for pick in picks if pick is not None] == ["c1", "c3", "c1", "c3"]
    # everyone offline: None, and the rotation is where it was
    assert group.pick(lambda _client_id: False) is None
    online.add("c2")
    pick = group.pick(online.__contains__)
    assert pick is not None
    assert pick[0] == "c1"


def test_pick_continues_after_last_picked_when_skipping() -> None:
    group: SharedGroup[Options] = SharedGroup("g", "a")
    for client_id in ["c1", "c2", "c3", "c4"]:
        group._add(client_id, Options())
    first = group.pick(lambda _client_id: True)
    assert first is not None
    assert first[0] == "c1"
    # c2 is ineligible this time: c3 is next, and after it c4 (the cursor is after the last one picked)
    second = group.pick(lambda client_id: client_id != "c2")
    third = group.pick(lambda _client_id: True)
    assert second is not None
    assert third is not None
    assert (second[0], third[0]) == ("c3", "c4")


def test_pick_empty_group() -> None:
    group: SharedGroup[Options] = SharedGroup("g", "a")
    assert group.pick(lambda _client_id: True) is None


def test_members_leaving_and_joining_mid_rotation() -> None:
    router: Router[Options] = Router()
    for client_id in ["c1", "c2", "c3", "c4"]:
        router.subscribe(client_id, "$share/g/t", Options())
    (group,) = router.match("t")[1]

    def pick_id() -> str:
        pick = group.pick(lambda _client_id: True)
        assert pick is not None
        return pick[0]

    assert pick_id() == "c1"
    router.unsubscribe("c2", "$share/g/t")  # the next in turn leaves: its successor is next
    assert pick_id() == "c3"
    router.unsubscribe("c1", "$share/g/t")  # the last picked leaves
    router.subscribe("c5", "$share/g/t", Options())  # a joiner waits for everyone already in the rotation
    router.subscribe("c3", "$share/g/t", Options(1))  # replacing options keeps c3's place
    assert [pick_id() for _ in range(5)] == ["c4", "c3", "c5", "c4", "c3"]
    assert group.members == {"c3": Options(1), "c4": Options(), "c5": Options()}
    router.unsubscribe_all("c3")
    router.unsubscribe_all("c4")
    router.unsubscribe_all("c5")
    assert router.match("t") == ([], [])
    assert group.pick(lambda _client_id: True) is None


# --------------------------------------------------------------------------------------------------
# pruning


def test_unsubscribing_everything_prunes_the_trie() -> None:
    router: Router[Options] = Router()
    filters = ["a/b/c", "a/b", "a/+/c", "a/#", "#", "+", "/", "$share/g/a/b/c", "$share/h/a/+/#", "$SYS/#"]
    for index in range(20):
        for topic_filter in filters:
            router.subscribe(f"c{index}", topic_filter, Options())
    for index in range(0, 20, 2):
        router.unsubscribe_all(f"c{index}")
    for index in range(1, 20, 2):
        for topic_filter in filters:
            assert router.unsubscribe(f"c{index}", topic_filter)
    assert router.subscription_count == 0
    assert router._root.is_empty()
    assert router._by_client == {}


def test_unsubscribe_prunes_only_empty_branches() -> None:
    router: Router[Options] = Router()
    router.subscribe("c1", "a/b", Options())
    router.subscribe("c1", "a/b/c/d", Options())
    router.unsubscribe("c1", "a/b/c/d")
    a_node = router._root.child("a")
    assert a_node is not None
    b_node = a_node.child("b")
    assert b_node is not None
    assert b_node.children is None  # "c" and "d" are gone
    assert router.match("a/b") == ([("c1", Options())], [])


# --------------------------------------------------------------------------------------------------
# retained messages


def test_retained_set_get_replace_clear() -> None:
    retained: RetainedIndex[bytes] = RetainedIndex()
    assert len(retained) == 0
    assert retained.get("a/b") is None
    retained.set("a/b", b"1")
    retained.set("a/b", b"2")  # one retained message per topic: replaced
    retained.set("a", b"parent")
    assert len(retained) == 2
    assert retained.get("a/b") == b"2"
    assert retained.get("a/b/c") is None
    assert retained.get("a/c") is None
    assert sorted(retained.items()) == [("a", b"parent"), ("a/b", b"2")]
    assert retained.clear("a/b") is True
    assert retained.clear("a/b") is False
    assert retained.clear("x/y/z") is False
    assert retained.clear("a/b/c") is False
    assert len(retained) == 1
    assert retained.get("a") == b"parent"
    assert retained.clear("a") is True
    assert len(retained) == 0
    assert retained._root.children is None  # pruned
    assert list(retained.items()) == []


def test_retained_clear_of_inner_node_keeps_descendants() -> None:
    retained: RetainedIndex[str] = RetainedIndex()
    retained.set("a", "x")
    retained.set("a/b/c", "y")
    assert retained.clear("a")
    assert retained.get("a/b/c") == "y"
    assert list(retained.match("a/#")) == [("a/b/c", "y")]


def test_retained_set_rejects_invalid_topic_names() -> None:
    # [MQTT-3.3.2-2], [MQTT-4.7.3-1]
    retained: RetainedIndex[str] = RetainedIndex()
    for topic in ["", "a/+", "a/#", "\x00"]:
        with pytest.raises(ValueError, match="invalid topic name"):
            retained.set(topic, "m")
    assert len(retained) == 0


def test_retained_match_rejects_invalid_filters() -> None:
    retained: RetainedIndex[str] = RetainedIndex()
    with pytest.raises(ValueError, match="invalid topic filter"):
        list(retained.match("a/#/b"))


_RETAINED_TOPICS = [
    "sport",
    "sport/",
    "sport/tennis",
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "sport/golf/player1",
    "/finance",
    "finance",
    "$SYS",
    "$SYS/monitor/Clients",
    "$SYS/broker/uptime",
    "a/$SYS",
]


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("sport/#", {"sport", "sport/", "sport/tennis", "sport/tennis/player1",
                     "sport/tennis/player1/ranking", "sport/golf/player1"}),  # [MQTT-4.7.1-2] parent too
        ("sport/tennis/player1/#", {"sport/tennis/player1", "sport/tennis/player1/ranking"}),
        ("sport/+", {"sport/", "sport/tennis"}),
        ("sport/+/player1", {"sport/tennis/player1", "sport/golf/player1"}),
        ("+/+", {"sport/", "sport/tennis", "/finance", "a/$SYS"}),  # [MQTT-4.7.2-1] not $SYS/...
        ("/+", {"/finance"}),
        ("+", {"sport", "finance"}),
        ("#", {"sport", "sport/", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
               "sport/golf/player1", "/finance", "finance", "a/$SYS"}),  # [MQTT-4.7.2-1]
        ("+/#", {"sport", "sport/", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
                 "sport/golf/player1", "/finance", "finance", "a/$SYS"}),
        ("$SYS/#", {"$SYS", "$SYS/monitor/Clients", "$SYS/broker/uptime"}),
        ("$SYS/monitor/+", {"$SYS/monitor/Clients"}),
        ("+/monitor/Clients", set()),  # [MQTT-4.7.2-1]
        ("SPORT/#", set()),  # case sensitive
        ("sport/tennis/player1", {"sport/tennis/player1"}),
        ("nothing/here/#", set()),
    ],
)
def test_retained_match(topic_filter: str, expected: set[str]) -> None:
    retained: RetainedIndex[str] = RetainedIndex()
    for topic in _RETAINED_TOPICS:
        retained.set(topic, f"m:{topic}")
    found = list(retained.match(topic_filter))
    assert sorted(found) == sorted((topic, f"m:{topic}") for topic in expected)
    assert {topic for topic, _ in found} == {t for t in _RETAINED_TOPICS if topic_matches(topic_filter, t)}


def test_retained_match_is_a_snapshot() -> None:
    retained: RetainedIndex[int] = RetainedIndex()
    for index in range(10):
        retained.set(f"a/{index}", index)
    for topic, _message in retained.match("a/+"):
        retained.clear(topic)  # mutating while iterating is allowed
        retained.set(f"b/{topic}", 0)
    assert len(retained) == 10
    assert list(retained.match("a/#")) == []


# --------------------------------------------------------------------------------------------------
# Property: the trie agrees with the reference matcher

_LEVELS = ["", "a", "b", "$x"]
_topic_names = (
    st.lists(st.sampled_from(_LEVELS), min_size=1, max_size=4).map("/".join).filter(is_valid_topic_name)
)
_plain_filters = st.builds(
    lambda levels, tail: "/".join(levels + tail),
    st.lists(st.sampled_from([*_LEVELS, "+"]), min_size=0, max_size=4),
    st.sampled_from([[], ["#"]]),
).filter(lambda topic_filter: topic_filter != "" and is_valid_topic_filter(topic_filter))
_full_filters = st.builds(
    lambda share, plain: plain if share is None else f"$share/{share}/{plain}",
    st.sampled_from([None, None, "g1", "g2"]),
    _plain_filters,
)
_subscriptions = st.lists(st.tuples(st.sampled_from(["c1", "c2", "c3"]), _full_filters), max_size=12)


@settings(max_examples=300, deadline=None)
@given(subscriptions=_subscriptions, topics=st.lists(_topic_names, min_size=1, max_size=6))
def test_router_match_agrees_with_topic_matches(
    subscriptions: list[tuple[str, str]], topics: list[str]
) -> None:
    router: Router[str] = Router()
    for client_id, topic_filter in subscriptions:
        router.subscribe(client_id, topic_filter, topic_filter)  # the options record the full filter
    unique = set(subscriptions)
    assert router.subscription_count == len(unique)
    for topic in topics:
        expected_pairs: Counter[tuple[str, str]] = Counter()
        expected_groups: dict[tuple[str, str], set[str]] = {}
        for client_id, topic_filter in unique:
            share_name, plain = parse_shared(topic_filter)
            if not topic_matches(plain, topic):
                continue
            if share_name is None:
                expected_pairs[(client_id, topic_filter)] += 1
            else:
                expected_groups.setdefault((share_name, plain), set()).add(client_id)
        matched, groups = router.match(topic)
        assert Counter(matched) == expected_pairs
        got_groups = {(group.name, group.topic_filter): set(group.members) for group in groups}
        assert len(got_groups) == len(groups)  # each group reported once
        assert got_groups == expected_groups
    # and removing everything leaves an empty trie
    for client_id, topic_filter in subscriptions:
        router.unsubscribe(client_id, topic_filter)
    assert router.subscription_count == 0
    assert router._root.is_empty()


@settings(max_examples=300, deadline=None)
@given(
    topics=st.lists(_topic_names, max_size=12),
    cleared=st.lists(_topic_names, max_size=4),
    filters=st.lists(_plain_filters, min_size=1, max_size=6),
)
def test_retained_match_agrees_with_topic_matches(
    topics: list[str], cleared: list[str], filters: list[str]
) -> None:
    retained: RetainedIndex[str] = RetainedIndex()
    for topic in topics:
        retained.set(topic, "m:" + topic)
    for index, topic in enumerate(cleared):
        assert retained.clear(topic) == (topic in topics and topic not in cleared[:index])
    stored = set(topics) - set(cleared)
    assert len(retained) == len(stored)
    assert sorted(topic for topic, _ in retained.items()) == sorted(stored)
    for topic_filter in filters:
        found = list(retained.match(topic_filter))
        assert len(found) == len({topic for topic, _ in found})  # each topic once
        expected = [(topic, "m:" + topic) for topic in stored if topic_matches(topic_filter, topic)]
        assert sorted(found) == sorted(expected)
    for topic in stored:
        assert retained.clear(topic)
    assert retained._root.children is None


# A small pool of filters so that operations often hit the same (client, filter) and the same trie nodes.
_filter_pool = st.lists(_full_filters, min_size=1, max_size=5, unique=True)
_topic_lists = st.lists(_topic_names, min_size=1, max_size=3)
_operations = st.lists(
    st.tuples(
        st.sampled_from(["subscribe", "subscribe", "unsubscribe", "unsubscribe_all"]),
        st.sampled_from(["c1", "c2"]),
        st.integers(min_value=0, max_value=4),  # index into the filter pool
        st.integers(min_value=0, max_value=2),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(filter_pool=_filter_pool, operations=_operations, topics=_topic_lists)
def test_router_tracks_a_model_through_interleaved_changes_and_matches(
    filter_pool: list[str], operations: list[tuple[str, str, int, int]], topics: list[str]
) -> None:
    # Matching between changes exercises the per-node caches; the model is a plain dict of subscriptions.
    router: Router[int] = Router()
    model: dict[tuple[str, str], int] = {}
    for action, client_id, filter_index, qos in operations:
        topic_filter = filter_pool[filter_index % len(filter_pool)]
        if action == "subscribe":
            assert router.subscribe(client_id, topic_filter, qos) == ((client_id, topic_filter) not in model)
            model[(client_id, topic_filter)] = qos
        elif action == "unsubscribe":
            assert router.unsubscribe(client_id, topic_filter) == ((client_id, topic_filter) in model)
            model.pop((client_id, topic_filter), None)
        else:
            router.unsubscribe_all(client_id)
            model = {key: value for key, value in model.items() if key[0] != client_id}
        assert router.subscription_count == len(model)
        for topic in topics:
            expected_pairs: Counter[tuple[str, int]] = Counter()
            expected_groups: dict[tuple[str, str], dict[str, int]] = {}
            for (subscriber, full_filter), options in model.items():
                share_name, plain = parse_shared(full_filter)
                if not topic_matches(plain, topic):
                    continue
                if share_name is None:
                    expected_pairs[(subscriber, options)] += 1
                else:
                    expected_groups.setdefault((share_name, plain), {})[subscriber] = options
            matched, groups = router.match(topic)
            assert Counter(matched) == expected_pairs
            assert {(group.name, group.topic_filter): group.members for group in groups} == expected_groups
    for client_id in ("c1", "c2"):
        own = {full: qos for (subscriber, full), qos in model.items() if subscriber == client_id}
        assert router.subscriptions_of(client_id) == own
        router.unsubscribe_all(client_id)
    assert router._root.is_empty()

"""Subscription trie (with $share groups) and retained-message index, both keyed by topic level (pure)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgebus.core.topics import (
    LEVEL_SEPARATOR,
    MULTI_LEVEL_WILDCARD,
    SINGLE_LEVEL_WILDCARD,
    is_valid_topic_filter,
    is_valid_topic_name,
    parse_shared,
)

__all__ = ["RetainedIndex", "Router", "SharedGroup"]

#: How many topics' match results the router keeps (`Router.match`); a full cache starts afresh. A result
#: is kept only for a topic of at most ROUTE_CACHE_TOPIC_LENGTH characters that matched at most
#: ROUTE_CACHE_MATCHES subscriptions and groups, so the cache holds under a megabyte whatever is published.
ROUTE_CACHE_TOPICS = 1024
ROUTE_CACHE_TOPIC_LENGTH = 256
ROUTE_CACHE_MATCHES = 32

#: The subscription options the broker stores per (client, filter); opaque to the router.
T = TypeVar("T")
#: The retained message type; opaque to the index.
M = TypeVar("M")


class SharedGroup(Generic[T]):
    """The members of one shared subscription "$share/{name}/{topic_filter}" (§4.8.2 of 5.0).

    A group is identified by (name, topic_filter): "$share/g/a/+" and "$share/g/a/#" are different groups.
    `members` is owned by the Router; read it, do not mutate it.
    """

    __slots__ = ("_rotation", "members", "name", "topic_filter")

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.topic_filter = topic_filter
        self.members: dict[str, T] = {}
        # Client ids in pick order: the left end is the next to be offered. Rotating the deque is the cursor,
        # so joins (appended on the right: served after everyone already waiting) and leaves (removed in
        # place) keep the rotation of the others intact.
        self._rotation: deque[str] = deque()

    def __repr__(self) -> str:
        members = list(self.members)
        return f"SharedGroup(name={self.name!r}, topic_filter={self.topic_filter!r}, members={members})"

    def pick(self, eligible: Callable[[str], bool]) -> tuple[str, T] | None:
        """Round-robin: the first member after the last one picked for which `eligible(client_id)` is true.

        O(1) when the next member is eligible; O(members) at worst. Returns None (and leaves the rotation
        as it was) when no member is eligible.
        """
        rotation = self._rotation
        for _ in range(len(rotation)):
            client_id = rotation[0]
            rotation.rotate(-1)
            if eligible(client_id):
                return client_id, self.members[client_id]
        return None

    def _add(self, client_id: str, options: T) -> bool:
        """Add a member or replace its options; True if it is new. A replaced member keeps its turn."""
        is_new = client_id not in self.members
        self.members[client_id] = options
        if is_new:
            self._rotation.append(client_id)
        return is_new

    def _remove(self, client_id: str) -> bool:
        """Remove a member; True if it was one. O(members), which is rare next to pick()."""
        if client_id not in self.members:
            return False
        del self.members[client_id]
        self._rotation.remove(client_id)
        return True


class _SubscriptionNode(Generic[T]):
    """One level of the subscription trie; the path from the root spells a topic filter.

    The '+' and '#' children live in their own slots so that matching reads them without a dict lookup.
    Every container is None until used, so that leaves (most nodes) stay small.
    """

    __slots__ = ("children", "groups", "multi", "single", "subscriber_items", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _SubscriptionNode[T]] | None = None  # literal levels
        self.single: _SubscriptionNode[T] | None = None  # the '+' child
        self.multi: _SubscriptionNode[T] | None = None  # the '#' child (always a leaf)
        self.subscribers: dict[str, T] | None = None  # client_id -> options, non-shared
        # tuple(subscribers.items()), built by the first match after a change (None: stale). Extending the
        # match result from a ready tuple copies references; dict.items() would build a new pair per entry.
        self.subscriber_items: tuple[tuple[str, T], ...] | None = None
        self.groups: dict[str, SharedGroup[T]] | None = None  # ShareName -> group

    def is_empty(self) -> bool:
        return not (self.children or self.single or self.multi or self.subscribers or self.groups)

    def set_subscriber(self, client_id: str, options: T) -> None:
        if self.subscribers is None:
            self.subscribers = {}
        self.subscribers[client_id] = options
        self.subscriber_items = None

    def remove_subscriber(self, client_id: str) -> None:
        if self.subscribers is not None:
            self.subscribers.pop(client_id, None)
            if not self.subscribers:
                self.subscribers = None
        self.subscriber_items = None

    def child(self, level: str) -> _SubscriptionNode[T] | None:
        if level == SINGLE_LEVEL_WILDCARD:
            return self.single
        if level == MULTI_LEVEL_WILDCARD:
            return self.multi
        return None if self.children is None else self.children.get(level)

    def child_or_new(self, level: str) -> _SubscriptionNode[T]:
        node = self.child(level)
        if node is not None:
            return node
        node = _SubscriptionNode()
        if level == SINGLE_LEVEL_WILDCARD:
            self.single = node
        elif level == MULTI_LEVEL_WILDCARD:
            self.multi = node
        else:
            if self.children is None:
                self.children = {}
            self.children[level] = node
        return node

    def remove_child(self, level: str) -> None:
        if level == SINGLE_LEVEL_WILDCARD:
            self.single = None
        elif level == MULTI_LEVEL_WILDCARD:
            self.multi = None
        elif self.children is not None:
            self.children.pop(level, None)
            if not self.children:
                self.children = None


class Router(Generic[T]):
    """Subscription trie by topic level with '+' and '#' children; match in O(depth) (x wildcard branching).

    Holds both ordinary subscriptions and shared-subscription groups, plus an index by client so that a
    client's subscriptions are found and removed without walking the trie.
    """

    __slots__ = ("_by_client", "_root", "_routes", "_subscription_count")

    def __init__(self) -> None:
        self._root: _SubscriptionNode[T] = _SubscriptionNode()
        # Topic -> its `match` result, while no subscription changes (any change clears it): a device
        # publishes on the same few topics again and again, and a lookup costs a fraction of a walk.
        self._routes: dict[str, tuple[list[tuple[str, T]], list[SharedGroup[T]]]] = {}
        # client_id -> full filter (including any "$share/name/" prefix) -> options
        self._by_client: dict[str, dict[str, T]] = {}
        self._subscription_count = 0

    @property
    def subscription_count(self) -> int:
        """Number of (client, full filter) subscriptions, shared memberships included."""
        return self._subscription_count

    def subscribe(self, client_id: str, topic_filter: str, options: T) -> bool:
        """Add or replace the subscription of `client_id` to `topic_filter` (which may be "$share/g/f").

        Returns True if this (client, full filter) is new, False if it replaced the existing options: a
        subscription with an identical filter replaces the previous one [MQTT-3.8.4-3].
        Raises ValueError for a malformed filter or $share prefix.
        """
        share_name, plain_filter = parse_shared(topic_filter)
        if not is_valid_topic_filter(plain_filter):
            raise ValueError(f"invalid topic filter {topic_filter!r}")
        self._routes.clear()
        client_subscriptions = self._by_client.get(client_id)
        if client_subscriptions is None:
            client_subscriptions = self._by_client[client_id] = {}
        is_new = topic_filter not in client_subscriptions
        client_subscriptions[topic_filter] = options

        node = self._root
        for level in plain_filter.split(LEVEL_SEPARATOR):
            node = node.child_or_new(level)
        if share_name is None:
            node.set_subscriber(client_id, options)
        else:
            if node.groups is None:
                node.groups = {}
            group = node.groups.get(share_name)
            if group is None:
                group = node.groups[share_name] = SharedGroup(share_name, plain_filter)
            group._add(client_id, options)
        if is_new:
            self._subscription_count += 1
        return is_new

    def unsubscribe(self, client_id: str, topic_filter: str) -> bool:
        """Remove one subscription (full filter as subscribed); True if it existed. Prunes emptied nodes."""
        client_subscriptions = self._by_client.get(client_id)
        if client_subscriptions is None or topic_filter not in client_subscriptions:
            return False
        self._routes.clear()
        del client_subscriptions[topic_filter]
        if not client_subscriptions:
            del self._by_client[client_id]
        self._subscription_count -= 1

        # The filter was accepted by subscribe(), so it parses and its nodes exist.
        share_name, plain_filter = parse_shared(topic_filter)
        levels = plain_filter.split(LEVEL_SEPARATOR)
        path = [self._root]
        for level in levels:
            child = path[-1].child(level)
            if child is None:  # pragma: no cover - the client index and the trie agree by construction
                raise AssertionError(f"router trie lost the node for {topic_filter!r}")
            path.append(child)
        leaf = path[-1]
        if share_name is None:
            leaf.remove_subscriber(client_id)
        elif leaf.groups is not None:
            group = leaf.groups.get(share_name)
            if group is not None:
                group._remove(client_id)
                if not group.members:
                    del leaf.groups[share_name]
                    if not leaf.groups:
                        leaf.groups = None
        # Prune from the leaf upwards so that memory does not grow with subscribe/unsubscribe churn.
        for depth in range(len(levels) - 1, -1, -1):
            if not path[depth + 1].is_empty():
                break
            path[depth].remove_child(levels[depth])
        return True

    def unsubscribe_all(self, client_id: str) -> None:
        """Remove every subscription of `client_id`, in O(its subscriptions x depth)."""
        client_subscriptions = self._by_client.get(client_id)
        if client_subscriptions is None:
            return
        for topic_filter in list(client_subscriptions):
            self.unsubscribe(client_id, topic_filter)

    def subscriptions_of(self, client_id: str) -> dict[str, T]:
        """A copy of the client's subscriptions: full filter (including "$share/name/") -> options."""
        client_subscriptions = self._by_client.get(client_id)
        return {} if client_subscriptions is None else dict(client_subscriptions)

    def match(self, topic: str) -> tuple[list[tuple[str, T]], list[SharedGroup[T]]]:
        """The subscriptions whose filter matches the Topic Name `topic`.

        Returns (non-shared, groups): one (client_id, options) per matching (client, filter) pair, so that a
        client with overlapping filters appears once per filter and the broker merges them; and every shared
        group whose filter matches. Raises ValueError if `topic` contains a wildcard (it is not a Topic Name).
        The lists may be the ones returned for the same topic before: read them, do not mutate them.
        """
        routes = self._routes
        cached = routes.get(topic)
        if cached is not None:
            return cached
        result = self._walk(topic)
        if len(result[0]) + len(result[1]) <= ROUTE_CACHE_MATCHES and len(topic) <= ROUTE_CACHE_TOPIC_LENGTH:
            if len(routes) >= ROUTE_CACHE_TOPICS:
                routes.clear()
            routes[topic] = result
        return result

    def _walk(self, topic: str) -> tuple[list[tuple[str, T]], list[SharedGroup[T]]]:
        """`match` without the cache: the walk down the trie."""
        if SINGLE_LEVEL_WILDCARD in topic or MULTI_LEVEL_WILDCARD in topic:
            raise ValueError(f"topic {topic!r} contains a wildcard character [MQTT-3.3.2-2]")
        matched: list[tuple[str, T]] = []
        groups: list[SharedGroup[T]] = []
        nodes = [self._root]
        # '+' or '#' as the first level never matches a topic starting with '$' [MQTT-4.7.2-1]
        wildcards_match = not topic.startswith("$")
        for level in topic.split(LEVEL_SEPARATOR):
            next_nodes: list[_SubscriptionNode[T]] = []
            for node in nodes:
                if wildcards_match:
                    multi = node.multi
                    if multi is not None:
                        # '#' matches this level and everything below it [MQTT-4.7.1-2]
                        _add_matches(multi, matched, groups)
                    single = node.single
                    if single is not None:
                        next_nodes.append(single)
                children = node.children
                if children is not None:
                    exact = children.get(level)
                    if exact is not None:
                        next_nodes.append(exact)
            if not next_nodes:
                return matched, groups
            nodes = next_nodes
            wildcards_match = True
        for node in nodes:
            _add_matches(node, matched, groups)
            # "a/#" also matches "a", the parent level [MQTT-4.7.1-2]
            multi = node.multi
            if multi is not None:
                _add_matches(multi, matched, groups)
        return matched, groups


def _add_matches(
    node: _SubscriptionNode[T], matched: list[tuple[str, T]], groups: list[SharedGroup[T]]
) -> None:
    """Append the subscriptions held by a node whose filter matches to the match result."""
    if node.subscribers:
        items = node.subscriber_items
        if items is None:
            items = node.subscriber_items = tuple(node.subscribers.items())
        matched.extend(items)
    if node.groups:
        groups.extend(node.groups.values())


class _RetainedNode(Generic[M]):
    """One level of the retained-message trie; `entry` is (topic, message) if a message is retained here."""

    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _RetainedNode[M]] | None = None
        self.entry: tuple[str, M] | None = None


class RetainedIndex(Generic[M]):
    """Retained messages by topic, in a trie of levels so that a filter finds its matches without a scan."""

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _RetainedNode[M] = _RetainedNode()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def set(self, topic: str, message: M) -> None:
        """Retain `message` for `topic`, replacing any message retained there (one per topic, §3.3.1.3).

        Raises ValueError if `topic` is not a valid Topic Name.
        """
        if not is_valid_topic_name(topic):
            raise ValueError(f"invalid topic name {topic!r}")
        node = self._root
        for level in topic.split(LEVEL_SEPARATOR):
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(level)
            if child is None:
                child = children[level] = _RetainedNode()
            node = child
        if node.entry is None:
            self._count += 1
        node.entry = (topic, message)

    def clear(self, topic: str) -> bool:
        """Remove the message retained for `topic`; True if there was one. Prunes emptied nodes."""
        levels = topic.split(LEVEL_SEPARATOR)
        path = [self._root]
        for level in levels:
            children = path[-1].children
            child = None if children is None else children.get(level)
            if child is None:
                return False
            path.append(child)
        leaf = path[-1]
        if leaf.entry is None:
            return False
        leaf.entry = None
        self._count -= 1
        for depth in range(len(levels) - 1, -1, -1):
            node = path[depth + 1]
            if node.children or node.entry is not None:
                break
            parent_children = path[depth].children
            assert parent_children is not None  # it holds `node`
            del parent_children[levels[depth]]
            if not parent_children:
                path[depth].children = None
        return True

    def get(self, topic: str) -> M | None:
        """The message retained for `topic`, or None."""
        node = self._root
        for level in topic.split(LEVEL_SEPARATOR):
            children = node.children
            if children is None:
                return None
            child = children.get(level)
            if child is None:
                return None
            node = child
        return None if node.entry is None else node.entry[1]

    def match(self, topic_filter: str) -> Iterator[tuple[str, M]]:
        """(topic, message) for every retained topic that the plain `topic_filter` matches.

        Same rules as routing, including [MQTT-4.7.2-1] for '$' topics. The result is a snapshot, so the index
        may be changed while the caller iterates. Raises ValueError for an invalid filter.
        """
        if not is_valid_topic_filter(topic_filter):
            raise ValueError(f"invalid topic filter {topic_filter!r}")
        levels = topic_filter.split(LEVEL_SEPARATOR)
        level_count = len(levels)
        found: list[tuple[str, M]] = []
        pending: list[tuple[_RetainedNode[M], int]] = [(self._root, 0)]
        while pending:
            node, depth = pending.pop()
            if depth == level_count:
                if node.entry is not None:
                    found.append(node.entry)
                continue
            level = levels[depth]
            children = node.children
            if level == MULTI_LEVEL_WILDCARD:
                # This node (the parent level, "a/#" matches "a") and its whole subtree [MQTT-4.7.1-2]
                if node.entry is not None:
                    found.append(node.entry)
                if children is not None:
                    if depth == 0:
                        # '#' as the first level skips topics starting with '$' [MQTT-4.7.2-1]
                        subtree = [child for name, child in children.items() if not name.startswith("$")]
                    else:
                        subtree = list(children.values())
                    _collect_subtree(subtree, found)
            elif children is None:
                continue
            elif level == SINGLE_LEVEL_WILDCARD:
                for name, child in children.items():
                    if depth == 0 and name.startswith("$"):
                        continue  # [MQTT-4.7.2-1]
                    pending.append((child, depth + 1))
            else:
                exact = children.get(level)
                if exact is not None:
                    pending.append((exact, depth + 1))
        return iter(found)

    def items(self) -> Iterator[tuple[str, M]]:
        """Every (topic, message) retained, as a snapshot."""
        found: list[tuple[str, M]] = []
        if self._root.children is not None:
            _collect_subtree(list(self._root.children.values()), found)
        return iter(found)


def _collect_subtree(stack: list[_RetainedNode[M]], found: list[tuple[str, M]]) -> None:
    """Append the entry of every node in the subtrees rooted at `stack` (consumed) to `found`."""
    while stack:
        node = stack.pop()
        if node.entry is not None:
            found.append(node.entry)
        if node.children is not None:
            stack.extend(node.children.values())

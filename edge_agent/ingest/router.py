"""Which pipelines take a topic: MQTT filter matching with a bounded cache."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TopicRouter", "filter_covers", "filter_matches", "filters_overlap"]


def filter_matches(flt: str, topic: str) -> bool:
    """MQTT 3.1.1/5 section 4.7 matching of a topic name against a filter."""
    if topic.startswith("$") and not flt.startswith("$"):
        return False  # 4.7.2: wildcards at the first level never match $SYS topics
    f_parts = flt.split("/")
    t_parts = topic.split("/")
    for i, f in enumerate(f_parts):
        if f == "#":
            return True
        if i >= len(t_parts):
            return False
        if f != "+" and f != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


def filter_covers(a: str, b: str) -> bool:
    """Whether every topic that filter `b` matches is also matched by filter `a`."""
    if b.startswith("$") and not a.startswith("$") and a[:1] in ("+", "#"):
        return False  # wildcards at the first level never match $ topics
    ap, bp = a.split("/"), b.split("/")
    for i, x in enumerate(ap):
        if x == "#":
            return True  # also covers the parent level ("a/#" matches "a")
        if i >= len(bp):
            return False
        y = bp[i]
        if y == "#":
            return False
        if x != "+" and x != y:
            return False  # a literal covers only the same literal
    return len(ap) == len(bp)


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic matches both filters (conservative about $ topics)."""
    ap, bp = a.split("/"), b.split("/")
    for i in range(max(len(ap), len(bp))):
        x = ap[i] if i < len(ap) else None
        y = bp[i] if i < len(bp) else None
        if x == "#" or y == "#":
            return True  # '#' also matches the parent level, so a shorter side still fits
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True


class TopicRouter:
    """Maps a topic to the indexes of the pipelines whose filters match it."""

    def __init__(
        self,
        filters: Sequence[Sequence[str]],
        cache_size: int = 65536,
        cache_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._filters = [tuple(f) for f in filters]
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_size = cache_size
        # Bounded in characters too: 65,536 topics of 60 KB would be 4 GB. A topic
        # flood past either bound clears the cache (a miss only costs a match again).
        self._cache_bytes = cache_bytes
        self._cached_chars = 0
        self._first_chars = 0
        self.subscriptions = self.all_filters
        # MQTT 5 Subscription Identifiers, 1.. in subscription order; only needed when
        # two subscriptions overlap. Without them PUBLISH packets carry no properties,
        # which paho decodes several times faster.
        subs = self.subscriptions
        self.needs_ids = any(
            filters_overlap(f, g) for i, f in enumerate(subs) for g in subs[i + 1 :]
        )
        self.sub_ids = {f: i + 1 for i, f in enumerate(subs)}
        self._first: dict[str, int] = {}

    def first_copy(self, topic: str, ids: Sequence[int]) -> bool:
        """Whether this copy of a message is the one to process.

        With overlapping subscriptions a broker may send one copy per matching
        subscription, each carrying its Subscription Identifier (MQTT 5 3.3.4), or
        one copy carrying them all. The copy that carries the lowest identifier among
        the subscriptions matching its topic is processed; the others are only
        acknowledged.
        """
        first = self._first.get(topic)
        if first is None:
            first = min((i for f, i in self.sub_ids.items() if filter_matches(f, topic)), default=0)
            if len(self._first) >= self._cache_size or self._first_chars > self._cache_bytes:
                self._first.clear()
                self._first_chars = 0
            self._first[topic] = first
            self._first_chars += len(topic)
        return first == 0 or first in ids

    def route(self, topic: str) -> tuple[int, ...]:
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        hit = tuple(
            i for i, flts in enumerate(self._filters) if any(filter_matches(f, topic) for f in flts)
        )
        if len(self._cache) >= self._cache_size or self._cached_chars > self._cache_bytes:
            self._cache.clear()  # a topic flood cannot grow memory without bound
            self._cached_chars = 0
        self._cache[topic] = hit
        self._cached_chars += len(topic)
        return hit

    @property
    def all_filters(self) -> list[str]:
        """The filters to subscribe to: every distinct one not covered by another.

        With overlapping subscriptions a broker may send one copy of a message per
        matching filter (MQTT 5 3.3.4; mosquitto does), and each copy would be counted.
        Routing is by topic, so one subscription per topic is all we need.
        """
        seen: dict[str, None] = {}
        for flts in self._filters:
            for f in flts:
                seen.setdefault(f, None)
        distinct = list(seen)
        return [
            f
            for i, f in enumerate(distinct)
            if not any(
                j != i and filter_covers(g, f) and not (filter_covers(f, g) and j > i)
                for j, g in enumerate(distinct)
            )
        ]

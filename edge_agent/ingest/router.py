"""Which pipelines take a topic: MQTT filter matching with a bounded cache."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TopicRouter", "filter_matches"]


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


class TopicRouter:
    """Maps a topic to the indexes of the pipelines whose filters match it."""

    def __init__(self, filters: Sequence[Sequence[str]], cache_size: int = 65536) -> None:
        self._filters = [tuple(f) for f in filters]
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_size = cache_size

    def route(self, topic: str) -> tuple[int, ...]:
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        hit = tuple(
            i for i, flts in enumerate(self._filters) if any(filter_matches(f, topic) for f in flts)
        )
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # a topic flood cannot grow memory without bound
        self._cache[topic] = hit
        return hit

    @property
    def all_filters(self) -> list[str]:
        """Every distinct filter, in first-seen order (what to subscribe to)."""
        seen: dict[str, None] = {}
        for flts in self._filters:
            for f in flts:
                seen.setdefault(f, None)
        return list(seen)

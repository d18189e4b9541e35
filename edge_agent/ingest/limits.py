"""Per-pipeline input limits: a cap on distinct keys and an optional rate per key.

Both filter a decoded batch of readings before the window engine sees it, and
count what they drop. The common case (no per-key rate, fewer keys than the cap)
costs one comparison per batch, not per reading.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["KeyLimits"]

Reading = tuple[str, float, float]


class KeyLimits:
    """`max_keys` distinct keys held at once; `max_key_rate` readings/s per key (burst: 1 s)."""

    def __init__(self, max_keys: int, max_key_rate: float | None) -> None:
        self.max_keys = max_keys
        self.rate = max_key_rate
        self.burst = max(1.0, max_key_rate or 0.0)
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last wall time]
        self.over_key_cap = 0
        self.over_key_rate = 0

    def admit(
        self, readings: list[Reading], wall: float, key_count: int, known: Callable[[str], bool]
    ) -> list[Reading]:
        """The readings that pass; the rest are counted by reason."""
        out = readings
        if key_count + len(readings) > self.max_keys:
            out, seen = [], set()
            n = key_count
            for r in readings:
                k = r[0]
                if known(k) or k in seen:
                    out.append(r)
                elif n < self.max_keys:
                    seen.add(k)
                    n += 1
                    out.append(r)
                else:
                    self.over_key_cap += 1
        if self.rate is not None:
            out = self._rate(out, wall)
        return out

    def _rate(self, readings: list[Reading], wall: float) -> list[Reading]:
        rate, burst, buckets = self.rate, self.burst, self._buckets
        assert rate is not None
        out = []
        for r in readings:
            b = buckets.get(r[0])
            if b is None:
                if len(buckets) >= 4 * self.max_keys:
                    buckets.clear()  # bounded: forgetting a bucket only refills it
                b = buckets[r[0]] = [burst, wall]
            tokens = min(burst, b[0] + (wall - b[1]) * rate)
            b[1] = wall
            if tokens >= 1.0:
                b[0] = tokens - 1.0
                out.append(r)
            else:
                b[0] = tokens
                self.over_key_rate += 1
        return out

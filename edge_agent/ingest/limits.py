"""Per-pipeline input limits: a cap on distinct keys and an optional rate per key.

Both filter a decoded batch of readings before the window engine sees it, and
count what they drop. The common case (no per-key rate, fewer keys than the cap)
costs one comparison per batch, not per reading.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MAX_KEY_BYTES", "KeyLimits"]

# The names of the keys a pipeline holds (each key's open windows live under its
# name) are bounded in characters, not only in count: 1,000 keys of 60 KB topic names
# would otherwise hold 60 MB. Past this, readings of further new keys are rejected
# (`over_key_bytes`); keys already held go on.
MAX_KEY_BYTES = 8 * 1024 * 1024

Reading = tuple[str, float, float]


class KeyLimits:
    """`max_keys` distinct keys held at once; `max_key_rate` readings/s per key (burst: 1 s)."""

    def __init__(
        self, max_keys: int, max_key_rate: float | None, max_key_bytes: int = MAX_KEY_BYTES
    ) -> None:
        self.max_keys = max_keys
        self.max_key_bytes = max_key_bytes
        # An upper bound of the characters in held key names: every admitted reading's
        # key adds its length (known keys too), and the exact figure is asked for
        # (`key_bytes()`, linear in the keys held) only when the bound reaches the limit.
        self._bytes_bound = 0
        self.rate = max_key_rate
        self.burst = max(1.0, max_key_rate or 0.0)
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last wall time]
        self.over_key_cap = 0
        self.over_key_rate = 0
        self.over_key_bytes = 0

    def admit(
        self,
        readings: list[Reading],
        wall: float,
        key_count: int,
        known: Callable[[str], bool],
        key_bytes: Callable[[], int] | None = None,
    ) -> list[Reading]:
        """The readings that pass; the rest are counted by reason.

        `key_bytes` (the characters in the names of the keys held) turns the byte
        bound on; without it only the count is bounded.
        """
        out = readings
        check_bytes = False
        if key_bytes is not None:
            added = sum([len(r[0]) for r in readings])
            if self._bytes_bound + added > self.max_key_bytes:
                self._bytes_bound = key_bytes()  # exact again
                check_bytes = self._bytes_bound + added > self.max_key_bytes
            if not check_bytes:
                self._bytes_bound += added
        if check_bytes or key_count + len(readings) > self.max_keys:
            out, seen = [], set()
            n = key_count
            held = self._bytes_bound
            for r in readings:
                k = r[0]
                if known(k) or k in seen:
                    out.append(r)
                elif n >= self.max_keys:
                    self.over_key_cap += 1
                elif check_bytes and held + len(k) > self.max_key_bytes:
                    self.over_key_bytes += 1
                else:
                    seen.add(k)
                    n += 1
                    held += len(k)
                    out.append(r)
            self._bytes_bound = held
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

"""Count windows and window = "none" (SPEC 3).

Count windows fire every `size` readings of a key in arrival order; start/end are
the earliest/latest event time among them (both inclusive). No watermark, no
lateness; a partial window fires when its key goes idle. Memory per key: ~150
bytes plus one partial (see aggregates.py).

"none" keeps no state: each reading becomes {"pipeline", "key", "ts", "value"}.
"""

from __future__ import annotations

from math import inf
from typing import Any

from edge_agent.windows.aggregates import Partial
from edge_agent.windows.base import Emitted, PipelineSettings, Reading, WindowEngine

__all__ = ["CountEngine", "PassThrough"]


class _Key:
    __slots__ = ("hi", "lo", "n", "p", "queued", "wall")

    def __init__(self, p: Partial) -> None:
        self.n = 0
        self.lo = inf
        self.hi = -inf
        self.p = p
        self.wall = 0.0
        self.queued = False


class CountEngine(WindowEngine):
    def __init__(self, cfg: PipelineSettings) -> None:
        super().__init__(cfg)
        self._size = cfg.spec.size  # validated: an int >= 1

    def process(self, readings: list[Reading], wall: float, out: Emitted) -> None:
        keys = self._keys
        dirty_add = self._dirty.add
        add = self.aggs.add
        size = self._size
        for key, ts, v in readings:
            k = keys.get(key)
            if k is None:
                k = keys[key] = _Key(self.aggs.new())
            k.wall = wall
            if not k.queued:
                self._queue(key, k, wall)
            add(k.p, ts, v)
            if ts < k.lo:
                k.lo = ts
            if ts > k.hi:
                k.hi = ts
            k.n += 1
            if k.n >= size:
                self._fire(key, k, out)
            dirty_add(key)
        self.readings_in += len(readings)

    def _fire(self, key: str, k: _Key, out: Emitted) -> None:
        self._emit(out, key, k.lo, k.hi, 0, k.p)
        k.p = self.aggs.new()
        k.n = 0
        k.lo = inf
        k.hi = -inf

    def _go_idle(self, key: str, k: _Key, out: Emitted) -> None:
        if k.n:
            self._fire(key, k, out)

    def _dump_key(self, k: _Key) -> list[Any]:
        return [k.n, k.lo, k.hi, k.wall, self.aggs.dump(k.p)]

    def _load_key(self, data: list[Any]) -> _Key:
        k = _Key(self.aggs.load(data[4]))
        k.n, k.lo, k.hi, k.wall = data[:4]
        return k

    def open_windows(self) -> int:
        return sum(1 for k in self._keys.values() if k.n)


class PassThrough(WindowEngine):
    """window = "none": readings pass through unchanged, nothing is kept."""

    def process(self, readings: list[Reading], wall: float, out: Emitted) -> None:
        name = self.name
        append = out.readings.append
        for key, ts, v in readings:
            append({"pipeline": name, "key": key, "ts": ts, "value": v})
        self.readings_in += len(readings)

    def _go_idle(self, key: str, k: Any, out: Emitted) -> None:
        return None

    def open_windows(self) -> int:
        return 0

"""Bounded quantile sketch for windows with more than 10,000 readings (SPEC 3 `pN`).

A deterministic Munro-Paterson / MRL compactor stack: level h holds items of
weight 2**h in an ``array('d')``. When a level reaches ``K`` items it is sorted and
every other item (alternating offset) moves one level up with double weight; an
odd item out stays behind. Total weight always equals the number of readings.

Error: a compaction at level h moves the rank of any value by at most 2**h and
consumes at least K - 1 items of weight 2**h, so over n readings each level adds
at most n / (K - 1) and the rank error is at most ``levels * n / (K - 1)`` with
``levels <= log2(n / K) + 2``. With K = 4096 that is < 0.5 % of n up to 1e9
readings (the SPEC allows 1 %).

Memory: at most K doubles per level, so <= 8 * K * levels bytes: 32 KiB per level,
e.g. ~300 KiB for 1e7 readings in one window. Sketches merge (sessions, panes)
level by level under the same bound.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from math import floor

__all__ = ["K", "Sketch"]

K = 4096


class Sketch:
    __slots__ = ("flip", "levels")

    def __init__(self) -> None:
        self.levels: list[array[float]] = [array("d")]
        self.flip = 0  # alternates the kept offset so errors do not all point one way

    @classmethod
    def of(cls, values: Iterable[float]) -> Sketch:
        sk = cls()
        sk.levels[0].extend(values)
        sk._settle()
        return sk

    def add(self, v: float) -> None:
        lvl0 = self.levels[0]
        lvl0.append(v)
        if len(lvl0) >= K:
            self._settle()

    def copy(self) -> Sketch:
        sk = Sketch()
        sk.levels = [array("d", lv) for lv in self.levels]
        sk.flip = self.flip
        return sk

    def merge(self, other: Sketch) -> None:
        levels = self.levels
        for h, lv in enumerate(other.levels):
            if h == len(levels):
                levels.append(array("d"))
            levels[h].extend(lv)
        self._settle()

    def _settle(self) -> None:
        levels = self.levels
        h = 0
        while h < len(levels):
            lv = levels[h]
            if len(lv) >= K:
                items = sorted(lv)
                keep = array("d")
                if len(items) % 2:
                    keep.append(items.pop())  # odd one out keeps its weight here
                up = items[self.flip :: 2]
                self.flip ^= 1
                levels[h] = keep
                if h + 1 == len(levels):
                    levels.append(array("d"))
                levels[h + 1].extend(up)
            h += 1

    def weight(self) -> int:
        return sum(len(lv) << h for h, lv in enumerate(self.levels))

    def quantile(self, q: float) -> float:
        """Value at quantile q (0..1), interpolated between closest ranks like numpy."""
        pairs = sorted((v, 1 << h) for h, lv in enumerate(self.levels) for v in lv)
        n = sum(w for _, w in pairs)
        pos = _virtual_index(n, q)
        lo = floor(pos)
        a = b = pairs[-1][0]
        cum = 0
        found_a = False
        for v, w in pairs:
            cum += w  # ranks [cum - w, cum) hold v
            if not found_a and lo < cum:
                a = v
                found_a = True
            if lo + 1 < cum:
                b = v
                break
        return lerp(a, b, pos - lo)

    def dump(self) -> list[object]:
        return [self.flip, *(lv.tobytes() for lv in self.levels)]

    @classmethod
    def load(cls, data: list[object]) -> Sketch:
        sk = cls()
        sk.flip = int(data[0])  # type: ignore[call-overload]
        sk.levels = []
        for raw in data[1:]:
            lv = array("d")
            lv.frombytes(raw)  # type: ignore[arg-type]
            sk.levels.append(lv)
        return sk


def _virtual_index(n: int, q: float) -> float:
    # numpy's "linear" method: n*q + (alpha + q*(1 - alpha - beta)) - 1 with alpha = beta = 1
    pos = n * q + (1.0 - q) - 1.0
    if pos < 0.0:
        return 0.0
    if pos > n - 1:
        return float(n - 1)
    return pos


def lerp(a: float, b: float, t: float) -> float:
    """numpy's _lerp: exact at both ends, monotone in t."""
    d = b - a
    if t >= 0.5:
        return b - d * (1.0 - t)
    return a + d * t


def exact_quantile(sorted_values: list[float], q: float) -> float:
    """numpy.percentile(values, 100*q) default ("linear") on an already sorted list."""
    n = len(sorted_values)
    pos = _virtual_index(n, q)
    lo = floor(pos)
    hi = lo + 1 if lo + 1 < n else lo
    return lerp(sorted_values[lo], sorted_values[hi], pos - lo)

"""Exact epoch-aligned window grid for tumbling and sliding windows.

Float division alone misplaces readings on boundaries (``0.3 / 0.1 == 2.9999999999999996``),
so durations are turned into exact fractions (``0.1`` -> 1/10; the simplest fraction
with denominator <= 1e9 that rounds to the configured float, else the float's own
exact value). Boundary ``i`` of the grid is the double nearest the exact rational
``i * width``, computed with Python's correctly rounded int / int division, and a
reading at t belongs to the slice whose boundaries satisfy ``lo <= t < hi`` in
plain float comparisons. So a timestamp written as the decimal boundary
(``1700000000.3`` with 100 ms windows) opens the window that starts there, every
reading lands in exactly one pane, and a record's ``[start, end)`` always
contains its readings. With integral durations (the common case) all bounds are
Python ints and the arithmetic is exact.

Panes: slices of width ``gcd(size, slide)``. Window k covers panes
``k*m .. k*m + np - 1`` (m = slide / pane, np = size / pane); pane j lies in the
windows ``ceil((j - np + 1) / m) .. floor(j / m)``. Tumbling is m = np = 1.
"""

from __future__ import annotations

from fractions import Fraction
from math import floor, gcd, inf, lcm

__all__ = ["Grid", "exact_fraction"]


def exact_fraction(x: float) -> Fraction:
    """The duration the user most likely wrote: 0.1 -> 1/10, 2.5 -> 5/2."""
    f = Fraction(x).limit_denominator(10**9)
    return f if float(f) == x else Fraction(x)


class Grid:
    __slots__ = ("d", "h", "m", "np", "pane", "pw", "s")

    def __init__(self, size: float, slide: float) -> None:
        fs, fh = exact_fraction(size), exact_fraction(slide)
        if fs <= 0 or fh <= 0:
            raise ValueError("window size and slide must be positive")
        d = lcm(fs.denominator, fh.denominator)
        s = fs.numerator * (d // fs.denominator)
        h = fh.numerator * (d // fh.denominator)
        p = gcd(s, h)
        self.d = d  # all bounds are (integer * units) / d
        self.pw = p  # pane width in units
        self.s = s
        self.h = h
        self.m = h // p
        self.np = s // p
        self.pane = p / d  # approximate pane width, only for a first guess

    def bound(self, j: int) -> int | float:
        """Start of pane j (= end of pane j - 1): the double nearest j * pane."""
        if self.d == 1:
            return j * self.pw
        return (j * self.pw) / self.d

    def pane_of(self, t: float) -> int:
        """The j with bound(j) <= t < bound(j + 1)."""
        j = floor(t / self.pane)  # a guess, off by one at most when t is near a bound
        p, d = self.pw, self.d
        if d == 1:
            while j * p > t:
                j -= 1
            while (j + 1) * p <= t:
                j += 1
        else:
            while (j * p) / d > t:
                j -= 1
            while ((j + 1) * p) / d <= t:
                j += 1
        return j

    def start(self, k: int) -> int | float:
        x = k * self.m * self.pw
        return x if self.d == 1 else x / self.d

    def end(self, k: int) -> int | float:
        x = (k * self.m + self.np) * self.pw
        return x if self.d == 1 else x / self.d

    def first_window(self, j: int) -> int:
        """Lowest window index covering pane j."""
        return -((self.np - 1 - j) // self.m)

    def last_window(self, j: int) -> int:
        """Highest window index covering pane j."""
        return j // self.m

    def last_closed(self, wm: float) -> int | float:
        """Highest window index with end <= wm (-inf when none)."""
        if wm == -inf:
            return -inf
        if wm == inf:
            return inf
        return (self.pane_of(wm) - self.np) // self.m

"""Window partials: the running state of SPEC 3 aggregates, and how to combine them.

A partial is a plain list (cheap to create, index, copy and serialise)::

    [0] n  [1] sum  [2] mean  [3] m2  [4] min  [5] max
    [6] first_ts  [7] first_v  [8] last_ts  [9] last_v  [10] values

Only the slots the configured aggregates need are updated: `add` is one of the
straight-line kernels in `_kernels.py` (written by `_kernels_gen.py` and checked in),
picked per aggregate set, so the per-reading path has no branches for unused aggregates.
`mean` comes from `sum / n` unless `stddev` is configured, which keeps Welford's
running mean and m2 (numerically sane; partials combine with Chan's formula).
`values` exists only when a `pN` is configured: an ``array('d')`` (8 bytes per
reading) up to 10,000 readings, then a bounded `Sketch` (see sketch.py).

Memory per partial: ~190 bytes (11-slot list, floats shared until written),
plus 8 bytes per reading up to 10,000 when a percentile is configured.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterable, Sequence
from math import inf, sqrt
from typing import Any

from edge_agent.errors import ConfigError
from edge_agent.windows._kernels import ADD, COMBINE, EXACT_LIMIT, MERGED
from edge_agent.windows.sketch import Sketch, exact_quantile

__all__ = ["EXACT_LIMIT", "Aggregates"]

N, SUM, MEAN, M2, MIN, MAX, FT, FV, LT, LV, VALS = range(11)

_SIMPLE = ("count", "sum", "min", "max", "mean", "first", "last", "stddev")
_PCT = re.compile(r"p([1-9][0-9]?)\Z")

Partial = list[Any]  # the layout above


class Aggregates:
    """Everything about one pipeline's aggregate list: new/add/combine/fill/dump/load."""

    __slots__ = (
        "_outs",
        "_template",
        "add",
        "combine",
        "fresh",
        "merged",
        "names",
        "pct",
        "record",
    )

    def __init__(self, names: Sequence[str]) -> None:
        outs: list[tuple[str, str, float]] = []
        for name in names:
            if name in _SIMPLE:
                if name != "count":
                    outs.append((name, name, 0.0))
            elif m := _PCT.match(name):
                outs.append((name, "p", int(m.group(1)) / 100))
            else:
                raise ConfigError(f"unknown aggregate {name!r}")
        self.names = tuple(names)
        self._outs = tuple(dict.fromkeys(outs))
        kinds = {k for _, k, _ in outs}
        self.pct = "p" in kinds
        welford = "stddev" in kinds
        self._template: list[object] = [0, 0.0, 0.0, 0.0, inf, -inf, inf, 0.0, -inf, 0.0, None]
        use_sum = ("sum" in kinds) or ("mean" in kinds and not welford)
        minmax = "min" in kinds or "max" in kinds
        firstlast = "first" in kinds or "last" in kinds
        # the kernels' index: bits use_sum, welford, minmax, firstlast, pct (_kernels_gen.FLAGS)
        i = use_sum << 4 | welford << 3 | minmax << 2 | firstlast << 1 | self.pct
        self.add: Callable[[Partial, float, float], None] = ADD[i]
        # combine(dst, src) folds src into dst; src's readings are all earlier or all
        # later in event time than dst's (panes, sessions), so first/last need no tie rule
        self.combine: Callable[[Partial, Partial], None] = COMBINE[i]
        # merged(parts) -> a new partial of all parts (in event-time order; None for a
        # missing pane), for firing a sliding window from its panes in one call
        self.merged: Callable[[Iterable[Partial | None]], Partial] = MERGED[i]
        self.record: Callable[..., dict[str, object]] = _make_record(self._outs, welford)
        # fresh() -> a new partial, as new() without the method call when no values array
        self.fresh: Callable[[], Partial] = self.new if self.pct else self._template.copy

    def new(self) -> Partial:
        p = self._template.copy()
        if self.pct:
            p[VALS] = array("d")
        return p

    def copy(self, p: Partial) -> Partial:
        q = p.copy()
        vals = q[VALS]
        if vals is not None:
            q[VALS] = array("d", vals) if vals.__class__ is array else vals.copy()
        return q

    @staticmethod
    def dump(p: Partial) -> list[object]:
        vals = p[VALS]
        if vals is None:
            return p[:VALS]
        if vals.__class__ is array:
            return [*p[:VALS], vals.tobytes()]
        return [*p[:VALS], vals.dump()]

    @staticmethod
    def load(data: list[object]) -> Partial:
        p = list(data)
        if len(p) == VALS:
            p.append(None)
        else:
            raw = p[VALS]
            if isinstance(raw, bytes):
                a = array("d")
                a.frombytes(raw)
                p[VALS] = a
            else:
                p[VALS] = Sketch.load(raw)  # type: ignore[arg-type]
        return p


def _quantile(p: Partial, srt: list[float] | None, q: float) -> float:
    vals = p[VALS]
    if vals.__class__ is Sketch:
        return vals.quantile(q)
    return exact_quantile(srt, q)  # type: ignore[arg-type]


def _stddev(p: Partial) -> float:
    """Sample standard deviation (n - 1); 0 for a single reading."""
    n = p[N]
    return sqrt(max(p[M2], 0.0) / (n - 1)) if n > 1 else 0.0


_MEAN_OF_SUM, _STDDEV = -1, -2  # record fields computed from slots, not read from one


def _make_record(
    outs: tuple[tuple[str, str, float], ...], welford: bool
) -> Callable[..., dict[str, object]]:
    """record(pipeline, key, start, end, rev, p) -> the SPEC 4 window record.

    Entries follow the configured order; `count` is always there. A field is a slot
    of the partial (read by index: the cheapest thing per fired window), or computed.
    """
    slot = {
        "sum": SUM,
        "mean": MEAN if welford else _MEAN_OF_SUM,
        "min": MIN,
        "max": MAX,
        "first": FV,
        "last": LV,
        "stddev": _STDDEV,
    }
    if not any(kind == "p" for _, kind, _ in outs):
        fields = tuple((name, slot[kind]) for name, kind, _ in outs)

        def record(
            pl: str, key: str, start: float, end: float, rev: int, p: Partial
        ) -> dict[str, object]:
            n = p[N]
            rec: dict[str, object] = {
                "pipeline": pl,
                "key": key,
                "start": start,
                "end": end,
                "rev": rev,
                "count": n,
            }
            for name, i in fields:
                rec[name] = p[i] if i >= 0 else p[SUM] / n if i == _MEAN_OF_SUM else _stddev(p)
            return rec

        return record

    mixed = tuple((name, -3 if kind == "p" else slot[kind], q) for name, kind, q in outs)

    def record_pct(
        pl: str, key: str, start: float, end: float, rev: int, p: Partial
    ) -> dict[str, object]:
        n = p[N]
        vals = p[VALS]
        srt = sorted(vals) if vals.__class__ is array else None
        rec: dict[str, object] = {
            "pipeline": pl,
            "key": key,
            "start": start,
            "end": end,
            "rev": rev,
            "count": n,
        }
        for name, i, q in mixed:
            if i >= 0:
                rec[name] = p[i]
            elif i == _MEAN_OF_SUM:
                rec[name] = p[SUM] / n
            elif i == _STDDEV:
                rec[name] = _stddev(p)
            else:
                rec[name] = _quantile(p, srt, q)
        return rec

    return record_pct

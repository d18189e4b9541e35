"""Window partials: the running state of SPEC 3 aggregates, and how to combine them.

A partial is a plain list (cheap to create, index, copy and serialise)::

    [0] n  [1] sum  [2] mean  [3] m2  [4] min  [5] max
    [6] first_ts  [7] first_v  [8] last_ts  [9] last_v  [10] values

Only the slots the configured aggregates need are updated: `add` is generated per
aggregate set so the per-reading path has no branches for unused aggregates.
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
from collections.abc import Callable, Sequence
from math import inf, sqrt

from edge_agent.errors import ConfigError
from edge_agent.windows.sketch import Sketch, exact_quantile

__all__ = ["EXACT_LIMIT", "Aggregates"]

EXACT_LIMIT = 10_000

N, SUM, MEAN, M2, MIN, MAX, FT, FV, LT, LV, VALS = range(11)

_SIMPLE = ("count", "sum", "min", "max", "mean", "first", "last", "stddev")
_PCT = re.compile(r"p([1-9][0-9]?)\Z")

Partial = list  # the layout above


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
        "window",
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
        flags = {
            "use_sum": ("sum" in kinds) or ("mean" in kinds and not welford),
            "welford": welford,
            "use_min": "min" in kinds,
            "use_max": "max" in kinds,
            "first": "first" in kinds,
            "last": "last" in kinds,
            "pct": self.pct,
        }
        self.add: Callable[[Partial, float, float], None] = _make_add(**flags)
        # combine(dst, src) folds src into dst; src's readings are all earlier or all
        # later in event time than dst's (panes, sessions), so first/last need no tie rule
        self.combine: Callable[[Partial, Partial], None] = _make_combine(**flags)
        # merged(parts) -> a new partial of all parts (in event-time order), for firing
        # a sliding window from its panes in one call
        self.merged: Callable[[list[Partial]], Partial] = _make_merged(**flags)
        self.record: Callable[..., dict[str, object]] = _make_record(self._outs, welford)
        # fresh() -> a new partial, as new() without the method call when no values array
        self.fresh: Callable[[], Partial] = self.new if self.pct else self._template.copy
        # window(pl, key, start, end, rev, parts) -> record(..., merged(parts)) in one call,
        # parts may yield None (missing panes); the same arithmetic in the same order, so
        # the same floats. None with a percentile: those need the values merged anyway.
        self.window: Callable[..., dict[str, object]] | None = (
            None if self.pct else _make_window(self._outs, **flags)
        )

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


def _merge_values(dst: Partial, src: Partial) -> None:
    a, b = dst[VALS], src[VALS]
    if a.__class__ is array and b.__class__ is array and len(a) + len(b) <= EXACT_LIMIT:
        a.extend(b)
        return
    sk = a if a.__class__ is Sketch else Sketch.of(a)
    if b.__class__ is Sketch:
        sk.merge(b)
    else:
        for v in b:
            sk.add(v)
    dst[VALS] = sk


def _make_combine(
    *,
    use_sum: bool,
    welford: bool,
    use_min: bool,
    use_max: bool,
    first: bool,
    last: bool,
    pct: bool,
) -> Callable[[Partial, Partial], None]:
    body = [
        "    n2 = src[0]",
        "    if not n2:",
        "        return",
        "    n1 = dst[0]",
        "    dst[0] = n1 + n2",
    ]
    if use_sum:
        body.append("    dst[1] += src[1]")
    if welford:  # Chan et al.'s pairwise update
        body += [
            "    if n1:",
            "        n = n1 + n2",
            "        d = src[2] - dst[2]",
            "        dst[2] += d * n2 / n",
            "        dst[3] += src[3] + d * d * n1 * n2 / n",
            "    else:",
            "        dst[2] = src[2]",
            "        dst[3] = src[3]",
        ]
    if use_min:
        body.append("    if src[4] < dst[4]: dst[4] = src[4]")
    if use_max:
        body.append("    if src[5] > dst[5]: dst[5] = src[5]")
    if first:
        body += ["    if src[6] < dst[6]:", "        dst[6] = src[6]", "        dst[7] = src[7]"]
    if last:
        body += ["    if src[8] > dst[8]:", "        dst[8] = src[8]", "        dst[9] = src[9]"]
    if pct:
        body.append("    _merge_values(dst, src)")
    return _compile("combine(dst, src)", body)  # type: ignore[return-value]


def _fold(
    *,
    use_sum: bool,
    welford: bool,
    use_min: bool,
    use_max: bool,
    first: bool,
    last: bool,
    skip_none: bool,
) -> list[str]:
    """Lines folding every partial of ``parts`` into locals n, s, mean, m2, lo, hi, ft..lv."""
    body = [
        "    n = 0; s = 0.0; mean = 0.0; m2 = 0.0; lo = _inf; hi = -_inf",
        "    ft = _inf; fv = 0.0; lt = -_inf; lv = 0.0",
        "    for src in parts:",
    ]
    if skip_none:
        body += ["        if src is None:", "            continue"]
    body += [
        "        n2 = src[0]",
        "        if not n2:",
        "            continue",
    ]
    if use_sum:
        body.append("        s += src[1]")
    if welford:
        body += [
            "        if n:",
            "            d = src[2] - mean",
            "            t = n + n2",
            "            mean += d * n2 / t",
            "            m2 += src[3] + d * d * n * n2 / t",
            "        else:",
            "            mean = src[2]",
            "            m2 = src[3]",
        ]
    body.append("        n += n2")
    if use_min:
        body.append("        if src[4] < lo: lo = src[4]")
    if use_max:
        body.append("        if src[5] > hi: hi = src[5]")
    if first:
        body += ["        if src[6] < ft:", "            ft = src[6]", "            fv = src[7]"]
    if last:
        body += ["        if src[8] > lt:", "            lt = src[8]", "            lv = src[9]"]
    return body


def _make_merged(
    *,
    use_sum: bool,
    welford: bool,
    use_min: bool,
    use_max: bool,
    first: bool,
    last: bool,
    pct: bool,
) -> Callable[[list[Partial]], Partial]:
    # Same arithmetic as combine, folded in locals: one call per fired window.
    body = _fold(
        use_sum=use_sum,
        welford=welford,
        use_min=use_min,
        use_max=use_max,
        first=first,
        last=last,
        skip_none=False,
    )
    body.append("    p = [n, s, mean, m2, lo, hi, ft, fv, lt, lv, None]")
    if pct:
        body += [
            "    vals = None",
            "    for src in parts:",
            "        if vals is None:",
            "            x = src[10]",
            "            p[10] = _array('d', x) if x.__class__ is _array else x.copy()",
            "            vals = True",
            "        else:",
            "            _merge_values(p, src)",
        ]
    body.append("    return p")
    return _compile("merged(parts)", body)  # type: ignore[return-value]


def _quantile(p: Partial, srt: list[float] | None, q: float) -> float:
    vals = p[VALS]
    if vals.__class__ is Sketch:
        return vals.quantile(q)
    return exact_quantile(srt, q)  # type: ignore[arg-type]


def _stddev(p: Partial) -> float:
    """Sample standard deviation (n - 1); 0 for a single reading."""
    n = p[N]
    return sqrt(max(p[M2], 0.0) / (n - 1)) if n > 1 else 0.0


def _make_record(
    outs: tuple[tuple[str, str, float], ...], welford: bool
) -> Callable[..., dict[str, object]]:
    """record(pipeline, key, start, end, rev, p) -> the SPEC 4 window record, one dict display."""
    body = ["    n = p[0]"]
    if any(kind == "p" for _, kind, _ in outs):
        body.append("    srt = sorted(p[10]) if p[10].__class__ is _array else None")
    fields = [
        f"{k!r}: {v}"
        for k, v in (
            ("pipeline", "pl"),
            ("key", "key"),
            ("start", "start"),
            ("end", "end"),
            ("rev", "rev"),
            ("count", "n"),
        )
    ]
    expr = {
        "sum": "p[1]",
        "mean": "p[2]" if welford else "p[1] / n",
        "min": "p[4]",
        "max": "p[5]",
        "first": "p[7]",
        "last": "p[9]",
        "stddev": "_stddev(p)",
    }
    for name, kind, q in outs:
        fields.append(f"{name!r}: " + (f"_quantile(p, srt, {q!r})" if kind == "p" else expr[kind]))
    body.append("    return {" + ", ".join(fields) + "}")
    return _compile("record(pl, key, start, end, rev, p)", body)  # type: ignore[return-value]


def _make_window(
    outs: tuple[tuple[str, str, float], ...],
    *,
    use_sum: bool,
    welford: bool,
    use_min: bool,
    use_max: bool,
    first: bool,
    last: bool,
    pct: bool,
) -> Callable[..., dict[str, object]]:
    """window(pl, key, start, end, rev, parts): `merged` then `record` without the partial."""
    assert not pct
    body = _fold(
        use_sum=use_sum,
        welford=welford,
        use_min=use_min,
        use_max=use_max,
        first=first,
        last=last,
        skip_none=True,
    )
    expr = {
        "sum": "s",
        "mean": "mean" if welford else "s / n",
        "min": "lo",
        "max": "hi",
        "first": "fv",
        "last": "lv",
        "stddev": "(_sqrt(max(m2, 0.0) / (n - 1)) if n > 1 else 0.0)",  # as _stddev
    }
    fields = [
        "'pipeline': pl",
        "'key': key",
        "'start': start",
        "'end': end",
        "'rev': rev",
        "'count': n",
        *(f"{name!r}: {expr[kind]}" for name, kind, _ in outs),
    ]
    body.append("    return {" + ", ".join(fields) + "}")
    return _compile("window(pl, key, start, end, rev, parts)", body)  # type: ignore[return-value]


def _compile(signature: str, body: list[str]) -> Callable[..., None]:
    src = f"def {signature}:\n" + "\n".join(body) + "\n"
    ns: dict[str, object] = {
        "_array": array,
        "_LIMIT": EXACT_LIMIT,
        "_Sketch": Sketch,
        "_merge_values": _merge_values,
        "_inf": inf,
        "_quantile": _quantile,
        "_stddev": _stddev,
        "_sqrt": sqrt,
    }
    exec(compile(src, f"<edge_agent.windows.aggregates.{signature}>", "exec"), ns)
    return ns[signature.partition("(")[0]]  # type: ignore[return-value]


def _make_add(
    *,
    use_sum: bool,
    welford: bool,
    use_min: bool,
    use_max: bool,
    first: bool,
    last: bool,
    pct: bool,
) -> Callable[[Partial, float, float], None]:
    # Generated once per pipeline so the hot path carries no per-aggregate branches.
    body = ["    p[0] += 1"]
    if use_sum:
        body.append("    p[1] += v")
    if welford:
        body += [
            "    d = v - p[2]",
            "    m = p[2] + d / p[0]",
            "    p[2] = m",
            "    p[3] += d * (v - m)",
        ]
    if use_min:
        body.append("    if v < p[4]: p[4] = v")
    if use_max:
        body.append("    if v > p[5]: p[5] = v")
    if first:  # by event time, ties by arrival: the earlier arrival stays
        body += ["    if ts < p[6]:", "        p[6] = ts", "        p[7] = v"]
    if last:  # ties by arrival: the later arrival wins
        body += ["    if ts >= p[8]:", "        p[8] = ts", "        p[9] = v"]
    if pct:
        body += [
            "    x = p[10]",
            "    if x.__class__ is _array:",
            "        x.append(v)",
            "        if len(x) > _LIMIT: p[10] = _Sketch.of(x)",
            "    else:",
            "        x.add(v)",
        ]
    return _compile("add(p, ts, v)", body)

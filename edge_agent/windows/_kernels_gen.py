"""Writes `_kernels.py`: the per-reading aggregate kernels, one per aggregate set.

    python -m edge_agent.windows._kernels_gen      # rewrites edge_agent/windows/_kernels.py

The hot path (`add`, once per reading) must carry no branches for aggregates a
pipeline does not use, so each combination of the five things a partial can keep
(sum, Welford's mean and m2, min and max, first and last, values for percentiles)
has its own straight-line `add`, `combine` and `merged`. They are written out here
once and checked in, instead of being compiled at import; `tests/windows/test_aggregates_kernels.py`
checks that the checked-in file is what this generator writes.

Keeping a slot no configured aggregate reads (max when only min is asked for) costs
one comparison and never changes a record: records read only configured slots.
"""

from __future__ import annotations

import itertools
from pathlib import Path

__all__ = ["FLAGS", "render"]

# The order of a kernel's index bits, most significant first.
FLAGS = ("use_sum", "welford", "minmax", "firstlast", "pct")

_TARGET = Path(__file__).with_name("_kernels.py")


def _tag(flags: tuple[bool, ...]) -> str:
    return "".join("1" if f else "0" for f in flags)


def _add(use_sum: bool, welford: bool, minmax: bool, firstlast: bool, pct: bool) -> list[str]:
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
    if minmax:
        body += ["    if v < p[4]:", "        p[4] = v", "    if v > p[5]:", "        p[5] = v"]
    if firstlast:
        # by event time; ties by arrival: the earlier arrival stays first, the later is last
        body += [
            "    if ts < p[6]:",
            "        p[6] = ts",
            "        p[7] = v",
            "    if ts >= p[8]:",
            "        p[8] = ts",
            "        p[9] = v",
        ]
    if pct:
        body += [
            "    x = p[10]",
            "    if x.__class__ is array:",
            "        x.append(v)",
            "        if len(x) > EXACT_LIMIT:",
            "            p[10] = Sketch.of(x)",
            "    else:",
            "        x.add(v)",
        ]
    return body


def _combine(use_sum: bool, welford: bool, minmax: bool, firstlast: bool, pct: bool) -> list[str]:
    # src's readings are all earlier or all later in event time than dst's (panes,
    # sessions), so first/last need no tie rule.
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
    if minmax:
        body += [
            "    if src[4] < dst[4]:",
            "        dst[4] = src[4]",
            "    if src[5] > dst[5]:",
            "        dst[5] = src[5]",
        ]
    if firstlast:
        body += [
            "    if src[6] < dst[6]:",
            "        dst[6] = src[6]",
            "        dst[7] = src[7]",
            "    if src[8] > dst[8]:",
            "        dst[8] = src[8]",
            "        dst[9] = src[9]",
        ]
    if pct:
        body.append("    merge_values(dst, src)")
    return body


def _merged(use_sum: bool, welford: bool, minmax: bool, firstlast: bool, pct: bool) -> list[str]:
    # The same arithmetic as combine, folded in locals: one call per fired window.
    # Missing panes are None.
    body = []
    if pct:  # the values are merged in a second pass
        body.append("    present = [src for src in parts if src is not None]")
    body += [
        "    n = 0",
        "    s = 0.0",
        "    mean = 0.0",
        "    m2 = 0.0",
        "    lo = inf",
        "    hi = -inf",
        "    ft = inf",
        "    fv = 0.0",
        "    lt = -inf",
        "    lv = 0.0",
        "    for src in present:" if pct else "    for src in parts:",
    ]
    if not pct:
        body += ["        if src is None:", "            continue"]
    body += ["        n2 = src[0]", "        if not n2:", "            continue"]
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
    if minmax:
        body += [
            "        if src[4] < lo:",
            "            lo = src[4]",
            "        if src[5] > hi:",
            "            hi = src[5]",
        ]
    if firstlast:
        body += [
            "        if src[6] < ft:",
            "            ft = src[6]",
            "            fv = src[7]",
            "        if src[8] > lt:",
            "            lt = src[8]",
            "            lv = src[9]",
        ]
    body.append("    p: Partial = [n, s, mean, m2, lo, hi, ft, fv, lt, lv, None]")
    if pct:
        body += [
            "    first = True",
            "    for src in present:",
            "        if first:",
            "            x = src[10]",
            "            p[10] = array('d', x) if x.__class__ is array else x.copy()",
            "            first = False",
            "        else:",
            "            merge_values(p, src)",
        ]
    body.append("    return p")
    return body


def render() -> str:
    """The text of `_kernels.py`."""
    out = [
        '"""Generated by `python -m edge_agent.windows._kernels_gen`: do not edit.',
        "",
        "Aggregate kernels per set of kept slots; see _kernels_gen.py and aggregates.py.",
        f"Index bits, most significant first: {', '.join(FLAGS)}.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from array import array",
        "from collections.abc import Callable, Iterable",
        "from math import inf",
        "from typing import Any",
        "",
        "from edge_agent.windows.sketch import Sketch",
        "",
        '__all__ = ["ADD", "COMBINE", "EXACT_LIMIT", "MERGED", "merge_values"]',
        "",
        "EXACT_LIMIT = 10_000",
        "",
        "Partial = list[Any]",
        "",
        "",
        "def merge_values(dst: Partial, src: Partial) -> None:",
        "    a, b = dst[10], src[10]",
        "    if a.__class__ is array and b.__class__ is array and len(a) + len(b) <= EXACT_LIMIT:",
        "        a.extend(b)",
        "        return",
        "    sk = a if a.__class__ is Sketch else Sketch.of(a)",
        "    if b.__class__ is Sketch:",
        "        sk.merge(b)",
        "    else:",
        "        for v in b:",
        "            sk.add(v)",
        "    dst[10] = sk",
    ]
    combos = list(itertools.product((False, True), repeat=len(FLAGS)))
    for flags in combos:
        tag = _tag(flags)
        for sig, maker in (
            (f"add_{tag}(p: Partial, ts: float, v: float) -> None", _add),
            (f"combine_{tag}(dst: Partial, src: Partial) -> None", _combine),
            (f"merged_{tag}(parts: Iterable[Partial | None]) -> Partial", _merged),
        ):
            out += ["", "", f"def {sig}:", *maker(*flags)]
    for table, kind, typ in (
        ("ADD", "add", "Callable[[Partial, float, float], None]"),
        ("COMBINE", "combine", "Callable[[Partial, Partial], None]"),
        ("MERGED", "merged", "Callable[[Iterable[Partial | None]], Partial]"),
    ):
        out += ["", "", f"{table}: tuple[{typ}, ...] = ("]
        out += [f"    {kind}_{_tag(flags)}," for flags in combos]
        out.append(")")
    return "\n".join(out) + "\n"


def main() -> None:
    _TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {_TARGET}")


if __name__ == "__main__":
    main()

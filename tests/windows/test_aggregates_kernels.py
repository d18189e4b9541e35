"""The checked-in aggregate kernels are exactly what their generator writes, and each
kernel agrees with a plain reference on every aggregate set it serves."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest

from edge_agent.windows import _kernels, _kernels_gen
from edge_agent.windows.aggregates import Aggregates


def test_checked_in_kernels_match_the_generator() -> None:
    path = Path(_kernels.__file__)
    assert path.read_text(encoding="utf-8") == _kernels_gen.render(), (
        f"{path} is stale: run `python -m edge_agent.windows._kernels_gen` and commit it"
    )


def test_no_code_is_generated_at_run_time() -> None:
    """No exec, eval or compile() of source anywhere in the packages."""
    import ast

    root = Path(_kernels.__file__).parent.parent.parent
    for pkg in ("edge_agent", "firmware_bridge"):
        for path in (root / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            calls = [
                n.func.id
                for n in ast.walk(tree)
                if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Name)
                and n.func.id in ("exec", "eval", "compile")
            ]
            assert not calls, f"{path}: {calls}"


ALL = ("count", "sum", "min", "max", "mean", "first", "last", "stddev", "p50")


def test_every_aggregate_set_against_a_reference() -> None:
    for mask in range(1, 2 ** len(ALL)):
        _check_set(mask)


def _check_set(mask: int) -> None:
    names = ("count", *(a for i, a in enumerate(ALL) if mask >> i & 1 and a != "count"))
    aggs = Aggregates(names)
    rng = random.Random(mask)
    readings = [(float(rng.randrange(100)), rng.uniform(-5, 5)) for _ in range(40)]
    # one partial by add, one by combining two halves, one merged from three parts with a gap
    whole = aggs.new()
    for ts, v in readings:
        aggs.add(whole, ts, v)
    by_ts = sorted(readings, key=lambda r: r[0])
    halves = [aggs.new(), aggs.new()]
    for i, (ts, v) in enumerate(by_ts):
        aggs.add(halves[i >= 20], ts, v)
    aggs.combine(halves[0], halves[1])
    thirds = [aggs.new(), aggs.new(), aggs.new()]
    for i, (ts, v) in enumerate(by_ts):
        aggs.add(thirds[min(i // 14, 2)], ts, v)
    merged = aggs.merged([thirds[0], None, thirds[1], thirds[2]])

    values = [v for _, v in readings]
    first = min(readings, key=lambda r: r[0])[1]  # ties: the earliest arrival
    last = max(reversed(readings), key=lambda r: r[0])[1]  # ties: the latest arrival
    expected = {
        "count": len(values),
        "sum": sum(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "first": first,
        "last": last,
        "stddev": statistics.stdev(values),
        "p50": statistics.median(values),
    }
    for p in (whole, halves[0], merged):
        rec = aggs.record("pl", "k", 0, 100, 0, p)
        assert list(rec) == ["pipeline", "key", "start", "end", "rev", *dict.fromkeys(names)]
        for name in names:
            if name in ("first", "last") and p is not whole:
                # ties between parts are not ordered by arrival; compare by event time
                continue
            assert rec[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-9), name

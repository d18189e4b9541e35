"""Hand cases for every rule of SPEC 3, one behaviour per test."""

from __future__ import annotations

import bisect
import marshal
import math
import random
from typing import Any

import cbor2
import pytest

from edge_agent.config import PipelineConfig
from edge_agent.errors import ConfigError
from edge_agent.windows import Emitted, WindowEngine
from edge_agent.windows.sketch import K, Sketch


def engine(**kw: Any) -> WindowEngine:
    kw.setdefault("name", "p")
    kw.setdefault("max_out_of_orderness", 0.0)
    kw.setdefault("aggregates", ("count",))
    return WindowEngine(PipelineConfig(**kw))


def feed(e: WindowEngine, readings: list[tuple[str, float, float]], wall: float = 0.0) -> Emitted:
    out = Emitted()
    e.process(readings, wall, out)
    return out


def spans(out: Emitted) -> list[tuple[Any, ...]]:
    return [(w["key"], w["start"], w["end"], w["rev"], w["count"]) for w in out.windows]


# -- tumbling ---------------------------------------------------------------------------


def test_tumbling_record_is_exactly_the_spec_shape() -> None:
    e = engine(size=10.0, aggregates=("count", "min", "max", "mean"))
    out = feed(e, [("k", 1700000001.5, 2.0), ("k", 1700000004.0, 4.0), ("k", 1700000010.0, 9.0)])
    assert out.windows == [
        {
            "pipeline": "p",
            "key": "k",
            "start": 1700000000,
            "end": 1700000010,
            "rev": 0,
            "count": 2,
            "min": 2.0,
            "max": 4.0,
            "mean": 3.0,
        }
    ]
    assert type(out.windows[0]["start"]) is int  # integral bounds go out as ints
    assert e.windows_emitted == 1 and e.readings_in == 3


def test_reading_on_a_boundary_opens_the_next_window() -> None:
    e = engine(size=10.0)
    out = feed(e, [("k", 20.0, 1.0), ("k", 19.999, 1.0), ("k", 30.0, 1.0)])
    assert spans(out) == [("k", 20, 30, 0, 1)]
    assert e.readings_late == 1  # 19.999 came after the watermark reached 20


@pytest.mark.parametrize(
    ("size", "ts", "start"),
    [
        (0.1, 0.3, 0.3),  # 0.3 / 0.1 == 2.9999999999999996 in floats
        (0.1, 1700000000.3, 1700000000.3),
        (0.25, 1700000000.75, 1700000000.75),
        (1.5, 4.5, 4.5),
        (0.001, 1700000000.123, 1700000000.123),
    ],
)
def test_decimal_window_sizes_put_boundary_readings_in_the_window_they_start(
    size: float, ts: float, start: float
) -> None:
    e = engine(size=size)
    out = Emitted()
    e.process([("k", ts, 1.0)], 0.0, out)
    e.flush_all(out)
    assert out.windows[0]["start"] == start
    assert out.windows[0]["start"] <= ts < out.windows[0]["end"]


def test_watermark_lags_by_max_out_of_orderness() -> None:
    e = engine(size=10.0, max_out_of_orderness=2.0)
    out = feed(e, [("k", 5.0, 1.0), ("k", 11.0, 1.0), ("k", 9.0, 1.0)])
    assert out.windows == []  # watermark 9 < 10: 9.0 is still on time
    out = feed(e, [("k", 12.0, 1.0)])
    assert spans(out) == [("k", 0, 10, 0, 2)]


def test_watermark_never_goes_backwards_and_is_per_key() -> None:
    e = engine(size=10.0)
    out = feed(e, [("a", 25.0, 1.0), ("b", 3.0, 1.0), ("a", 1.0, 1.0), ("b", 12.0, 1.0)])
    # a's 1.0 is late (a's watermark is 25); b's windows follow b's own clock
    assert spans(out) == [("b", 0, 10, 0, 1)]
    assert [r["key"] for r in out.late] == ["a"]


def test_late_within_allowed_lateness_refires_with_full_content() -> None:
    e = engine(size=10.0, allowed_lateness=5.0, aggregates=("count", "sum"))
    out = feed(e, [("k", 1.0, 1.0), ("k", 2.0, 2.0), ("k", 10.0, 0.0)])
    assert [(w["rev"], w["count"], w["sum"]) for w in out.windows] == [(0, 2, 3.0)]
    out = feed(e, [("k", 3.0, 4.0), ("k", 4.0, 8.0)])
    assert [(w["rev"], w["count"], w["sum"]) for w in out.windows] == [(1, 3, 7.0), (2, 4, 15.0)]
    out = feed(e, [("k", 15.0, 0.0), ("k", 5.0, 1.0)])  # watermark 15 = end + lateness
    assert out.windows == []
    assert out.late == [{"pipeline": "p", "key": "k", "ts": 5.0, "value": 1.0}]
    assert e.readings_late == 1 and e.readings_in == 7


def test_late_reading_for_a_window_that_never_had_readings_fires_rev_0() -> None:
    e = engine(size=10.0, allowed_lateness=30.0)
    feed(e, [("k", 35.0, 1.0)])
    out = feed(e, [("k", 12.0, 1.0)])
    assert spans(out) == [("k", 10, 20, 0, 1)]


# -- idle -------------------------------------------------------------------------------


def test_idle_key_fires_its_open_windows_and_later_readings_are_late() -> None:
    e = engine(size=10.0, idle_timeout=30.0, max_out_of_orderness=5.0)
    out = feed(e, [("k", 1.0, 1.0), ("k", 12.0, 1.0)], wall=100.0)
    assert out.windows == []  # watermark 7
    assert e.next_idle_deadline() == 130.0
    out = Emitted()
    e.advance_idle(129.9, out)
    assert out.windows == []
    e.advance_idle(130.0, out)
    assert spans(out) == [("k", 0, 10, 0, 1), ("k", 10, 20, 0, 1)]
    assert e.next_idle_deadline() is None
    out = feed(e, [("k", 15.0, 1.0)], wall=131.0)
    assert out.windows == [] and e.readings_late == 1


def test_a_reading_postpones_idleness() -> None:
    e = engine(size=10.0, idle_timeout=30.0)
    feed(e, [("k", 1.0, 1.0)], wall=100.0)
    feed(e, [("k", 2.0, 1.0)], wall=120.0)
    out = Emitted()
    e.advance_idle(140.0, out)
    assert out.windows == []
    assert e.next_idle_deadline() == 150.0
    e.advance_idle(150.0, out)
    assert spans(out) == [("k", 0, 10, 0, 2)]


def test_idle_fires_a_partial_count_window() -> None:
    e = engine(window="count", size=3.0, idle_timeout=5.0)
    out = feed(e, [("k", 7.0, 1.0), ("k", 3.0, 1.0)], wall=0.0)
    assert out.windows == []
    e.advance_idle(5.0, out)
    assert spans(out) == [("k", 3.0, 7.0, 0, 2)]


# -- sliding ----------------------------------------------------------------------------


def test_sliding_reading_is_in_every_covering_window() -> None:
    e = engine(window="sliding", size=6.0, slide=2.0)
    out = feed(e, [("k", 5.0, 1.0), ("k", 100.0, 1.0)])
    assert [(w["start"], w["end"]) for w in out.windows] == [(0, 6), (2, 8), (4, 10)]


def test_sliding_with_a_slide_that_does_not_divide_the_size() -> None:
    e = engine(window="sliding", size=10.0, slide=4.0, aggregates=("count", "sum"))
    out = feed(e, [("k", t, t) for t in (1.0, 3.0, 5.0, 9.0, 11.0)] + [("k", 100.0, 0.0)])
    got = [(w["start"], w["end"], w["count"], w["sum"]) for w in out.windows if w["start"] < 100]
    assert got == [
        (-8, 2, 1, 1.0),
        (-4, 6, 3, 9.0),
        (0, 10, 4, 18.0),
        (4, 14, 3, 25.0),
        (8, 18, 2, 20.0),
    ]


def test_sliding_partly_late_reading_goes_only_to_windows_that_take_it() -> None:
    e = engine(window="sliding", size=10.0, slide=5.0, allowed_lateness=0.0)
    feed(e, [("k", 1.0, 1.0), ("k", 12.0, 1.0)])  # [0,10) fired; watermark 12
    out = feed(e, [("k", 7.0, 1.0)])  # [0,10) is past lateness, [5,15) is open
    assert out.windows == [] and out.late == [] and e.readings_late == 0
    out = feed(e, [("k", 15.0, 1.0)])
    assert spans(out) == [("k", 5, 15, 0, 2)]


# -- sessions ---------------------------------------------------------------------------


def test_session_bounds_and_gap_is_strict() -> None:
    e = engine(window="session", gap=5.0)
    out = feed(e, [("k", 1.0, 1.0), ("k", 4.0, 1.0), ("k", 9.0, 1.0), ("k", 20.0, 1.0)])
    # 9 - 4 == gap: not less than gap apart, so a new session
    assert spans(out) == [("k", 1.0, 9.0, 0, 2), ("k", 9.0, 14.0, 0, 1)]


def test_session_late_bridge_merges_fired_sessions_with_replaces() -> None:
    e = engine(window="session", gap=5.0, allowed_lateness=100.0, aggregates=("count", "sum"))
    feed(e, [("k", 0.0, 1.0), ("k", 8.0, 2.0), ("k", 30.0, 0.0)])
    out = feed(e, [("k", 4.0, 4.0)])  # bridges [0,5) and [8,13)
    assert out.windows == [
        {
            "pipeline": "p",
            "key": "k",
            "start": 0,
            "end": 13,
            "rev": 1,
            "count": 3,
            "sum": 7.0,
            "replaces": [[0, 5], [8, 13]],
        }
    ]
    out = feed(e, [("k", 6.0, 1.0)])  # inside the merged session: same window, next rev
    assert out.windows[0]["rev"] == 2 and out.windows[0]["replaces"] == [[0, 5], [8, 13]]


def test_session_merge_of_a_fired_and_an_open_session() -> None:
    e = engine(window="session", gap=5.0, max_out_of_orderness=3.0, allowed_lateness=10.0)
    out = feed(e, [("k", 0.0, 1.0), ("k", 8.0, 1.0), ("k", 9.0, 1.0)])  # wm 6 >= 5: [0,5) fires
    assert spans(out) == [("k", 0.0, 5.0, 0, 1)]
    out = feed(e, [("k", 4.0, 1.0)])  # bridges into the open session: on time, not fired yet
    assert out.windows == []
    out = feed(e, [("k", 30.0, 1.0)])
    assert spans(out) == [("k", 0.0, 14.0, 1, 4)]
    assert out.windows[0]["replaces"] == [[0, 5]]


def test_session_reading_late_past_lateness_does_not_merge() -> None:
    e = engine(window="session", gap=5.0, aggregates=("count",))
    feed(e, [("k", 0.0, 1.0), ("k", 8.0, 1.0), ("k", 30.0, 1.0)])
    out = feed(e, [("k", 4.0, 1.0)])
    assert out.windows == [] and len(out.late) == 1
    out = Emitted()
    e.flush_all(out)
    assert spans(out) == [("k", 30.0, 35.0, 0, 1)]


# -- count and none ---------------------------------------------------------------------


def test_count_windows_fire_every_size_readings_with_inclusive_bounds() -> None:
    e = engine(window="count", size=2.0, aggregates=("count", "first", "last"))
    out = feed(e, [("k", 9.0, 1.0), ("k", 3.0, 2.0), ("j", 1.0, 5.0), ("k", 1.0, 3.0)])
    assert out.windows == [
        {
            "pipeline": "p",
            "key": "k",
            "start": 3,
            "end": 9,
            "rev": 0,
            "count": 2,
            "first": 2.0,
            "last": 1.0,
        }
    ]
    assert e.readings_late == 0


def test_none_passes_readings_through() -> None:
    e = engine(window="none")
    out = feed(e, [("k", 1.5, 2.0), ("j", 2.5, 3.0)])
    assert out.readings == [
        {"pipeline": "p", "key": "k", "ts": 1.5, "value": 2.0},
        {"pipeline": "p", "key": "j", "ts": 2.5, "value": 3.0},
    ]
    assert out.windows == [] and e.readings_in == 2 and e.take_dirty() == {}


# -- aggregates -------------------------------------------------------------------------


def test_first_last_by_event_time_ties_by_arrival_and_stddev() -> None:
    e = engine(size=100.0, aggregates=("first", "last", "stddev", "count"))
    out = Emitted()
    e.process([("k", 5.0, 1.0), ("k", 2.0, 2.0), ("k", 2.0, 3.0), ("k", 5.0, 4.0)], 0.0, out)
    e.flush_all(out)
    (w,) = out.windows
    assert (w["first"], w["last"]) == (2.0, 4.0)
    assert w["stddev"] == pytest.approx(1.2909944487358056)  # sample stddev of 1,2,3,4
    assert list(w) == ["pipeline", "key", "start", "end", "rev", "count", "first", "last", "stddev"]


def test_single_reading_stddev_is_zero() -> None:
    e = engine(size=10.0, aggregates=("stddev",))
    out = Emitted()
    e.process([("k", 1.0, 7.0)], 0.0, out)
    e.flush_all(out)
    assert out.windows[0]["stddev"] == 0.0 and out.windows[0]["count"] == 1


def test_percentiles_interpolate_like_numpy() -> None:
    e = engine(size=100.0, aggregates=("p50", "p90", "p1", "p99"))
    out = Emitted()
    e.process(
        [("k", float(i), float(v)) for i, v in enumerate([10, 1, 9, 2, 8, 3, 7, 4, 6, 5])], 0.0, out
    )
    e.flush_all(out)
    w = out.windows[0]
    # numpy.percentile(range(1, 11), [50, 90, 1, 99]) == [5.5, 9.1, 1.09, 9.91]
    assert (w["p50"], w["p90"], w["p1"], w["p99"]) == pytest.approx((5.5, 9.1, 1.09, 9.91))


def test_percentile_beyond_10000_readings_is_within_one_percent_of_rank() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(0, 2) for _ in range(60_000)]
    e = engine(size=1e6, aggregates=("count", "p1", "p25", "p50", "p90", "p99"))
    out = Emitted()
    e.process([("k", float(i), v) for i, v in enumerate(values)], 0.0, out)
    e.flush_all(out)
    w = out.windows[0]
    srt = sorted(values)
    n = len(srt)
    for q in (1, 25, 50, 90, 99):
        got = w[f"p{q}"]
        # rank of the returned value among the readings vs the exact rank
        lo = sum(1 for x in srt if x < got)
        hi = sum(1 for x in srt if x <= got)
        want = (n - 1) * q / 100
        err = 0 if lo <= want <= hi else min(abs(lo - want), abs(hi - want))
        assert err <= 0.01 * n, (q, err)


def test_sketch_memory_is_bounded() -> None:
    sk = Sketch()
    rng = random.Random(1)
    for _ in range(300_000):
        sk.add(rng.random())
    assert sk.weight() == 300_000
    assert sum(len(lv) for lv in sk.levels) <= K * len(sk.levels)
    assert len(sk.levels) <= 8


def test_sliding_percentile_beyond_10000_combines_pane_sketches() -> None:
    rng = random.Random(3)
    e = engine(window="sliding", size=4.0, slide=2.0, aggregates=("count", "p50"))
    readings = [("k", rng.uniform(0, 4), rng.random()) for _ in range(24_000)]
    out = Emitted()
    e.process(readings, 0.0, out)
    e.flush_all(out)
    w = next(w for w in out.windows if w["start"] == 0)
    assert w["count"] == 24_000
    srt = sorted(v for _, _, v in readings)
    rank = sum(1 for x in srt if x <= w["p50"])
    assert abs(rank - 12_000) <= 240


# -- state, checkpoints, reload ---------------------------------------------------------


def test_fired_windows_are_forgotten_after_allowed_lateness() -> None:
    for window in ("tumbling", "sliding", "session"):
        e = engine(window=window, size=10.0, slide=2.0, gap=3.0, allowed_lateness=20.0)
        for t in range(0, 10_000, 7):
            feed(e, [("k", float(t), 1.0)])
        assert e.open_windows() <= 20, window
        assert e.keys() == 1
        assert len(e.take_dirty()["k"]) < 2000  # revision counts are forgotten too


def test_session_forgetting_rule_bounds_memory_for_backward_replays() -> None:
    # Read literally, late readings chaining backwards from the open session could
    # reach any old session; the engine forgets a fired session once a reading
    # touching it would be past lateness on its own (session.py documents the rule).
    e = engine(window="session", gap=5.0, allowed_lateness=0.0, aggregates=("count",))
    feed(e, [("k", 0.0, 1.0), ("k", 3.0, 1.0), ("k", 100.0, 1.0)])  # [0, 8) fired, forgotten
    out = feed(e, [("k", t, 1.0) for t in (97.0, 93.0, 89.0)])  # extend the open session back
    assert out.windows == [] and out.late == []
    out = Emitted()
    e.flush_all(out)
    assert spans(out) == [("k", 89.0, 105.0, 0, 4)]


def test_late_bridge_into_the_open_session_keeps_the_fired_one() -> None:
    e = engine(window="session", gap=5.0, allowed_lateness=0.0, aggregates=("count",))
    out = feed(e, [("k", 0.0, 1.0), ("k", 3.0, 1.0), ("k", 10.0, 1.0)])
    assert spans(out) == [("k", 0.0, 8.0, 0, 2)]
    out = feed(e, [("k", 6.0, 1.0)])  # touches [0, 8) and the open [10, 15): on time
    assert out.windows == []
    out = Emitted()
    e.flush_all(out)
    assert out.windows[0]["replaces"] == [[0, 8]]
    assert spans(out) == [("k", 0.0, 15.0, 1, 4)]


def test_flush_all_fires_everything_and_deletes_the_checkpointed_keys() -> None:
    e = engine(size=10.0)
    feed(e, [("a", 1.0, 1.0), ("b", 2.0, 1.0)])
    assert set(e.take_dirty()) == {"a", "b"}
    out = Emitted()
    e.flush_all(out)
    assert spans(out) == [("a", 0, 10, 0, 1), ("b", 0, 10, 0, 1)]
    assert e.take_dirty() == {"a": None, "b": None}
    assert e.keys() == 0 and e.open_windows() == 0


def test_checkpoint_restores_percentile_sketch_and_revisions() -> None:
    cfg: dict[str, Any] = {
        "size": 10.0,
        "allowed_lateness": 50.0,
        "aggregates": ("count", "p50", "stddev"),
    }
    a, b = engine(**cfg), engine(**cfg)
    rng = random.Random(5)
    first = [("k", rng.uniform(0, 10), rng.random()) for _ in range(12_000)] + [("k", 15.0, 0.0)]
    feed(a, first)
    b.restore((k, v) for k, v in a.take_dirty().items() if v is not None)
    later = [("k", 5.0, 0.5), ("k", 20.0, 0.0)]
    got_a, got_b = feed(a, later), feed(b, later)
    assert got_a.windows == got_b.windows
    # And both did something: the late reading revises [0, 10) (rev 1, all 12,001
    # readings, so the restored sketch and sums held the first 12,000), the reading at 20
    # closes [10, 20). Expected figures from the readings themselves, not the engine.
    assert spans(got_b) == [("k", 0.0, 10.0, 1, 12_001), ("k", 10.0, 20.0, 0, 1)]
    vals = sorted([v for _, ts, v in first if ts < 10.0] + [0.5])
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1))
    w = got_b.windows[0]
    assert w["stddev"] == pytest.approx(sd, rel=1e-9)
    rank = bisect.bisect_left(vals, w["p50"])
    assert abs(rank - len(vals) / 2) <= 0.01 * len(vals)  # SPEC 3: rank error <= 1 %


def test_checkpoint_of_another_window_shape_is_skipped() -> None:
    a = engine(size=10.0)
    feed(a, [("k", 1.0, 1.0)])
    states = [(k, v) for k, v in a.take_dirty().items() if v is not None]
    assert engine(size=10.0, allowed_lateness=5.0).restore(states) == 1  # lateness may change
    other = engine(size=20.0)
    assert other.restore(states) == 0 and other.keys() == 0


def test_checkpoints_written_as_cbor_by_earlier_versions_still_restore() -> None:
    # Key states were CBOR (cbor2.dumps of the same lists) before they were marshalled:
    # a state dir from then restores to the same windows; a blob that is neither is skipped.
    for window in ("tumbling", "sliding", "session", "count"):
        cfg: dict[str, Any] = {
            "window": window,
            "size": 3 if window == "count" else 10.0,
            "slide": 5.0,
            "gap": 3.0,
            "allowed_lateness": 30.0,
            "aggregates": ("count", "mean", "p50"),
        }
        a, b, c = engine(**cfg), engine(**cfg), engine(**cfg)
        feed(a, [("k", float(t), t / 7) for t in (1, 2, 4, 11, 13)] + [("j", 3.0, 1.0)])
        states = {k: v for k, v in a.take_dirty().items() if v is not None}
        assert set(states) == {"k", "j"}
        old = [(k, cbor2.dumps(marshal.loads(v))) for k, v in states.items()]
        assert all(0x80 <= raw[0] <= 0x9F for _, raw in old)  # what the CBOR path reads
        assert b.restore(old) == 2, window
        assert c.restore([*states.items(), ("x", b"\x00garbage")]) == 2, window
        later = [("k", 12.0, 2.0), ("k", 40.0, 1.0), ("j", 41.0, 0.0)]
        got_a, got_b, got_c = feed(a, later), feed(b, later), feed(c, later)
        assert got_a.windows and got_b.windows == got_a.windows == got_c.windows, window


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError):
        engine(window="hopping")
    with pytest.raises(ConfigError):
        engine(window="sliding", size=5.0, slide=10.0)
    with pytest.raises(ConfigError):
        engine(window="session", gap=None)
    with pytest.raises(ConfigError):
        engine(aggregates=("p0",))
    with pytest.raises(ConfigError):
        engine(window="count", size=2.5)

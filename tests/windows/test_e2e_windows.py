"""SPEC 3 over the wire: each windowing rule checked against the real agent process,
a real local mosquitto for the sensors and a real upstream one for the batches.

The engine itself is tested without brokers in test_windows*.py; here the same rules
must hold end to end. Event times are explicit and lie ~100 s in the past, aligned to
the window size, so every window's bounds are known in advance; idle timeouts are
short so that the last windows of a test fire by themselves within about a second.

To show that something did NOT fire, a test publishes a marker on another key whose
window does fire; the agent handles one key's readings in arrival order and batches
leave in seq order, so once the marker's record is upstream, anything that should
have fired before it would be there too.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_harness import (
    Consumer,
    Publisher,
    latest,
    pipeline,
    poll,
    running_agent,
    write_config,
)
from tests.helpers.brokers import Broker


def _base(align: float) -> float:
    """A start of a window of size `align`, about 100 s in the past."""
    return float(math.floor((time.time() - 100) / align) * align)


def _send(pub: Publisher, topic: str, ts: float, value: float) -> None:
    pub.publish(topic, f'{{"ts": {ts!r}, "value": {value!r}}}')


def _of(consumer: Consumer, key: str) -> list[dict[str, Any]]:
    return [r for r in consumer.records() if r["key"] == key]


def _bounds(recs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return sorted((r["start"], r["end"]) for r in recs)


def _wait_record(
    consumer: Consumer, key: str, start: float, rev: int, timeout: float = 8.0
) -> dict[str, Any]:
    """The record of window (key, start) with exactly this rev, once it is upstream."""

    def found() -> dict[str, Any] | None:
        for r in _of(consumer, key):
            if r["start"] == start and r["rev"] == rev:
                return r
        return None

    return poll(found, timeout, what=f"{key} window at {start} rev {rev}")


# -- tumbling ----------------------------------------------------------------------------


def _percentile(values: list[float], p: float) -> float:
    """numpy's default ('linear'): interpolate between the closest ranks."""
    s = sorted(values)
    rank = (len(s) - 1) * p / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def test_tumbling_half_open_epoch_aligned_with_exact_aggregates(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    aggs = ["count", "sum", "min", "max", "mean", "first", "last", "stddev", "p5", "p50", "p90"]
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(size="10s", aggregates=aggs)],
    )
    base = _base(10)
    # Arrival order differs from event order; two readings tie at base + 9.5.
    sent = [
        (base + 3, 7.0),
        (base + 0, 4.0),
        (base + 9.5, 2.0),
        (base + 1.5, 1.0),
        (base + 9.5, 5.0),
    ]
    values = [v for _, v in sent]
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg),
        Publisher(broker.port) as pub,
    ):
        for ts, v in sent:
            _send(pub, "s/a", ts, v)
        _send(pub, "s/a", base + 10, 100.0)  # exactly at end: the next window; fires the first
        first = _wait_record(consumer, "s/a", base, 0)
        second = _wait_record(consumer, "s/a", base + 10, 0)  # by idle

    assert (first["start"], first["end"]) == (base, base + 10)
    assert first["start"] % 10 == 0
    assert set(first) == {"pipeline", "key", "start", "end", "rev", *aggs}
    # Worked by hand: sorted 1 2 4 5 7, n 5, sum 19, mean 3.8,
    # squared deviations 7.84 3.24 0.04 1.44 10.24 -> 22.8 / (5 - 1) = 5.7.
    assert first["count"] == 5
    assert first["sum"] == pytest.approx(19.0)
    assert first["min"] == 1.0 and first["max"] == 7.0
    assert first["mean"] == pytest.approx(3.8)
    assert first["stddev"] == pytest.approx(math.sqrt(5.7))
    assert first["stddev"] == pytest.approx(statistics.stdev(values))
    assert first["first"] == 4.0  # earliest event time (base + 0), not earliest arrival
    assert first["last"] == 5.0  # latest event time, tie at base + 9.5 broken by arrival
    # Ranks (n-1)p: p5 -> 0.2 -> 1 + 0.2*(2-1); p50 -> 2 -> 4; p90 -> 3.6 -> 5 + 0.6*(7-5).
    assert first["p5"] == pytest.approx(1.2)
    assert first["p50"] == pytest.approx(4.0)
    assert first["p90"] == pytest.approx(6.2)
    for p in (5, 50, 90):
        assert first[f"p{p}"] == pytest.approx(_percentile(values, p))

    assert (second["end"], second["count"]) == (base + 20, 1)
    for name in ("sum", "min", "max", "mean", "first", "last", "p5", "p50", "p90"):
        assert second[name] == pytest.approx(100.0), name
    assert second["stddev"] == 0


# -- sliding ------------------------------------------------------------------------------


def test_sliding_reading_lands_in_every_covering_window(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(window="sliding", size="4s", slide="2s", aggregates=["count", "sum"])],
    )
    base = _base(4)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        # Distinct powers of ten, so each window's sum says exactly which readings it holds.
        for ts, v in ((base + 1, 1), (base + 2, 10), (base + 3, 100), (base + 5.5, 1000)):
            _send(pub, "s/a", ts, v)
        consumer.wait_for(lambda c: len(_of(c, "s/a")) >= 4, 8, what="four sliding windows")
        recs = _of(consumer, "s/a")
        health = agent.health()

    got = {(r["start"], r["end"]): (r["count"], r["sum"], r["rev"]) for r in recs}
    assert got == {
        (base - 2, base + 2): (1, 1, 0),
        (base, base + 4): (3, 111, 0),  # base + 2 is in it, and also in the next one
        (base + 2, base + 6): (3, 1110, 0),
        (base + 4, base + 8): (1, 1000, 0),
    }
    assert all(start % 2 == 0 for start, _ in got)
    assert health["counters"]["windows_emitted"] == 4
    assert health["counters"]["readings_late"] == 0


def test_sliding_reading_on_time_for_one_window_is_not_late(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(window="sliding", size="4s", slide="2s", aggregates=["count", "sum"])],
    )
    base = _base(4)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        _send(pub, "s/a", base + 1, 1)
        _send(pub, "s/a", base + 4.5, 10)  # watermark base + 4.5: [base, base + 4) fires
        _wait_record(consumer, "s/a", base, 0)
        # base + 3 is past [base, base + 4) (closed, lateness 0 s) but on time for
        # [base + 2, base + 6): it goes there only, and is not counted late.
        _send(pub, "s/a", base + 3, 100)
        consumer.wait_for(lambda c: len(_of(c, "s/a")) >= 4, 8, what="four sliding windows")
        health = agent.health()
        recs = _of(consumer, "s/a")

    got = {(r["start"], r["end"]): (r["count"], r["sum"], r["rev"]) for r in recs}
    assert got == {
        (base - 2, base + 2): (1, 1, 0),
        (base, base + 4): (1, 1, 0),
        (base + 2, base + 6): (2, 110, 0),
        (base + 4, base + 8): (1, 10, 0),
    }
    assert health["counters"]["readings_late"] == 0
    assert health["counters"]["readings_in"] == 3


# -- session -------------------------------------------------------------------------------


def test_session_bounds_and_a_late_bridge_merges_fired_sessions(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[
            pipeline(
                window="session", gap="2s", allowed_lateness="30s", aggregates=["count", "sum"]
            )
        ],
    )
    base = _base(1)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        _send(pub, "s/a", base + 1, 1)
        _send(pub, "s/a", base + 0, 2)  # 1 s apart: same session, which now starts earlier
        _send(pub, "s/a", base + 4.5, 4)  # 3.5 s after base + 1: a new session; fires A
        _send(pub, "s/a", base + 5, 8)
        _send(pub, "s/a", base + 20, 16)  # far ahead: session C; the watermark fires B
        a = _wait_record(consumer, "s/a", base, 0)
        b = _wait_record(consumer, "s/a", base + 4.5, 0)
        assert (a["end"], a["count"], a["sum"]) == (base + 3, 2, 3)
        assert (b["end"], b["count"], b["sum"]) == (base + 7, 2, 12)
        # base + 2.8 is 1.8 s after A's last reading and 1.7 s before B's first: the
        # merged session [base, base + 7) ends at or before the watermark (late), but
        # within allowed lateness, so it fires at once as a revision of both.
        _send(pub, "s/a", base + 2.8, 32)
        merged = _wait_record(consumer, "s/a", base, 1)
        c = _wait_record(consumer, "s/a", base + 20, 0)  # by idle
        health = agent.health()

    assert (merged["start"], merged["end"]) == (base, base + 7)
    assert (merged["count"], merged["sum"]) == (5, 47)
    assert sorted(tuple(x) for x in merged["replaces"]) == [
        (base, base + 3),
        (base + 4.5, base + 7),
    ]
    assert (c["end"], c["count"]) == (base + 22, 1)
    assert "replaces" not in c
    assert health["counters"]["readings_late"] == 0
    assert health["counters"]["windows_emitted"] == 4  # A, B, the merge, C


# -- count -------------------------------------------------------------------------------


def test_count_windows_fire_every_n_in_arrival_order_and_partial_on_idle(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(window="count", size=3, aggregates=["count", "sum", "first"])],
    )
    base = _base(1)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        for ts, v in ((base + 5, 1), (base + 1, 2), (base + 3, 4), (base + 10, 8), (base - 50, 16)):
            _send(pub, "s/a", ts, v)
        consumer.wait_for(
            lambda c: len(_of(c, "s/a")) >= 2, 8, what="full and partial count windows"
        )
        recs = sorted(_of(consumer, "s/a"), key=lambda r: r["sum"])
        health = agent.health()

    full, partial = recs
    assert (full["count"], full["sum"], full["start"], full["end"]) == (3, 7, base + 1, base + 5)
    assert full["first"] == 2  # by event time
    # Far behind the key's newest event time, yet not late: watermarks do not apply.
    assert (partial["count"], partial["sum"], partial["start"], partial["end"]) == (
        2,
        24,
        base - 50,
        base + 10,
    )
    assert full["rev"] == partial["rev"] == 0
    assert health["counters"]["readings_late"] == 0
    assert health["counters"]["windows_emitted"] == 2


# -- watermarks --------------------------------------------------------------------------


def test_watermarks_are_per_key(broker: Broker, upstream_broker: Broker, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, broker.port, upstream_broker.port, pipelines=[pipeline(idle_timeout="3s")]
    )
    base = _base(1)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg),
        Publisher(broker.port) as pub,
    ):
        _send(pub, "s/slow", base + 0.5, 1)
        _send(pub, "s/fast", base + 50.5, 2)
        _send(pub, "s/fast", base + 52.5, 3)  # fires s/fast's [base + 50, base + 51)
        _wait_record(consumer, "s/fast", base + 50, 0, timeout=2.5)
        # s/fast is 50 s ahead of s/slow, but s/slow's window waits for its own idle.
        assert _of(consumer, "s/slow") == []
        slow = _wait_record(consumer, "s/slow", base, 0)
    assert slow["count"] == 1


def test_max_out_of_orderness_delays_firing_until_newest_minus_lag_passes_end(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(max_out_of_orderness="3s", idle_timeout="30s")],
    )
    base = _base(1)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        _send(pub, "s/a", base + 0.5, 1)
        _send(pub, "s/a", base + 2.5, 2)
        _send(pub, "s/a", base + 3.9, 4)  # watermark base + 0.9 < end base + 1: still open
        _send(pub, "s/a", base + 0.8, 8)  # so this one is on time, not late
        # Marker: another key, whose [base, base + 1) fires now (watermark base + 7).
        _send(pub, "s/z", base + 0.5, 0)
        _send(pub, "s/z", base + 10, 0)
        _wait_record(consumer, "s/z", base, 0)
        assert _of(consumer, "s/a") == [], "fired before newest - lag reached its end"
        _send(pub, "s/a", base + 4.0, 16)  # watermark base + 1.0 == end: fires
        rec = _wait_record(
            consumer, "s/a", base, 0, timeout=5
        )  # idle is 30 s: this is the watermark
        assert (rec["count"], rec["min"], rec["max"]) == (2, 1, 8)
        assert agent.health()["counters"]["readings_late"] == 0


# -- late readings ---------------------------------------------------------------------------


def test_late_readings_refire_within_allowed_lateness_and_are_dropped_past_it(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(size="2s", allowed_lateness="5s", aggregates=["count", "sum"])],
    )
    base = _base(2)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        _send(pub, "s/a", base + 0.5, 1)
        _send(pub, "s/a", base + 2.5, 2)  # watermark base + 2.5: fires [base, base + 2)
        r0 = _wait_record(consumer, "s/a", base, 0)
        assert (r0["count"], r0["sum"]) == (1, 1)
        _send(pub, "s/a", base + 1.0, 4)  # late, but base + 2.5 < end + 5 s: taken, fires again
        r1 = _wait_record(consumer, "s/a", base, 1)
        assert (r1["count"], r1["sum"]) == (2, 5)
        _send(pub, "s/a", base + 1.5, 8)
        r2 = _wait_record(consumer, "s/a", base, 2)
        assert (r2["count"], r2["sum"]) == (3, 13)
        _send(
            pub, "s/a", base + 7.0, 16
        )  # watermark == end + allowed lateness: the window is closed
        _send(pub, "s/a", base + 1.2, 32)  # late past allowed lateness: dropped, counted
        poll(lambda: agent.health()["counters"]["readings_late"] == 1, 5, what="readings_late 1")
        _wait_record(consumer, "s/a", base + 6, 0)  # the base + 7.0 window, by idle
        health = agent.health()
        recs = consumer.records()

    newest = latest(recs)[("p", "s/a", base, base + 2)]
    assert (newest["rev"], newest["count"], newest["sum"]) == (2, 3, 13)
    assert all(r["sum"] < 32 for r in recs), "the reading past allowed lateness reached a window"
    assert health["counters"]["readings_in"] == 6  # late ones included
    assert not [b for b in consumer.unique() if b.doc.get("schema") != "edge-agent/batch/1"]
    # [base, base + 2) thrice, [base + 2, base + 4) when base + 7.0 arrived, [base + 6, base + 8) idle.
    assert health["counters"]["windows_emitted"] == 5


# -- idle ----------------------------------------------------------------------------------


def test_idle_key_fires_all_open_windows_and_later_readings_for_them_are_late(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    # A lag of 5 s keeps both windows below open; only going idle can fire them.
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(max_out_of_orderness="5s", idle_timeout="1s")],
    )
    base = _base(1)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        _send(pub, "s/a", base + 0.5, 1)
        _send(pub, "s/a", base + 1.5, 2)
        quiet_since = time.monotonic()
        w0 = _wait_record(consumer, "s/a", base, 0, timeout=6)
        w1 = _wait_record(consumer, "s/a", base + 1, 0, timeout=6)
        assert time.monotonic() - quiet_since >= 0.9, (
            "fired before the key was idle for idle_timeout"
        )
        assert (w0["count"], w1["count"]) == (1, 1)
        # The watermark is now base + 2, the end of the newest open window: exactly that,
        # so base + 1.9 is late (dropped, lateness 0 s) while base + 2.5 is on time.
        _send(pub, "s/a", base + 1.9, 4)
        _send(pub, "s/a", base + 2.5, 8)
        w2 = _wait_record(consumer, "s/a", base + 2, 0, timeout=6)
        health = agent.health()
        recs = _of(consumer, "s/a")

    assert (w2["count"], w2["min"]) == (1, 8)
    assert health["counters"]["readings_late"] == 1
    assert [r["rev"] for r in recs] == [0, 0, 0]
    assert health["counters"]["windows_emitted"] == 3


# -- windows_emitted ----------------------------------------------------------------------------


def test_windows_emitted_counts_every_firing_even_revisions_a_batch_collapses(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(allowed_lateness="60s")],
        upstream={"max_batch_delay": "1s"},
    )
    base = _base(1)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        _send(pub, "s/a", base + 0.5, 1)
        _send(pub, "s/a", base + 1.5, 2)  # fires [base, base + 1), rev 0
        for i in range(4):  # four accepted late readings: revs 1..4, sent within one batch delay
            _send(pub, "s/a", base + 0.1 + i / 10, 10 + i)
        poll(lambda: agent.health()["counters"]["windows_emitted"] == 5, 5, what="5 firings")
        _wait_record(consumer, "s/a", base + 1, 0)  # [base + 1, base + 2) by idle
        poll(lambda: agent.health()["counters"]["windows_emitted"] == 6, 5, what="6 firings")
        recs = _of(consumer, "s/a")

    newest = latest(recs)[("p", "s/a", base, base + 1)]
    assert (newest["rev"], newest["count"]) == (4, 5)
    # Whatever revisions the batches carried, none is newer than the firings made.
    assert all(r["rev"] <= 4 for r in recs)

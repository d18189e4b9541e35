"""Health endpoint (SPEC 5): status rules, Prometheus rendering, system probe, and the
HTTP server over real loopback sockets, hostile clients included."""

from __future__ import annotations

import json
import math
import os
import re
from collections import namedtuple
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.health import system as system_mod
from edge_agent.health.metrics import render_metrics
from edge_agent.health.status import HealthFacts, evaluate
from edge_agent.health.system import SystemProbe, existing_parent, state_dir_writable
from tests.helpers.health import _value, full_health, parse_prometheus

# ---------------------------------------------------------------------------------
# evaluate(): the rule table

T0 = 1000.0


def facts(now: float = T0 + 100.0, **kw: Any) -> HealthFacts:
    base = HealthFacts(
        now=now,
        started_at=T0,
        local_connected=True,
        local_ever_connected=True,
        local_lost_since=None,
        upstream_connected=True,
        upstream_lost_since=None,
        last_drop_at=None,
        state_dir_writable=True,
        disk_full=False,
    )
    return replace(base, **kw)


def test_all_well_is_ok_with_no_reasons() -> None:
    assert evaluate(facts()) == ("ok", [])


def test_upstream_unreachable_is_degraded_in_whole_seconds() -> None:
    f = facts(upstream_connected=False, upstream_lost_since=T0 + 100.0 - 42.9)
    assert evaluate(f) == ("degraded", ["upstream unreachable for 42 s"])


def test_upstream_never_reached_counts_from_start() -> None:
    f = facts(now=T0 + 7.5, upstream_connected=False, upstream_lost_since=None)
    assert evaluate(f) == ("degraded", ["upstream unreachable for 7 s"])


def test_upstream_lost_just_now_reads_zero_seconds() -> None:
    f = facts(upstream_connected=False, upstream_lost_since=T0 + 100.0)
    assert evaluate(f) == ("degraded", ["upstream unreachable for 0 s"])


@pytest.mark.parametrize(
    ("ago", "expected"),
    [(0.0, "degraded"), (59.999, "degraded"), (60.0, "ok"), (60.001, "ok"), (3600.0, "ok")],
)
def test_drop_degrades_for_60_s(ago: float, expected: str) -> None:
    status, reasons = evaluate(facts(last_drop_at=T0 + 100.0 - ago))
    assert status == expected
    if expected == "ok":
        assert reasons == []
    else:
        assert reasons == [f"buffer dropped a batch {int(ago)} s ago"]


@pytest.mark.parametrize(
    ("down_for", "expected"),
    [
        (0.0, "degraded"),
        (29.9, "degraded"),
        (30.0, "degraded"),
        (30.001, "failing"),
        (300.0, "failing"),
    ],
)
def test_local_lost_fails_past_30_s(down_for: float, expected: str) -> None:
    f = facts(local_connected=False, local_lost_since=T0 + 100.0 - down_for)
    status, reasons = evaluate(f)
    assert status == expected
    assert reasons == [f"local broker unreachable for {int(down_for)} s"]


@pytest.mark.parametrize(
    ("since_start", "expected"),
    [(0.0, "degraded"), (30.0, "degraded"), (30.5, "failing"), (100.0, "failing")],
)
def test_local_not_reached_within_30_s_of_start_fails(since_start: float, expected: str) -> None:
    f = facts(
        now=T0 + since_start,
        local_connected=False,
        local_ever_connected=False,
        local_lost_since=None,  # never connected: counts from start
    )
    status, reasons = evaluate(f)
    assert status == expected
    assert len(reasons) == 1
    assert "local broker not reached" in reasons[0]


def test_state_dir_and_disk_full_fail() -> None:
    assert evaluate(facts(state_dir_writable=False)) == ("failing", ["state dir not writable"])
    assert evaluate(facts(disk_full=True)) == ("failing", ["disk full"])


def test_failing_wins_and_reasons_list_every_cause() -> None:
    f = facts(
        upstream_connected=False,
        upstream_lost_since=T0 + 90.0,
        last_drop_at=T0 + 95.0,
        disk_full=True,
        local_connected=False,
        local_lost_since=T0 + 50.0,
    )
    status, reasons = evaluate(f)
    assert status == "failing"
    assert reasons == [
        "local broker unreachable for 50 s",
        "disk full",
        "upstream unreachable for 10 s",
        "buffer dropped a batch 5 s ago",
    ]


def _reference(f: HealthFacts) -> tuple[str, int]:
    """Brute-force restatement of SPEC 5: (status, number of causes)."""
    local_since = f.local_lost_since if f.local_lost_since is not None else f.started_at
    local_down = not f.local_connected
    local_failing = local_down and f.now - local_since > 30
    fail = local_failing or not f.state_dir_writable or f.disk_full
    causes = [
        local_down,
        not f.state_dir_writable,
        f.disk_full,
        not f.upstream_connected,
        f.last_drop_at is not None and f.now - f.last_drop_at < 60,
    ]
    n = sum(causes)
    return ("failing" if fail else "degraded" if n else "ok"), n


_times = st.floats(min_value=0.0, max_value=200.0, allow_nan=False)


@given(
    now=_times,
    local=st.booleans(),
    ever=st.booleans(),
    local_lost=st.none() | _times,
    up=st.booleans(),
    up_lost=st.none() | _times,
    drop=st.none() | _times,
    writable=st.booleans(),
    full=st.booleans(),
)
def test_evaluate_matches_reference(
    now: float,
    local: bool,
    ever: bool,
    local_lost: float | None,
    up: bool,
    up_lost: float | None,
    drop: float | None,
    writable: bool,
    full: bool,
) -> None:
    f = HealthFacts(
        now=T0 + now,
        started_at=T0,
        local_connected=local,
        local_ever_connected=ever,
        local_lost_since=None if local_lost is None else T0 + local_lost,
        upstream_connected=up,
        upstream_lost_since=None if up_lost is None else T0 + up_lost,
        last_drop_at=None if drop is None else T0 + drop,
        state_dir_writable=writable,
        disk_full=full,
    )
    status, reasons = evaluate(f)
    assert (status, len(reasons)) == _reference(f)
    assert (status == "ok") == (reasons == [])
    for r in reasons:
        for n in re.findall(r"-?\d+(?:\.\d+)?", r):
            assert not n.startswith("-") and "." not in n  # whole, non-negative seconds


def test_metrics_counters_and_gauges() -> None:
    types, samples = parse_prometheus(render_metrics(full_health()))
    for counter, n in full_health()["counters"].items():
        assert types[f"edge_agent_{counter}_total"] == "counter"
        assert _value(samples, f"edge_agent_{counter}_total") == n
    expected = {
        "edge_agent_up": 1,
        "edge_agent_uptime_seconds": 12.5,
        "edge_agent_local_connected": 1,
        "edge_agent_upstream_connected": 0,
        "edge_agent_buffer_batches": 3,
        "edge_agent_buffer_bytes": 40960,
        "edge_agent_buffer_oldest_age_seconds": 0,  # null in /healthz, 0 here
        "edge_agent_cpu_percent": 3.25,
        "edge_agent_memory_percent": 41.0,
        "edge_agent_disk_free_bytes": 123456789,
    }
    for name, v in expected.items():
        assert types[name] == "gauge"
        assert _value(samples, name) == v
    assert "edge_agent_temperature_celsius" not in types  # unknown: left out
    assert "edge_agent_upstream_last_ack_age_seconds" not in types
    info = samples[
        (
            "edge_agent_info",
            frozenset({("version", "0.1.0"), ("config", "0123456789ab"), ("agent", "pi-7")}),
        )
    ]
    assert info == 1


@pytest.mark.parametrize(("status", "up"), [("ok", 1.0), ("degraded", 0.5), ("failing", 0.0)])
def test_metrics_up_gauge(status: str, up: float) -> None:
    text = render_metrics(full_health(status=status))
    _, samples = parse_prometheus(text)
    assert _value(samples, "edge_agent_up") == up
    assert re.search(rf"^edge_agent_up {up:g}$", text, re.M)


def test_metrics_known_temperature_and_ages() -> None:
    h = full_health(
        system={
            "cpu_percent": 0.0,
            "mem_percent": 1.0,
            "disk_free_bytes": 0,
            "temperature_c": 48.3,
        },
        buffer={"batches": 1, "bytes": 4096, "oldest_age_s": 17.25},
        upstream={"connected": True, "last_ack_age_s": 0.4},
    )
    _, samples = parse_prometheus(render_metrics(h))
    assert _value(samples, "edge_agent_temperature_celsius") == 48.3
    assert _value(samples, "edge_agent_buffer_oldest_age_seconds") == 17.25
    assert _value(samples, "edge_agent_upstream_last_ack_age_seconds") == 0.4


def test_metrics_pipeline_labels_are_escaped() -> None:
    nasty = 'we"ird\\name\nx'
    h = full_health(
        pipelines={
            "climate": {"readings_in": 7, "readings_late": 1},
            nasty: {"readings_in": 3},
        },
        agent='a"b',
    )
    types, samples = parse_prometheus(render_metrics(h))
    name = "edge_agent_pipeline_readings_in_total"
    assert types[name] == "counter"
    assert samples[(name, frozenset({("pipeline", "climate")}))] == 7
    assert samples[(name, frozenset({("pipeline", nasty)}))] == 3
    assert (
        samples[("edge_agent_pipeline_readings_late_total", frozenset({("pipeline", "climate")}))]
        == 1
    )
    # the agent-wide series keeps its plain name and value
    assert _value(samples, "edge_agent_readings_in_total") == 10
    assert any(("agent", 'a"b') in labels for (n, labels) in samples if n == "edge_agent_info")


def test_metrics_survive_sparse_and_odd_input() -> None:
    text = render_metrics(
        {"status": "weird", "counters": {"x-y": 1.5, "nan": math.nan, "s": "str"}}
    )
    types, samples = parse_prometheus(text)
    assert _value(samples, "edge_agent_up") == 0
    assert _value(samples, "edge_agent_x_y_total") == 1.5
    assert math.isnan(_value(samples, "edge_agent_nan_total"))
    assert "edge_agent_s_total" not in types


# ---------------------------------------------------------------------------------
# SystemProbe


def test_system_probe_sample_shape(tmp_path: Path) -> None:
    probe = SystemProbe(tmp_path / "not" / "made" / "yet")
    s = probe.sample()
    assert set(s) == {"cpu_percent", "mem_percent", "disk_free_bytes", "temperature_c", "throttled"}
    assert 0.0 <= s["cpu_percent"] <= 100.0
    assert 0.0 < s["mem_percent"] <= 100.0
    # The free space of the nearest existing ancestor (the dir is not made yet), from
    # statvfs directly; other processes write meanwhile, so within 1% of the disk.
    st = os.statvfs(tmp_path)
    assert abs(s["disk_free_bytes"] - st.f_bavail * st.f_frsize) <= max(
        st.f_blocks * st.f_frsize // 100, 1 << 20
    )
    assert s["temperature_c"] is None or isinstance(s["temperature_c"], float)
    assert s["throttled"] is None or isinstance(s["throttled"], str)
    json.dumps(s, allow_nan=False)


def test_system_probe_caches_for_its_ttl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    calls = [0]
    real = psutil.virtual_memory

    def counting() -> Any:
        calls[0] += 1
        return real()

    monkeypatch.setattr(psutil, "virtual_memory", counting)
    probe = SystemProbe(tmp_path, ttl=1.0, clock=lambda: now[0])
    probe.sample()
    now[0] = 0.99
    first = probe.sample()
    assert calls[0] == 1
    first["cpu_percent"] = -1  # a copy: callers cannot poison the cache
    assert probe.sample()["cpu_percent"] >= 0
    now[0] = 1.0
    probe.sample()
    assert calls[0] == 2


def test_temperature_prefers_cpu_sensors(monkeypatch: pytest.MonkeyPatch) -> None:
    # the shape psutil returns (its namedtuple moves between versions)
    entry = namedtuple("shwtemp", "label current high critical")

    monkeypatch.setattr(
        psutil,
        "sensors_temperatures",
        lambda: {
            "acpitz": [entry("", 27.8, None, None)],
            "nvme": [entry("Composite", 35.0, None, None)],
            "coretemp": [entry("Package id 0", 51.0, 90.0, 100.0)],
        },
        raising=False,
    )
    assert system_mod.read_temperature() == 51.0
    monkeypatch.setattr(
        psutil, "sensors_temperatures", lambda: {"nvme": [entry("", 35.0, None, None)]}
    )
    assert system_mod.read_temperature() == 35.0


def test_existing_parent_and_writable(tmp_path: Path) -> None:
    assert existing_parent(tmp_path / "a" / "b") == tmp_path
    assert state_dir_writable(tmp_path / "a" / "b")
    assert state_dir_writable(tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert not state_dir_writable(ro)

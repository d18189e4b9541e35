"""Load shedding (issue 12): offered far beyond capacity, the agent keeps emitting
correct windows for the readings it kept and counts every shed one.

No timing: the whole flood arrives in one burst, before the event loop gets a turn
to process anything (as one large socket read would deliver it), so exactly what
is over the inbox limit is shed, and the test knows which readings were kept.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from edge_agent.config import load_config
from edge_agent.health.metrics import render_metrics
from edge_agent.ingest.shed import (
    BACKLOG_S,
    MAX_BYTES,
    MAX_LIMIT,
    MIN_LIMIT,
    MIN_SAMPLE,
    Shedder,
)
from edge_agent.mqtt import Message
from edge_agent.runtime import Agent
from edge_agent.windows.engine import Emitted

T0 = 1_700_000_000.0  # a 10 s window boundary


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
id = "shed-test"
state_dir = "{tmp_path / "state"}"
[health]
listen = ""
[local]
max_future_skew = "3650d"
[[pipeline]]
name = "climate"
topics = ["s/#"]
size = "10s"
aggregates = ["count", "sum", "min", "max"]
[[pipeline]]
name = "alarms"
topics = ["a/#"]
size = "10s"
priority = "high"
aggregates = ["count", "sum"]
""")
    return path


def _msg(topic: str, ts: float, value: float, qos: int = 0, mid: int = 0) -> Message:
    return Message(
        topic.encode(), json.dumps({"ts": ts, "value": value}).encode(), qos, mid, False, False
    )


def _windows(agent: Agent) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for p in agent.pipelines:
        em = Emitted()
        p.engine.flush_all(em)
        out[p.name] = list(em.windows)
    return out


async def test_flood_far_beyond_capacity_keeps_correct_windows_and_counts_every_shed_one(
    tmp_path: Path,
) -> None:
    agent = Agent(load_config(_config(tmp_path)))
    agent.session.start()
    limit = agent.session.shedder.limit
    n = 3 * limit  # three times what the inbox may hold: two thirds must be shed
    offered: list[tuple[str, float, float]] = []
    for i in range(n):
        key = f"s/dev{i % 7}"
        reading = (key, T0 + (i % 1000) / 100, float(i))
        offered.append(reading)
        agent.session.on_message(_msg(*reading))
        if i % 100 == 0:  # alarms arrive in the middle of the flood, after the limit too
            agent.session.on_message(_msg("a/door", T0 + 1, 1.0))
    n_alarms = len(range(0, n, 100))
    # Nothing was processed yet: the flood is one burst. Now the agent catches up.
    agent.session.process_inbox(everything=True)

    climate, alarms = agent.pipelines
    kept = offered[: climate.readings_in]  # the first ones queued are the ones kept (FIFO)
    assert climate.readings_in + climate.readings_shed == n
    assert climate.readings_shed >= n - limit > 0
    assert alarms.readings_in == n_alarms and alarms.readings_shed == 0  # high priority: kept
    counters = agent.counters()
    assert counters["readings_shed"] == climate.readings_shed
    assert counters["readings_rejected"] == 0

    # The windows of the kept readings are exact: per key, count, sum, min and max.
    want: dict[str, list[float]] = defaultdict(list)
    for key, _, value in kept:
        want[key].append(value)
    got = _windows(agent)
    by_key = {w["key"]: w for w in got["climate"]}
    assert set(by_key) == set(want)
    for key, values in want.items():
        w = by_key[key]
        assert (w["start"], w["end"]) == (T0, T0 + 10)
        assert w["count"] == len(values) and w["sum"] == sum(values)
        assert w["min"] == min(values) and w["max"] == max(values)
    assert [w["count"] for w in got["alarms"]] == [n_alarms]

    # Health says so, with the counter, and /metrics carries it per pipeline.
    health = agent.health()
    assert health["status"] == "degraded"
    assert any("shedding QoS 0" in r for r in health["reasons"]), health["reasons"]
    assert health["counters"]["readings_shed"] == climate.readings_shed
    text = render_metrics(health)
    assert f"edge_agent_readings_shed_total {climate.readings_shed}" in text
    assert (
        f'edge_agent_pipeline_readings_shed_total{{pipeline="climate"}} {climate.readings_shed}'
        in text
    )


async def test_qos1_is_never_shed(tmp_path: Path) -> None:
    agent = Agent(load_config(_config(tmp_path)))
    agent.session.start()
    n = 3 * agent.session.shedder.limit
    for i in range(n):
        agent.session.on_message(_msg(f"s/dev{i % 7}", T0 + 1, 1.0, qos=1, mid=i % 65535 + 1))
    agent.session.process_inbox(everything=True)
    climate = agent.pipelines[0]
    assert climate.readings_shed == 0 and climate.readings_in == n


class _P:
    def __init__(self, high: bool) -> None:
        self.readings_shed = 0
        self.high_priority = high


def test_the_limit_follows_the_measured_cost_per_message() -> None:
    # The rule: BACKLOG_S of work at the measured cost per message, within
    # [MIN_LIMIT, MAX_LIMIT] messages, or MAX_BYTES of payload.
    assert 0 < MIN_LIMIT < MAX_LIMIT
    pipes = [_P(False)]
    s = Shedder(lambda t: (0,), pipes)
    assert s.backlog_s == BACKLOG_S and s.max_bytes == MAX_BYTES
    assert MIN_LIMIT <= s.limit <= MAX_LIMIT  # before anything was measured too
    mid = (MIN_LIMIT + MAX_LIMIT) // 2
    cost = BACKLOG_S / mid  # a cost per message at which BACKLOG_S of work is `mid` messages
    for _ in range(50):
        s.note_processed(1000, 1000 * cost)
    assert 0.98 * mid <= s.limit <= 1.02 * mid  # BACKLOG_S of work
    for _ in range(50):
        s.note_processed(1000, 1000 * cost / 10)  # fast: the cap holds (memory)
    assert s.limit == MAX_LIMIT
    for _ in range(50):
        s.note_processed(MIN_SAMPLE - 1, (MIN_SAMPLE - 1) * cost * 10)  # too few to learn from
    assert s.limit == MAX_LIMIT
    for _ in range(50):
        s.note_processed(1000, 1000 * cost * 10)  # slow: the floor holds (bursts)
    assert s.limit == MIN_LIMIT
    assert not s.over(s.limit - 1, 0) and s.over(s.limit, 0)
    assert not s.over(0, MAX_BYTES - 1) and s.over(0, MAX_BYTES)  # or bounded by bytes
    assert not s.keep(b"t", s.limit, 0) and pipes[0].readings_shed == 1 and s.messages_shed == 1
    assert s.shedding()

"""A restart does not make keys look idle: downtime is not the device's silence."""

from __future__ import annotations

from edge_agent.config import PipelineConfig
from edge_agent.windows.engine import Emitted, WindowEngine


def _engine() -> WindowEngine:
    return WindowEngine(
        PipelineConfig(name="p", size=10.0, max_out_of_orderness=0.0, idle_timeout=30.0)
    )


def test_restored_key_idles_from_the_restart_not_from_its_last_reading() -> None:
    a = _engine()
    out = Emitted()
    a.process([("k", 1000.0, 1.0)], 5000.0, out)  # last reading at wall 5000
    states = [(k, v) for k, v in a.take_dirty().items() if v is not None]

    late_restart = 5000.0 + 3600  # the agent was down an hour
    b = _engine()
    assert b.restore(states, wall=late_restart) == 1
    b.advance_idle(late_restart + 1, out)
    assert out.windows == []  # not idle yet: its redelivered readings come next
    b.process([("k", 1001.0, 2.0)], late_restart + 2, out)  # the redelivered reading
    assert out.windows == [] and b.readings_late == 0
    b.advance_idle(late_restart + 2 + 30, out)
    assert [w["count"] for w in out.windows] == [2]


def test_without_a_restart_time_the_saved_wall_time_counts() -> None:
    a = _engine()
    out = Emitted()
    a.process([("k", 1000.0, 1.0)], 5000.0, out)
    states = [(k, v) for k, v in a.take_dirty().items() if v is not None]
    b = _engine()
    b.restore(states)
    b.advance_idle(5000.0 + 31, out)
    assert [w["count"] for w in out.windows] == [1]

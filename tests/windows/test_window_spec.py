"""Window specs: a validated type per window kind that builds and restores its engine."""

from __future__ import annotations

import pytest

from edge_agent.config import PipelineConfig, config_from_text
from edge_agent.errors import ConfigError
from edge_agent.windows import Emitted
from edge_agent.windows.counting import CountEngine, PassThrough
from edge_agent.windows.session import SessionEngine
from edge_agent.windows.spec import Count, NoWindow, Session, Sliding, Tumbling
from edge_agent.windows.timed import TimedEngine


def test_config_gives_each_pipeline_a_typed_spec() -> None:
    cfg = config_from_text(
        '[[pipeline]]\nname = "a"\nwindow = "sliding"\nsize = "1m"\nslide = "10s"\n'
        '[[pipeline]]\nname = "b"\nwindow = "session"\ngap = "5s"\n'
        '[[pipeline]]\nname = "c"\nwindow = "count"\nsize = 3\n'
        '[[pipeline]]\nname = "d"\nwindow = "none"\n'
        '[[pipeline]]\nname = "e"\n',
        environ={},
    )
    specs = [p.spec for p in cfg.pipelines]
    assert specs == [Sliding(60.0, 10.0), Session(5.0), Count(3), NoWindow(), Tumbling(10.0)]
    kinds = [type(s.build(p)) for s, p in zip(specs, cfg.pipelines, strict=True)]
    assert kinds == [TimedEngine, SessionEngine, CountEngine, PassThrough, TimedEngine]


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: Tumbling(0.0), "longer than 0"),
        (lambda: Sliding(5.0, 10.0), "slide larger than size"),
        (lambda: Session(0.0), "gap longer than 0"),
        (lambda: Count(0), "whole number"),
        (lambda: PipelineConfig(window="hopping").spec, "unknown window"),
    ],
)
def test_a_spec_refuses_what_it_cannot_run(make: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make()  # type: ignore[operator]


def test_restore_resumes_open_windows_from_a_checkpoint() -> None:
    cfg = PipelineConfig(name="p", window="count", size=2)
    first = cfg.spec.build(cfg)
    first.process([("k", 1.0, 5.0)], 0.0, Emitted())
    states = [(k, v) for k, v in first.take_dirty().items() if v is not None]
    again = cfg.spec.restore(cfg, states, wall=0.0)
    out = Emitted()
    again.process([("k", 2.0, 7.0)], 0.0, out)
    assert [(r["count"], r["min"], r["max"]) for r in out.windows] == [(2, 5.0, 7.0)]

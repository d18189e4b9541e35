"""#11.6: clocks on devices without an RTC. Intervals on the monotonic clock; readings
"in the future" only because our clock is behind are taken, not acknowledged and lost.

The wall clock is faked (time.time patched in-process); brokers and SQLite are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge_agent.clock import RELEASE_FLOOR, IngestClock, WallClock
from edge_agent.config import load_config
from edge_agent.ingest.decode import PayloadDecoder
from edge_agent.runtime import Agent
from tests.helpers.agent_harness import (
    AgentConfig,
    Consumer,
    Publisher,
    apoll,
    pipeline,
    write_config,
)
from tests.helpers.brokers import Broker

_REAL_TIME = time.time


@contextlib.contextmanager
def wall_clock(offset: list[float]) -> Iterator[None]:
    """time.time() reads `offset[0]` seconds off the real clock while inside."""
    orig = time.time
    time.time = lambda: _REAL_TIME() + offset[0]  # type: ignore[assignment]
    try:
        yield
    finally:
        time.time = orig  # type: ignore[assignment]


def test_wall_clock_is_behind_only_when_unsynchronised_and_earlier_than_seen() -> None:
    t = [RELEASE_FLOOR - 86400 * 365 * 50]  # a Pi at boot: 1976
    sync = [False]
    c = WallClock(wall=lambda: t[0], unsynchronised=lambda: not sync[0], recheck=0.0)
    assert c.behind()
    sync[0] = True  # NTP set the kernel clock discipline, even before the step
    assert not c.behind()
    sync[0] = False
    t[0] = RELEASE_FLOOR + 10  # unsynchronised but plausible: the SPEC's check stays
    assert not c.behind()


def test_a_relaxed_decoder_takes_readings_ahead_of_a_clock_that_is_behind() -> None:
    d = PayloadDecoder("json", 300.0)
    out: list[tuple[str, float, float]] = []
    rejects: Counter[str] = Counter()
    arrival = RELEASE_FLOOR - 10 * 86400.0  # our clock, 10 days behind
    payload = json.dumps({"ts": RELEASE_FLOOR, "value": 1.5}).encode()
    d.decode("s/a", payload, None, arrival, out, rejects)
    assert not out and sum(rejects.values()) == 1  # the SPEC's check
    d.relax_future_skew(True)
    d.decode("s/a", payload, None, arrival, out, rejects)
    assert out == [("s/a", RELEASE_FLOOR, 1.5)]
    d.relax_future_skew(False)
    d.decode("s/a", payload, None, arrival, out, rejects)
    assert len(out) == 1


def test_the_ingest_clock_does_not_follow_a_wall_clock_step() -> None:
    c = IngestClock()
    before = c()
    with wall_clock([3600.0]):
        assert c() - before < 5.0


@contextlib.asynccontextmanager
async def running(cfg: AgentConfig) -> AsyncIterator[Agent]:
    agent = Agent(load_config(cfg.path, environ={}))
    task = asyncio.create_task(agent.run(), name="agent")
    try:
        await apoll(lambda: agent.ready() or task.done(), 30, what="agent ready")
        if task.done():
            task.result()
        yield agent
    finally:
        agent.request_stop()
        async with asyncio.timeout(60):
            await task


def _publish(port: int, readings: list[tuple[str, float, float]]) -> None:
    with Publisher(port) as pub:
        for topic, ts, value in readings:
            pub.publish(topic, json.dumps({"ts": ts, "value": value}))


@pytest.mark.slow
async def test_a_wall_clock_step_does_not_fire_windows_as_idle(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    """NTP steps the clock an hour forward: keys that were heard a moment ago are not
    idle (idle_timeout 20 s), so their open windows do not fire."""
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        health=False,
        pipelines=[pipeline(size="1h", idle_timeout="20s")],
    )
    offset = [0.0]
    with Consumer(upstream_broker.port, cfg.batch_topic) as consumer, wall_clock(offset):
        async with running(cfg) as agent:
            await asyncio.to_thread(_publish, broker.port, [("s/a", _REAL_TIME(), 1.0)])
            await apoll(lambda: agent.counters()["readings_in"] == 1, 15, what="the reading taken")
            offset[0] = 3600.0  # the step
            await asyncio.sleep(2.0)
            assert consumer.records() == [] and agent.counters()["windows_emitted"] == 0


@pytest.mark.slow
async def test_readings_ahead_of_a_clock_that_is_behind_are_taken_not_lost(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    """A Pi booted at 1970, unsynchronised: sensors with good clocks send readings
    "57 years in the future". They are windowed and sent, not rejected."""
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        health=False,
        pipelines=[pipeline(window="none")],
    )
    offset = [-(_REAL_TIME() - 86400.0)]  # 1970-01-02
    with Consumer(upstream_broker.port, cfg.batch_topic) as consumer, wall_clock(offset):
        agent = Agent(load_config(cfg.path, environ={}))
        agent.wall_clock._unsynchronised = lambda: True  # what adjtimex says at such a boot
        task = asyncio.create_task(agent.run(), name="agent")
        try:
            await apoll(lambda: agent.ready(), 30, what="agent ready")
            ts = _REAL_TIME()
            await asyncio.to_thread(_publish, broker.port, [("s/a", ts, 1.0), ("s/b", ts, 2.0)])
            await apoll(
                lambda: len(consumer.records("readings")) == 2,
                15,
                what=f"both readings upstream ({agent.health()})",
            )
            assert agent.counters()["readings_rejected"] == 0
        finally:
            agent.request_stop()
            async with asyncio.timeout(60):
                await task

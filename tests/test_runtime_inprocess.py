"""The runtime (edge_agent.runtime.Agent) and its uplink, in-process against real brokers.

The same promises the process tests check, through the Agent's own surface (run,
ready, health, request_reload, request_stop), so a failure points at the runtime and
coverage sees it directly. Readings carry their own timestamps, so nothing here
depends on how fast this machine is, only on events: ready, windows upstream, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.runtime import Agent
from tests.helpers.agent_harness import (
    AgentConfig,
    Consumer,
    Publisher,
    apoll,
    counted,
    latest,
    pipeline,
    write_config,
)
from tests.helpers.brokers import Broker

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def running(cfg: AgentConfig) -> AsyncIterator[Agent]:
    agent = Agent(load_config(cfg.path, environ={}))
    task = asyncio.create_task(agent.run(), name="agent")
    try:
        await apoll(lambda: agent.ready() or task.done(), 30, what="agent ready")
        if task.done():
            task.result()  # raises what stopped it
        yield agent
    finally:
        agent.request_stop()
        async with asyncio.timeout(60):
            await task


def publish_readings(port: int, readings: list[tuple[str, float, float]]) -> None:
    with Publisher(port) as pub:
        for topic, ts, value in readings:
            pub.publish(topic, json.dumps({"ts": ts, "value": value}))


def totals(consumer: Consumer) -> tuple[int, float]:
    """(readings counted, sum of their values) over the newest rev of every window."""
    recs = consumer.records()
    return counted(recs), sum(r["sum"] for r in latest(recs).values())


async def test_windows_reach_upstream_and_a_second_run_carries_on_the_seq(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        health=False,
        pipelines=[pipeline(aggregates=["count", "sum"])],
    )
    t = time.time()
    first = [(f"s/k{i % 3}", t + i * 0.01, float(i)) for i in range(30)]
    with Consumer(upstream_broker.port, cfg.batch_topic) as consumer:
        async with running(cfg) as agent:
            await asyncio.to_thread(publish_readings, broker.port, first)
            await apoll(
                lambda: totals(consumer)[0] >= 30, 30, what="30 readings in windows upstream"
            )
            h = agent.health()
            assert h["counters"]["readings_in"] == 30
            assert h["upstream"]["connected"] and h["status"] in ("ok", "degraded")
        assert totals(consumer) == (30, float(sum(range(30))))
        seqs_first = sorted(b.seq for b in consumer.unique())
        assert seqs_first == list(range(len(seqs_first)))
        # A second run on the same state dir: seq goes on from where it stopped.
        async with running(cfg):
            await asyncio.to_thread(publish_readings, broker.port, [("s/k9", time.time(), 100.0)])
            await apoll(lambda: totals(consumer)[0] >= 31, 30, what="the second run's window")
        seqs = sorted(b.seq for b in consumer.unique())
        assert seqs == list(range(len(seqs))) and len(seqs) > len(seqs_first)
        assert totals(consumer) == (31, float(sum(range(30)) + 100))


async def test_upstream_outage_buffers_in_the_store_then_drains_in_seq_order(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        health=False,
        pipelines=[pipeline(window="none")],
        upstream={"max_batch_windows": 1, "max_batch_delay": "0s"},
    )
    with Consumer(upstream_broker.port, cfg.batch_topic) as consumer:
        async with running(cfg) as agent:
            upstream_broker.stop()
            await apoll(
                lambda: not agent.health()["upstream"]["connected"], 30, what="upstream lost"
            )
            t = time.time()
            await asyncio.to_thread(
                publish_readings, broker.port, [(f"s/r{i}", t, float(i)) for i in range(12)]
            )
            h = await apoll(
                lambda: (d := agent.health())["buffer"]["batches"] >= 12 and d,
                30,
                what="12 batches buffered",
            )
            assert h["status"] == "degraded" and h["buffer"]["bytes"] > 0
            upstream_broker.start()
            await apoll(
                lambda: len(consumer.records("readings")) >= 12, 60, what="the backlog upstream"
            )
            await apoll(lambda: agent.health()["buffer"]["batches"] == 0, 30, what="buffer empty")
            assert agent.health()["counters"]["batches_dropped"] == 0
    arrival = []
    for b in consumer.batches:
        if b.seq not in arrival:
            arrival.append(b.seq)
    assert arrival == sorted(arrival) == list(range(len(arrival)))
    assert sorted(r["value"] for r in consumer.records("readings")) == [float(i) for i in range(12)]


async def test_reload_takes_a_new_pipeline_and_the_batches_say_which_config(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        health=False,
        pipelines=[pipeline("a", topics=["a/#"], window="none")],
    )
    with Consumer(upstream_broker.port, cfg.batch_topic) as consumer:
        async with running(cfg) as agent:
            old = agent.health()["config"]
            cfg.rewrite(
                pipelines=[
                    pipeline("a", topics=["a/#"], window="none"),
                    pipeline("b", topics=["b/#"], window="none"),
                ]
            )
            agent.request_reload()
            await apoll(lambda: agent.health()["config"] != old, 30, what="the new config in force")
            new = agent.health()["config"]
            await apoll(lambda: agent.ready(), 30, what="ready again")
            await asyncio.to_thread(publish_readings, broker.port, [("b/x", time.time(), 7.0)])
            await apoll(lambda: consumer.records("readings"), 30, what="pipeline b's reading")
        assert [(r["pipeline"], r["value"]) for r in consumer.records("readings")] == [("b", 7.0)]
        assert {b.doc["config"] for b in consumer.unique()} == {new}


async def test_a_config_the_store_cannot_open_fails_run_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    cfg = write_config(tmp_path, 1, 1, health=False)
    cfg.state_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.write_text("a file where the state dir should be")
    agent = Agent(load_config(cfg.path, environ={}))
    with pytest.raises(Exception):  # noqa: B017 - which error is the store's business
        async with asyncio.timeout(30):
            await agent.run()
    assert not agent.ready()

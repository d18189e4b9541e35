"""idle_timeout runs on the ingest clock: an agent behind a flood does not idle-fire keys
whose readings are still waiting at the broker (they would all be dropped as late)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.agent_harness import AgentProcess, Consumer, pipeline, poll, write_config
from tests.helpers.brokers import Broker
from tests.helpers.load import FIELDS, FloodPublisher

PIPELINES = 4


def test_windows_of_a_flood_lose_nothing_to_idle_firing(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    # 4 windowed pipelines x 10 fields: every message is 40 readings, far beyond what
    # the agent takes in per second here, so it reads behind the publisher (ingest
    # budget, overload) while the broker holds the rest. idle_timeout 1 s: on wall
    # time alone, every key would look idle whenever reading pauses.
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[
            pipeline(f"w{i}", topics=["f/#"], size="1s", idle_timeout="1s", aggregates=["count"])
            for i in range(PIPELINES)
        ],
    )
    with Consumer(upstream_broker.port, cfg.batch_topic) as consumer, AgentProcess(cfg) as agent:
        agent.wait_ready()
        flood = FloodPublisher(broker.port, 1, 8.0)
        try:
            poll(lambda: flood.count > 0 and not flood.running(), 30, what="the flood")
        finally:
            published = flood.close()
        want = published * FIELDS * PIPELINES

        def total(c: Consumer) -> int:
            latest: dict[tuple[str, str, object], tuple[int, int]] = {}
            for w in c.records():
                k = (w["pipeline"], w["key"], w["start"])
                if k not in latest or w["rev"] > latest[k][0]:
                    latest[k] = (w["rev"], w["count"])
            return sum(n for _, n in latest.values())

        poll(
            lambda: agent.health()["counters"]["readings_in"] >= want,
            120,
            interval=0.5,
            what="the agent through the backlog",
        )
        consumer.wait_for(
            lambda c: total(c) >= want,
            timeout=30,
            what=f"every reading in a window; agent log:\n{agent.log()[-2000:]}",
        )
        h = agent.health()
        assert h["counters"]["readings_late"] == 0, h["counters"]
        assert total(consumer) == want

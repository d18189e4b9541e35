"""Loss nobody sees (issue 12 item 4): messages the local broker dropped before they
reached the agent are reported in /healthz and /metrics."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from edge_agent.cli.mosquitto import Broker
from edge_agent.ingest.broker_drops import BrokerDrops
from edge_agent.mqtt import MqttClient
from tests.helpers.agent_harness import AgentProcess, http, pipeline, poll, write_config
from tests.helpers.aio import run_async


def test_counts_increases_from_the_first_value_seen_and_across_a_broker_restart() -> None:
    now = [100.0]
    d = BrokerDrops(clock=lambda: now[0])
    d.observe(b"500")  # drops before the agent was there: the baseline
    assert d.dropped == 0 and d.reason() is None and d.available
    d.observe(b"520")
    assert d.dropped == 20
    reason = d.reason()
    assert reason is not None and "max_queued_messages" in reason and "20" in reason
    d.observe(b"7")  # the broker restarted and counts from 0
    assert d.dropped == 27
    d.observe(b"not a number")
    assert d.dropped == 27
    now[0] += 61
    assert d.reason() is None  # degraded for a minute after the count last grew


async def _flood(port: int, n: int) -> None:
    pub = MqttClient(host="127.0.0.1", port=port, max_inflight=1000)
    await pub.connect()
    await asyncio.gather(*(pub.publish(f"s/d{i % 10}", b"%d" % i, 1) for i in range(n)))
    await pub.disconnect()


def test_agent_reports_what_the_local_broker_dropped(tmp_path: Path) -> None:
    # A broker that queues at most 100 messages per client and reports every second.
    with (
        Broker(tmp_path / "local", max_queued_messages=100, extra_conf="sys_interval 1\n") as local,
        Broker(tmp_path / "up") as up,
    ):
        cfg = write_config(tmp_path, local.port, up.port, pipelines=[pipeline("p", topics=["s/#"])])
        with AgentProcess(cfg) as agent:
            agent.wait_ready()
            poll(
                lambda: agent.health()["local"]["broker_reports_drops"],
                10,
                what="$SYS counter seen",
            )
            assert agent.health()["local"]["broker_dropped"] == 0
            # The agent stops reading (SIGSTOP): past its Receive Maximum (8,192) in flight
            # and 100 queued, the broker drops the rest of 10,000 QoS 1 messages.
            agent.send(signal.SIGSTOP)
            try:
                run_async(_flood(local.port, 10_000))
            finally:
                agent.send(signal.SIGCONT)
            h = poll(
                lambda: (h := agent.health())["local"]["broker_dropped"] > 0 and h,
                15,
                what="broker drops reported",
            )
            assert h["status"] == "degraded"
            assert any("max_queued_messages" in r for r in h["reasons"]), h["reasons"]
            assert h["counters"]["broker_dropped"] == h["local"]["broker_dropped"]
            _, _, body = http(cfg.base_url + "/metrics")
            metric = [
                ln
                for ln in body.decode().splitlines()
                if ln.startswith("edge_agent_broker_dropped_total ")
            ]
            assert (
                len(metric) == 1 and float(metric[0].split()[1]) >= h["counters"]["broker_dropped"]
            ), metric
            # What reached the agent was taken whole; the rest is what the broker dropped.
            poll(
                lambda: (
                    agent.health()["counters"]["readings_in"]
                    + agent.health()["local"]["broker_dropped"]
                    >= 10_000
                ),
                30,
                what="every message accounted for",
            )

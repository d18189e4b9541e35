"""SIGHUP applies new [local] settings: the agent moves to another local broker."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.helpers.agent_harness import AgentProcess, Consumer, Publisher, poll, write_config
from tests.helpers.brokers import Broker


def test_sighup_moves_to_a_new_local_broker(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    with (
        Broker(tmp_path / "second-local") as second,
        Consumer(upstream_broker.port, cfg.batch_topic) as consumer,
        AgentProcess(cfg) as agent,
    ):
        agent.wait_ready()
        h0 = agent.health()["config"]
        cfg.local_port = second.port
        cfg.rewrite()
        agent.send(signal.SIGHUP)
        poll(
            lambda: agent.health()["config"] != h0 and agent.health()["local"]["connected"],
            15,
            what="reloaded and connected to the second broker",
        )
        now = time.time()
        with Publisher(second.port) as pub:
            pub.publish("s/moved", json.dumps({"ts": now, "value": 7}))
        recs = consumer.wait_for(
            lambda c: [r for r in c.records() if r["key"] == "s/moved"] or None,
            what="the reading from the second broker",
        )
        assert recs[0]["count"] == 1 and recs[0]["max"] == 7
        assert agent.alive()

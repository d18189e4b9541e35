"""SPEC 1: a SIGHUP reload applies the new file, except `agent.id` and `agent.state_dir`,
which need a restart: the agent says so and keeps its running id and state dir."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.helpers.agent_harness import Consumer, Publisher, poll, running_agent, write_config
from tests.helpers.brokers import Broker

pytestmark = pytest.mark.slow


def test_sighup_keeps_agent_id_and_state_dir_and_says_they_need_a_restart(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    other_dir = tmp_path / "other-state"
    with Consumer(upstream_broker.port) as c, running_agent(cfg) as agent:
        h0 = agent.health()["config"]
        text = cfg.path.read_text()
        assert f'id = "{cfg.agent_id}"' in text and f'state_dir = "{cfg.state_dir}"' in text
        cfg.path.write_text(
            text.replace(f'id = "{cfg.agent_id}"', 'id = "renamed"')
            .replace(f'state_dir = "{cfg.state_dir}"', f'state_dir = "{other_dir}"')
            .replace('size = "1s"', 'size = "2s"')  # a change a reload does apply
        )
        agent.send(signal.SIGHUP)
        poll(lambda: agent.health()["config"] != h0, 10, what="the reload applied")
        log = agent.log()
        assert "agent.id changed: takes effect after a restart" in log, log
        assert "agent.state_dir changed: takes effect after a restart" in log, log
        assert agent.health()["agent"] == cfg.agent_id
        with Publisher(broker.port) as pub:
            pub.publish("s/a", "1")
        c.wait_for(lambda c: c.records(), 15, what="a window after the reload")
        assert {b.topic for b in c.batches} == {cfg.batch_topic}
        assert {b.doc["agent"] for b in c.batches} == {cfg.agent_id}
        assert not other_dir.exists()
        assert agent.stop() == 0

"""SPEC 4, device status: published "on every connect", so an upstream broker that lost
its retained messages (restarted without persistence) has the device's status again
as soon as the agent is back, without waiting for status_interval (60 s by default);
and a plain CBOR map at QoS 1 whatever `compression` does to batches."""

from __future__ import annotations

import time
from pathlib import Path

import cbor2
import pytest

from tests.helpers.agent_harness import Consumer, poll, raw_messages, running_agent, write_config
from tests.helpers.brokers import Broker

pytestmark = pytest.mark.slow


def test_status_is_published_again_on_every_reconnect(broker: Broker, tmp_path: Path) -> None:
    with Broker(tmp_path / "upstream", persistence=False) as up:
        cfg = write_config(tmp_path, broker.port, up.port)
        topic = f"edge/{cfg.agent_id}/status"
        with running_agent(cfg) as agent:
            with Consumer(up.port, "edge/+/status") as c:
                poll(lambda: [s for s in c.statuses if s[0] == topic], 10, what="a first status")
            up.stop()  # retained messages are gone with it
            poll(lambda: not agent.health()["upstream"]["connected"], 10, what="upstream lost")
            restarted = time.time()
            up.start()
            poll(lambda: agent.health()["upstream"]["connected"], 20, what="upstream back")
            with Consumer(up.port, "edge/+/status") as c:
                got = poll(
                    lambda: [d for t, d, retained in c.statuses if t == topic and retained],
                    10,
                    what="the retained status after the reconnect",
                )
            assert got[-1]["state"] == "online" and got[-1]["time"] >= restarted - 1


def test_status_stays_plain_cbor_when_batches_are_deflated(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    """`compression` is for batches; the status map stays CBOR a fleet manager reads as is."""
    with raw_messages(upstream_broker.port, "edge/+/status") as got:
        cfg = write_config(
            tmp_path, broker.port, upstream_broker.port, upstream={"compression": "deflate"}
        )
        with running_agent(cfg):
            poll(lambda: got, 10, what="a status")
        m = got[0]
        assert m.qos == 1 and m.topic == f"edge/{cfg.agent_id}/status"
        assert cbor2.loads(m.payload)["schema"] == "edge-agent/status/1"
        assert ("content-encoding", "deflate") not in (
            getattr(m.properties, "UserProperty", None) or []
        )


def test_the_retained_status_says_what_healthz_says_once_the_agent_is_ready(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    """Upstream often connects before the local broker: its first status says "degraded,
    local broker not reached yet". Once the agent is ready (subscribed locally), that
    change is published at once, not at the next once-a-second check."""
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    topic = f"edge/{cfg.agent_id}/status"
    with running_agent(cfg) as agent:
        assert agent.health()["status"] == "ok"
        with Consumer(upstream_broker.port, "edge/+/status") as c:
            got = poll(
                lambda: [d for t, d, retained in c.statuses if t == topic and retained],
                10,
                what="the retained status",
            )
        assert (got[0]["health"], got[0]["reasons"]) == ("ok", []), got[0]


def test_the_will_does_not_blame_the_upstream_link_it_travels_on(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    """The will is made before the connection it rides on is up; an offline map only
    ever reaches the broker through a connection the agent had, so "upstream
    unreachable" is never one of its reasons."""
    cfg = write_config(tmp_path, broker.port, upstream_broker.port, upstream={"keepalive": "1s"})
    topic = f"edge/{cfg.agent_id}/status"
    with Consumer(upstream_broker.port, "edge/+/status") as c, running_agent(cfg) as agent:
        poll(lambda: [s for s in c.statuses if s[0] == topic], 10, what="online")
        agent.kill()  # kill -9: the broker publishes the will
        will = poll(
            lambda: [d for t, d, _ in c.statuses if t == topic and d["state"] == "offline"],
            10,
            what="the will",
        )[-1]
    assert will["agent"] == cfg.agent_id and will["schema"] == "edge-agent/status/1"
    assert not [r for r in will["reasons"] if "upstream" in r], will

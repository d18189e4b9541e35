"""Device status over MQTT and deflate compression (SPEC 4), with real agents and brokers."""

from __future__ import annotations

import sqlite3
import time
import zlib
from pathlib import Path

import cbor2
import pytest

from edge_agent import __version__
from tests.helpers.agent_harness import (
    HEX12,
    AgentProcess,
    Consumer,
    Publisher,
    pipeline,
    poll,
    raw_messages,
    running_agent,
    write_config,
)
from tests.helpers.brokers import Broker

pytestmark = pytest.mark.slow


def _statuses(c: Consumer, agent: str) -> list[dict]:  # type: ignore[type-arg]
    return [doc for topic, doc, _ in list(c.statuses) if topic == f"edge/{agent}/status"]


def test_status_is_retained_on_connect_refreshed_and_offline_on_graceful_stop(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path, broker.port, upstream_broker.port, upstream={"status_interval": "1s"}
    )
    with running_agent(cfg) as agent:  # noqa: SIM117  (the subscriber comes later, on purpose)
        # a subscriber that comes later still gets the status: it is retained
        with Consumer(upstream_broker.port, "edge/+/status") as c:
            poll(lambda: _statuses(c, cfg.agent_id), 10, what="status")
            _topic, doc, retained = c.statuses[0]
            assert retained
            assert doc == {
                "schema": "edge-agent/status/1",
                "agent": cfg.agent_id,
                "state": "online",
                "version": __version__,
                "config": doc["config"],
                "health": doc["health"],
                "reasons": doc["reasons"],
                "time": doc["time"],
            }
            assert HEX12.fullmatch(doc["config"]) and doc["config"] == agent.health()["config"]
            assert doc["health"] in ("ok", "degraded") and abs(doc["time"] - time.time()) < 30
            # refreshed every status_interval
            poll(
                lambda: len(_statuses(c, cfg.agent_id)) >= 3,
                10,
                what="status refreshed each second",
            )
            assert agent.stop() == 0
            poll(lambda: _statuses(c, cfg.agent_id)[-1]["state"] == "offline", 10, what="offline")
    with Consumer(upstream_broker.port, "edge/+/status") as late:  # and it stays, retained
        poll(lambda: _statuses(late, cfg.agent_id), 10, what="retained status")
        assert _statuses(late, cfg.agent_id)[-1]["state"] == "offline"


def test_status_reaches_a_subscriber_fast_and_a_killed_agent_goes_offline_within_its_keepalive(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port, upstream={"keepalive": "2s"})
    with Consumer(upstream_broker.port, "edge/+/status") as c, running_agent(cfg) as agent:
        poll(lambda: _statuses(c, cfg.agent_id), 10, what="online status")
        assert _statuses(c, cfg.agent_id)[-1]["state"] == "online"
        agent.kill()  # kill -9: no goodbye, the broker publishes the will
        t0 = time.monotonic()
        poll(
            lambda: _statuses(c, cfg.agent_id)[-1]["state"] == "offline",
            10,
            interval=0.02,
            what="offline from the will",
        )
        # MQTT: the broker gives up after 1.5x keep-alive (3 s); allow scheduling slack.
        assert time.monotonic() - t0 < 3.0 + 1.5


def test_no_status_when_the_topic_is_empty(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port, upstream={"status_topic": ""})
    with Consumer(upstream_broker.port) as c, running_agent(cfg), Publisher(broker.port) as pub:
        pub.publish("s/a", "1")
        c.wait_for(lambda c: c.records(), 15, what="a window")
        assert c.statuses == []


def test_deflate_batches_carry_the_user_property_and_resend_the_stored_bytes(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        upstream={"compression": "deflate", "status_topic": ""},
        pipelines=[pipeline(window="none")],
    )
    upstream_broker.stop()  # batches wait in the outbox, compressed
    with running_agent(cfg) as agent, Publisher(broker.port) as pub:
        for i in range(50):
            pub.publish(f"s/{i % 5}", str(i))
        poll(lambda: agent.health()["buffer"]["batches"] >= 1, 15, what="buffered batches")
        poll(lambda: sum(agent.health()["counters"][k] for k in ("readings_in",)) == 50, 15)
        assert agent.stop() == 0
    with sqlite3.connect(next(cfg.state_dir.glob("*.db"))) as db:
        stored = [bytes(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
    assert stored and all(p[0] == 0x78 for p in stored)  # zlib streams, made when buffered
    upstream_broker.start()
    with Consumer(upstream_broker.port) as c, running_agent(cfg):
        c.wait_for(lambda c: len(c.records("readings")) == 50, 20, what="all 50 readings")
        first = c.batches[: len(stored)]
        assert [b.raw for b in first] == stored  # the same bytes as buffered, not re-encoded
        for b in c.batches:
            assert b.content_type == "application/cbor"
            assert b.doc == cbor2.loads(zlib.decompress(b.raw))
        assert not c.errors


def test_deflate_property_on_the_wire(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    with raw_messages(upstream_broker.port, "edge/+/batches") as got:
        time.sleep(0.3)
        cfg = write_config(
            tmp_path, broker.port, upstream_broker.port, upstream={"compression": "deflate"}
        )
        with running_agent(cfg), Publisher(broker.port) as pub:
            pub.publish("s/a", "1")
            poll(lambda: got, 15, what="a batch")
        m = got[0]
        assert m.properties.ContentType == "application/cbor"
        assert ("content-encoding", "deflate") in m.properties.UserProperty
        assert cbor2.loads(zlib.decompress(m.payload))["schema"] == "edge-agent/batch/1"


def test_a_health_change_publishes_at_once(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    """status_interval is 60 s: a second status within seconds can only be the health change."""
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    broker.stop()  # the local broker is not there yet: degraded
    with Consumer(upstream_broker.port, "edge/+/status") as c, AgentProcess(cfg):
        poll(lambda: _statuses(c, cfg.agent_id), 15, what="first status")
        first = _statuses(c, cfg.agent_id)[0]
        assert first["health"] == "degraded" and first["reasons"], first
        broker.start()
        poll(
            lambda: _statuses(c, cfg.agent_id)[-1]["health"] == "ok",
            15,
            what="status after the change",
        )
        assert len(_statuses(c, cfg.agent_id)) <= 3  # published on change, not polled every second

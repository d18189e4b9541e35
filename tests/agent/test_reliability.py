"""#11: nothing lost, nothing stuck. The agent as a black box, real brokers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.helpers.agent_harness import (
    AgentProcess,
    Consumer,
    Publisher,
    cli,
    pipeline,
    poll,
    write_config,
)
from tests.helpers.brokers import Broker
from tests.helpers.load import LoadPublisher

_BIG = ["count", *(f"p{n}" for n in range(1, 90))]  # about 1.2 KB of CBOR per window


def test_a_small_buffer_drops_nothing_while_upstream_acknowledges(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    """#11.1: max_bytes = "256KiB", windows of ~1.2 KB, full 64 KiB batches, a healthy
    uplink: no batch is dropped (it used to drop within a second)."""
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(aggregates=_BIG, size="500ms")],
        buffer={"max_bytes": "256KiB"},
    )
    with Consumer(upstream_broker.port, cfg.batch_topic) as consumer, AgentProcess(cfg) as agent:
        agent.wait_ready()
        load = LoadPublisher(broker.port, rate=1500, sensors=300).start()
        time.sleep(4.0)
        load.stop()
        want = load.acked
        poll(
            lambda: sum(r["count"] for r in _latest(consumer)) >= want,
            30,
            what=f"{want} readings counted upstream",
        )
        h = agent.health()
        assert h["counters"]["batches_dropped"] == 0, h["dropped_by_reason"]
        assert max(len(b.raw) for b in consumer.unique()) > 32 * 1024  # big batches were made
        assert sum(r["count"] for r in _latest(consumer)) == want


def _latest(consumer: Consumer) -> list[dict[str, object]]:
    best: dict[tuple[object, ...], dict[str, object]] = {}
    for r in consumer.records():
        k = (r["pipeline"], r["key"], r["start"], r["end"])
        if k not in best or r["rev"] > best[k]["rev"]:  # type: ignore[operator]
            best[k] = r
    return list(best.values())


def test_ttl_applies_to_batches_sent_on_reconnect(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    """#11.2: ttl = "2s", upstream down; the buffered batches are older than ttl when
    the link returns, and nothing was committed since: they are dropped and counted,
    not sent."""
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline(window="none")],
        upstream={"max_batch_delay": "0s"},
        buffer={"ttl": "2s"},
    )
    upstream_broker.stop()
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        with Publisher(broker.port) as pub:
            for i in range(5):
                pub.publish(f"s/k{i}", json.dumps({"value": i}))
        poll(lambda: agent.health()["buffer"]["batches"] >= 1, 10, what="batches buffered")
        time.sleep(3.0)
        upstream_broker.start()
        with Consumer(upstream_broker.port, cfg.batch_topic) as consumer:
            h = poll(
                lambda: (d := agent.health())["upstream"]["connected"] and d,
                15,
                what="upstream connected",
            )
            time.sleep(1.5)
            h = agent.health()
            assert consumer.unique() == [], [b.doc for b in consumer.unique()]
            assert h["dropped_by_reason"].get("ttl", 0) >= 1, h
            assert h["counters"]["batches_sent"] == 0


def test_a_bound_too_small_to_work_is_refused_with_the_minimum(tmp_path: Path) -> None:
    """#11.1: a max_bytes that cannot hold one max_batch_bytes batch and SQLite's own
    pages is a config error naming key, line and the documented minimum."""
    p = tmp_path / "agent.toml"
    p.write_text(
        '[upstream]\nmax_batch_bytes = "64KiB"\n\n[buffer]\nmax_bytes = "200KiB"\n\n'
        '[[pipeline]]\nname = "p"\ntopics = ["s/#"]\n'
    )
    for command in ("check", "run"):
        r = cli(command, "-c", str(p), timeout=20)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert f"{p}:5: buffer.max_bytes:" in r.stderr, r.stderr
        assert "256KiB" in r.stderr, r.stderr
    p.write_text(
        '[upstream]\nmax_batch_bytes = "16KiB"\n\n[buffer]\nmax_bytes = "200KiB"\n\n'
        '[[pipeline]]\nname = "p"\ntopics = ["s/#"]\n'
    )
    r = cli("check", "-c", str(p), timeout=20)
    assert r.returncode == 0, r.stderr


def test_a_corrupt_database_is_quarantined_loudly(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    """#11.5: proven corruption moves the file aside with a log line, a health reason
    and a counter."""
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    cfg.state_dir.mkdir(parents=True)
    (cfg.state_dir / "edge-agent.db").write_bytes(b"not SQLite at all\n" * 400)
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        h = agent.health()
        assert h["state"]["quarantined"] == 1, h
        assert h["status"] == "degraded"
        assert any("corrupt" in r and "moved to" in r for r in h["reasons"]), h["reasons"]
        assert "moved it to" in agent.log()

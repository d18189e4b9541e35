"""Issue 5: `priority = "high"` pipelines. Their batches leave before others' under
a rate limit, and a full buffer drops them last."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers.agent_harness import (
    AgentProcess,
    Consumer,
    Publisher,
    pipeline,
    poll,
    write_config,
)
from tests.helpers.brokers import Broker, free_port
from tests.helpers.tcp_proxy import TcpProxy


def _pipelines() -> list[dict[str, object]]:
    return [
        pipeline("alarms", topics=["alarm/#"], window="none", priority="high"),
        pipeline("bulk", topics=["bulk/#"], window="none"),
    ]


def _kinds(batches: list[object]) -> list[str]:
    """Per batch in arrival order: the pipeline of its readings (each batch holds one pipeline here)."""
    out = []
    for b in batches:
        names = {r["pipeline"] for r in b.doc.get("readings", [])}  # type: ignore[attr-defined]
        assert len(names) == 1, names
        out.append(names.pop())
    return out


def test_high_priority_batches_overtake_a_rate_limited_queue(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    # One reading per batch, 5 batches/s: 40 bulk batches queue for ~8 s.
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=_pipelines(),
        upstream={"rate_limit": "5/s", "max_batch_windows": 1, "max_batch_delay": "0s"},
    )
    with Consumer(upstream_broker.port, cfg.batch_topic) as consumer, AgentProcess(cfg) as agent:
        agent.wait_ready()
        with Publisher(broker.port) as pub:
            for i in range(40):
                pub.publish(f"bulk/{i}", json.dumps({"ts": time.time(), "value": i}))
            # All 40 committed (in the outbox or sent) before the alarms come.
            poll(
                lambda: (
                    agent.health()["buffer"]["batches"] + agent.health()["counters"]["batches_sent"]
                    >= 40
                ),
                10,
                what="bulk batches committed",
            )
            before = len(consumer.batches)
            assert before < 30, "the rate limit should still hold most bulk batches back"
            for i in range(3):
                pub.publish(f"alarm/{i}", json.dumps({"ts": time.time(), "value": 100 + i}))
        consumer.wait_for(lambda c: len(c.unique()) == 43, 20, what="every batch upstream")
    kinds = _kinds(consumer.unique())
    first_alarm = kinds.index("alarms")
    # The alarms came next, together: only batches already in flight (or bought with
    # the tokens of the checkpoint interval before they were committed) got ahead.
    assert kinds[first_alarm : first_alarm + 3] == ["alarms"] * 3, kinds
    assert first_alarm <= before + 3, (before, kinds)
    assert kinds.count("bulk") - first_alarm >= 20, kinds  # most of the queue waited behind them
    # Within a priority, seq order holds.
    for name in ("alarms", "bulk"):
        seqs = [b.seq for b, k in zip(consumer.unique(), kinds, strict=True) if k == name]
        assert seqs == sorted(seqs), (name, seqs)


@pytest.mark.parametrize(
    "burst",
    [
        False,
        True,  # regression: one checkpoint's burst of normal batches deleted high-priority ones
    ],
    ids=["spread", "one-checkpoint-burst"],
)
def test_a_full_buffer_drops_high_priority_batches_last(
    tmp_path: Path, broker: Broker, burst: bool
) -> None:
    # The agent's upstream is a proxy to a port where nothing listens: everything
    # buffers. Later the proxy is pointed at a broker whose consumer is already subscribed.
    proxy = TcpProxy(free_port()).start()
    cfg = write_config(
        tmp_path,
        broker.port,
        proxy.port,
        pipelines=_pipelines(),
        upstream={"max_batch_delay": "0s"},
        buffer={"max_bytes": "512KiB", "when_full": "drop_oldest"},
    )
    n_fields, n_bulk = 400, 25
    fields = {
        f"f{i}": float(i) for i in range(n_fields)
    }  # one message: 400 readings, a ~30 KB batch
    with proxy, AgentProcess(cfg) as agent:
        agent.wait_ready()
        with Publisher(broker.port) as pub:
            # The alarms are the oldest batches: drop_oldest alone would take them first.
            for i in range(3):
                pub.publish(f"alarm/{i}", json.dumps({"ts": time.time(), "value": i}))
            poll(
                lambda: (
                    lambda h: (
                        h["counters"]["readings_in"] == 3
                        and h["buffer"]["batches"] >= 1
                        and h["buffer"]["batches"] + h["buffer"]["bytes"] > 0
                    )
                )(agent.health()),
                10,
                what="alarms buffered",
            )
            for i in range(n_bulk):
                pub.publish(f"bulk/{i}", json.dumps({"ts": time.time(), **fields}))
                if not burst:
                    time.sleep(0.3)  # about one bulk batch per checkpoint (250 ms)
        h = poll(
            lambda: (
                lambda h: (
                    h
                    if h["counters"]["readings_in"] == 3 + n_bulk * n_fields
                    and h["counters"]["batches_dropped"] > 0
                    else None
                )
            )(agent.health()),
            15,
            what="the buffer full and dropping",
        )
        assert h["dropped_by_reason"], h
        with Broker(tmp_path / "upstream") as up, Consumer(up.port, cfg.batch_topic) as consumer:
            proxy.target = ("127.0.0.1", up.port)
            h = poll(
                lambda: (
                    lambda h: (
                        h if h["upstream"]["connected"] and h["buffer"]["batches"] == 0 else None
                    )
                )(agent.health()),
                30,
                what="the buffer drained",
            )
            consumer.wait_for(lambda c: len(c.unique()) == h["counters"]["batches_sent"], 10)
            batches = consumer.unique()
    kinds = _kinds(batches)
    # Every alarm survived and drained first; bulk batches were the ones dropped.
    n_alarm = kinds.count("alarms")
    assert n_alarm >= 1 and kinds[:n_alarm] == ["alarms"] * n_alarm, kinds
    alarm_values = sorted(
        r["value"]
        for b, k in zip(batches, kinds, strict=True)
        if k == "alarms"
        for r in b.doc["readings"]
    )
    assert alarm_values == [0, 1, 2]
    bulk_readings = sum(
        len(b.doc["readings"]) for b, k in zip(batches, kinds, strict=True) if k == "bulk"
    )
    assert bulk_readings < n_bulk * n_fields
    assert h["counters"]["batches_dropped"] >= 1

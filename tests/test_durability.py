"""Issue 4, "loses nothing": the real agent process against real mosquitto brokers.

Sensors publish QoS 1 readings, one per message, each with a unique integer value,
while the upstream broker goes away, the agent is killed with SIGKILL at random
moments, or stopped with SIGTERM and started again. Afterwards the consumer's view
(batches deduplicated on (agent, seq), the newest rev of each window) must hold every
reading exactly once: the sum of window counts equals the readings published and the
sum of window sums equals the sum of the values published.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.buffer.store import Checkpoint, NewBatch, Store
from tests.agent_harness import (
    AgentProcess,
    Consumer,
    http,
    pipeline,
    poll,
    write_config,
)
from tests.brokers import Broker

pytestmark = pytest.mark.slow

IDLE = 3.0  # idle_timeout: longer than a kill-and-restart, so restored keys do not go idle first


class LoadPublisher:
    """Sensors on one paho client: QoS 1, `{"ts": now, "value": i}` with i = 0, 1, 2, ...

    Runs in a thread at about `rate` messages/s over `sensors` topics until stopped;
    `acked` counts messages the local broker acknowledged, `value_sum` their values.
    """

    def __init__(self, port: int, *, rate: float = 800.0, sensors: int = 4, prefix: str = "s") -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"load-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.max_inflight_messages_set(200)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.rate = rate
        self.topics = [f"{prefix}/{k}" for k in range(sensors)]
        self.sent = 0
        self.acked = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, *_args: Any) -> None:
        with self._lock:
            self.acked += 1

    def start(self) -> LoadPublisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while self.sent < due:
                i = self.sent
                payload = b'{"ts": %.6f, "value": %d}' % (time.time(), i)
                self.client.publish(self.topics[i % len(self.topics)], payload, qos=1)
                self.sent += 1
            time.sleep(0.005)

    def stop(self) -> tuple[int, int]:
        """Stop publishing, wait for every PUBACK; (messages, sum of their values)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        poll(lambda: self.acked >= self.sent, 15, what="every sensor message acknowledged")
        self.client.disconnect()
        self.client.loop_stop()
        n = self.sent
        return n, n * (n - 1) // 2


def window_totals(consumer: Consumer) -> tuple[int, float, int]:
    """(sum of counts, sum of sums, windows) over the newest rev of each window.

    Also checks what SPEC 4 promises about the stream itself: `Consumer.unique`
    fails on a seq resent with other bytes, and with tumbling windows and no
    allowed lateness every window is emitted once (rev 0) - a second emission in
    another batch would be a reading counted twice that the rev rule hides.
    """
    seen: dict[tuple[Any, ...], int] = {}
    count = 0
    total = 0.0
    for b in consumer.unique():
        for w in b.doc.get("windows", ()):
            k = (w["pipeline"], w["key"], w["start"], w["end"])
            assert w["rev"] == 0, f"window {k} revised: {w}"
            assert k not in seen, f"window {k} emitted in seq {seen[k]} and again in seq {b.seq}"
            seen[k] = b.seq
            count += int(w["count"])
            total += float(w["sum"])
    return count, total, len(seen)


def first_arrival_seqs(consumer: Consumer) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    for b in consumer.batches:
        if b.seq not in seen:
            seen.add(b.seq)
            out.append(b.seq)
    return out


def settle(consumer: Consumer, agent: AgentProcess, published: int, timeout: float = 25.0) -> tuple[int, float]:
    """Wait until the consumer holds `published` readings and the agent is quiet.

    Quiet = its outbox is empty and no batch arrived for longer than idle_timeout,
    so a reading counted twice would have shown up by then.
    """
    poll(lambda: window_totals(consumer)[0] >= published, timeout,
         what=f"{published} readings upstream (have {window_totals(consumer)[0]})")

    def quiet() -> bool:
        n = len(consumer.batches)
        h = agent.health()
        if h["buffer"]["batches"]:
            return False
        t0 = time.monotonic()
        while time.monotonic() - t0 < IDLE + 0.5:
            time.sleep(0.1)
            if len(consumer.batches) != n:
                return False
        return True

    poll(quiet, 20, what="agent quiet")
    count, total, _ = window_totals(consumer)
    return count, total


def agent_cfg(tmp_path: Path, broker: Broker, upstream: Broker, **kw: Any) -> Any:
    keys: dict[str, Any] = {"aggregates": ["count", "sum"], "idle_timeout": f"{IDLE}s", **kw.pop("pipe", {})}
    pipe = pipeline(topics=["s/#"], **keys)
    return write_config(tmp_path, broker.port, upstream.port, pipelines=[pipe], **kw)


# -- kill -9 -----------------------------------------------------------------------


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    seed = int(os.environ.get("DURABILITY_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    cfg = agent_cfg(tmp_path, broker, upstream_broker)
    with Consumer(upstream_broker.port) as consumer, AgentProcess(cfg) as agent:
        agent.wait_ready()
        load = LoadPublisher(broker.port, rate=1500).start()
        for _ in range(4):
            time.sleep(rng.uniform(0.3, 1.5))  # a random moment under load
            agent.kill()  # SIGKILL
            agent.start()
            agent.wait_ready()
        time.sleep(rng.uniform(0.3, 1.0))
        published, value_sum = load.stop()
        count, total = settle(consumer, agent, published)
        assert (count, total) == (published, value_sum), f"seed {seed}: {agent.log()[-3000:]}"
        seqs = sorted(b.seq for b in consumer.unique())
        assert seqs == list(range(len(seqs))), f"seed {seed}: seq gaps without drops"
        assert agent.health()["counters"]["batches_dropped"] == 0


def test_sigterm_restarts_keep_open_windows(broker: Broker, upstream_broker: Broker, tmp_path: Path) -> None:
    # 3 s windows: every stop leaves windows open; they must survive in the checkpoint.
    cfg = agent_cfg(tmp_path, broker, upstream_broker, pipe={"size": "3s"})
    with Consumer(upstream_broker.port) as consumer, AgentProcess(cfg) as agent:
        agent.wait_ready()
        load = LoadPublisher(broker.port, rate=1000).start()
        for _ in range(3):
            time.sleep(0.7)
            assert agent.stop(signal.SIGTERM) == 0, agent.log()[-3000:]
            assert "Traceback" not in agent.log()
            agent.start()
            agent.wait_ready()
        published, value_sum = load.stop()
        assert settle(consumer, agent, published) == (published, value_sum)


# -- upstream outage -------------------------------------------------------------------


def test_upstream_outage_buffers_then_drains_in_seq_order(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = agent_cfg(tmp_path, broker, upstream_broker, pipe={"size": "250ms"})
    with Consumer(upstream_broker.port) as consumer, AgentProcess(cfg) as agent:
        agent.wait_ready()
        load = LoadPublisher(broker.port, rate=1000).start()
        poll(lambda: consumer.batches, 10, what="first batch")
        upstream_broker.stop()
        h = poll(lambda: (d := agent.health())["buffer"]["batches"] >= 5 and d, 15, what="buffering")
        assert h["status"] == "degraded" and not h["upstream"]["connected"]
        assert any("upstream" in r for r in h["reasons"]), h["reasons"]
        assert h["buffer"]["bytes"] > 0 and h["buffer"]["oldest_age_s"] > 0
        time.sleep(1.0)  # let the backlog grow behind the outage
        later = agent.health()["buffer"]
        assert later["batches"] > h["buffer"]["batches"]
        assert later["oldest_age_s"] >= h["buffer"]["oldest_age_s"]
        upstream_broker.start()
        time.sleep(0.5)  # new batches queue behind the backlog while it drains
        published, value_sum = load.stop()
        assert settle(consumer, agent, published) == (published, value_sum)
        order = first_arrival_seqs(consumer)
        assert order == sorted(order), "batches did not arrive in seq order"
        assert order == list(range(len(order)))
        h = agent.health()
        assert h["status"] == "ok" and h["buffer"]["batches"] == 0 and h["buffer"]["oldest_age_s"] is None


# -- restart with a large backlog ------------------------------------------------------------


async def _fill_outbox(state_dir: Path, agent_id: str, topic: str, n: int) -> None:
    store = Store(state_dir)
    await store.open()
    cp = Checkpoint()
    now = time.time()
    for seq in range(n):
        doc = {"schema": "edge-agent/batch/1", "agent": agent_id, "seq": seq, "sent": now,
               "config": "000000000000", "windows": []}
        cp.batches.append(NewBatch(0, seq, topic, cbor2.dumps(doc), now))
    cp.seqs[0] = n
    await store.commit(cp, now)
    await store.close()


def test_start_with_a_100k_batch_backlog_is_ready_at_once_and_drains_behind(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    n = 100_000
    cfg = agent_cfg(tmp_path, broker, upstream_broker, pipe={"idle_timeout": "500ms"})
    asyncio.run(_fill_outbox(cfg.state_dir, cfg.agent_id, cfg.batch_topic, n))
    with Consumer(upstream_broker.port) as consumer:
        t0 = time.monotonic()
        with AgentProcess(cfg) as agent:
            agent.wait_ready(timeout=10)
            ready_s = time.monotonic() - t0
            assert ready_s < 5.0, f"ready after {ready_s:.1f} s"
            pub = LoadPublisher(broker.port, rate=1)
            pub.client.publish("s/live", b'{"value": 1}', qos=1)
            poll(lambda: agent.health()["counters"]["readings_in"] == 1, 5, what="live reading taken")
            pub.stop()
            # The backlog drains oldest first; the live window's batch (seq n) comes behind it.
            poll(lambda: len(consumer.batches) >= 1000, 15, what="backlog draining")
            assert first_arrival_seqs(consumer)[:1000] == list(range(1000))
            h = agent.health()
            assert 0 < h["buffer"]["batches"] <= n + 1 and h["buffer"]["oldest_age_s"] > 0
            assert all(b.seq < n for b in consumer.batches)
            assert http(cfg.base_url + "/readyz")[0] == 200

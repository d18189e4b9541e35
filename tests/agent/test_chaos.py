"""#11 "what done looks like": chaos. Sensors publish QoS 1 at a steady rate while the
agent is SIGKILLed again and again, the upstream broker is stopped and started and
the local broker restarts. Afterwards every reading is accounted for upstream: per
key, the window counts add up to the readings published, and no (agent, seq) was
seen with two different payloads.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

from tests.helpers.agent_harness import AgentProcess, Consumer, pipeline, write_config
from tests.helpers.brokers import Broker
from tests.helpers.load import LoadPublisher, settle

# idle_timeout: longer than a kill-and-restart and than the sensors' own reconnect
# after the local broker restarts, so no key goes idle while its readings wait in a
# sensor (those would come late, past the fired window: a sensor outage, not a loss).
IDLE = 4.0
SENSORS = 4
# A sensor whose broker restarts resends its unacknowledged publishes after the ones
# it queued meanwhile (paho): readings of one key arrive out of order by up to about
# its reconnect time. The SPEC default (2s) is there for that; 3 s gives margin.
ORDER = "3s"


def _latest_counts(consumer: Consumer) -> Counter[str]:
    """Per key, the sum of window counts over the newest rev of each window.

    Consumer.unique() fails if one (schema, agent, seq) came with two payloads."""
    best: dict[tuple[object, ...], dict[str, object]] = {}
    for b in consumer.unique():
        for w in b.doc.get("windows", ()):
            k = (w["pipeline"], w["key"], w["start"], w["end"])
            if k not in best or w["rev"] > best[k]["rev"]:  # type: ignore[operator]
                best[k] = w
    out: Counter[str] = Counter()
    for (_, key, _, _), w in best.items():
        out[str(key)] += int(w["count"])  # type: ignore[call-overload]
    return out


def test_chaos_kills_and_broker_restarts_lose_and_double_nothing(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    print(f"CHAOS_SEED={seed}  (set it to replay these moments)")  # shown on any failure
    rng = random.Random(seed)
    pipe = pipeline(
        topics=["s/#"],
        aggregates=["count", "sum"],
        idle_timeout=f"{IDLE}s",
        max_out_of_orderness=ORDER,
    )
    cfg = write_config(tmp_path, broker.port, upstream_broker.port, pipelines=[pipe])
    faults = ["kill", "kill", "upstream", "kill", "local", "kill", "upstream+kill"]
    with Consumer(upstream_broker.port) as consumer, AgentProcess(cfg) as agent:
        agent.wait_ready()
        load = LoadPublisher(broker.port, rate=600, sensors=SENSORS)
        load.client.reconnect_delay_set(min_delay=1, max_delay=1)  # sensors come back at once
        load.start()
        for fault in faults:
            time.sleep(rng.uniform(0.2, 0.9))  # a random moment under load
            if fault == "kill":
                agent.kill()  # SIGKILL
                agent.start()
            elif fault == "upstream":
                upstream_broker.stop()
                time.sleep(rng.uniform(0.3, 1.0))
                upstream_broker.start()
            elif fault == "local":
                broker.stop()  # sensors and agent lose it; its persistence keeps sessions
                time.sleep(rng.uniform(0.2, 0.6))
                broker.start()
            else:
                upstream_broker.stop()
                agent.kill()
                agent.start()
                time.sleep(rng.uniform(0.2, 0.6))
                upstream_broker.start()
        agent.wait_ready(timeout=30)
        time.sleep(rng.uniform(0.2, 0.6))
        published, value_sum = load.stop()
        try:
            count, total = settle(consumer, agent, published, timeout=40, idle=IDLE)
        except AssertionError as exc:
            h = agent.health()
            raise AssertionError(
                f"seed {seed}: {exc}; counters {h['counters']}, {h['messages']}, "
                f"{h['rejected_by_reason']}, {h['dropped_by_reason']}"
            ) from None
        per_key = _latest_counts(consumer)
        want = {f"s/{k}": len(range(k, published, SENSORS)) for k in range(SENSORS)}
        detail = f"seed {seed}: {agent.log()[-3000:]}"
        assert dict(per_key) == want, detail
        assert (count, total) == (published, value_sum), detail
        seqs = sorted(b.seq for b in consumer.unique())
        assert seqs == list(range(len(seqs))), f"seed {seed}: seq gaps without drops"
        assert agent.health()["counters"]["batches_dropped"] == 0

"""An ingest flood far beyond the agent's capacity (issue 5): peak RSS and recovery.

    python bench/bench_flood.py [--runs 3] [--rate 60000] [--seconds 20] [--pipelines 4]

Each run, on fresh brokers (the local one with `max_queued_messages 100000000`, so
it holds the whole backlog): the agent (`--pipelines` tumbling 1 s pipelines on the same
topics, so each message costs it that many readings) and raw publisher processes
(bench.common.PublisherPool: 100 sensors, QoS 1, `{"ts": now, "value": v}`) that
offer `--rate` messages/s for `--seconds`.

- offered: messages/s the local broker acknowledged while the flood lasted.
- capacity: messages/s the agent took in meanwhile (readings_in / pipelines over
  the flood's second half): the flood factor is offered / capacity.
- peak RSS: the agent's VmHWM over the whole run.
- recovery: publishers done -> /healthz says `ingest.overloaded` false, status ok and
  readings_in == published x pipelines (nothing lost: QoS 1 waits in the broker).
- health answers: /healthz requests answered within 2 s during the flood.

Figures are medians over --runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import AgentProcess, Broker, PublisherPool, free_port, median, peak_rss

AGENT_TOML = """\
[agent]
id = "bench-flood"
state_dir = "{state}"
log_level = "warning"

[local]
port = {local}

[upstream]
port = {upstream}
max_batch_delay = "250ms"

[health]
listen = "127.0.0.1:{health}"
"""

PIPELINE = """
[[pipeline]]
name = "p{i}"
topics = ["sensors/#"]
window = "tumbling"
size = "1s"
max_out_of_orderness = "0s"
idle_timeout = "2s"
"""


def healthz(port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return dict(json.loads(r.read()))
    except OSError:
        return None


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    k = args.pipelines
    try:
        # The local broker must hold the whole backlog: a stock limit (or even the
        # tests' 1,000,000) is smaller than a 20 s flood at 60,000/s.
        with (
            Broker(work / "local", max_queued_messages=100_000_000) as local,
            Broker(work / "upstream") as upstream,
        ):
            health = free_port()
            cfg = work / "agent.toml"
            cfg.write_text(
                AGENT_TOML.format(
                    state=work / "state", local=local.port, upstream=upstream.port, health=health
                )
                + "".join(PIPELINE.format(i=i) for i in range(k))
            )
            pubs = PublisherPool(local.port, sensors=100, procs=args.procs, inflight=2000)
            agent = AgentProcess(cfg, health, work / "agent.log").start()
            try:
                n = int(args.rate * args.seconds)
                result: dict[str, Any] = {}
                load = threading.Thread(
                    target=lambda: result.update(pubs.publish(n, args.rate)), daemon=True
                )
                samples: list[tuple[float, dict[str, Any] | None]] = []
                t0 = time.monotonic()
                load.start()
                while load.is_alive():
                    samples.append((time.monotonic() - t0, healthz(health)))
                    time.sleep(0.25)
                t_end = time.monotonic()
                flood_s = t_end - t0
                answered = [(t, h) for t, h in samples if h is not None]
                half = [(t, h) for t, h in answered if t >= flood_s / 2]
                capacity = float("nan")
                if len(half) >= 2:
                    (ta, ha), (tb, hb) = half[0], half[-1]
                    capacity = (
                        (hb["counters"]["readings_in"] - ha["counters"]["readings_in"])
                        / k
                        / (tb - ta)
                    )
                recovered = None
                deadline = time.monotonic() + args.recovery_timeout
                while time.monotonic() < deadline:
                    h = healthz(health, 5.0)
                    if (
                        h is not None
                        and h["counters"]["readings_in"] >= n * k
                        and not h["ingest"]["overloaded"]
                        and h["status"] == "ok"
                    ):
                        recovered = time.monotonic() - t_end
                        break
                    time.sleep(0.1)
                final = healthz(health, 5.0) or {}
                broker_log = local.log.read_text(errors="replace") if local.log.exists() else ""
                return {
                    "offered": result.get("sent", n) / flood_s,
                    "capacity": capacity,
                    "factor": result.get("sent", n) / flood_s / capacity
                    if capacity
                    else float("nan"),
                    "peak_rss_mib": peak_rss(agent.pid) / 2**20,
                    "recovery_s": recovered,
                    "overloaded_seen": any(h["ingest"]["overloaded"] for _, h in answered),
                    "health_answered": f"{len(answered)}/{len(samples)}",
                    "readings_in": final.get("counters", {}).get("readings_in"),
                    "expected": n * k,
                    "alive": agent.proc is not None and agent.proc.poll() is None,
                    # mosquitto says so when it drops for a client: then a loss is not the agent's.
                    "broker_dropped": "being dropped" in broker_log,
                }
            finally:
                agent.stop()
                pubs.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--rate", type=float, default=60000.0, help="messages/s offered (the publishers' target)"
    )
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument(
        "--pipelines", type=int, default=40, help="40: ~10x beyond capacity on a 2-core VM"
    )
    ap.add_argument("--procs", type=int, default=2, help="publisher processes")
    ap.add_argument("--recovery-timeout", type=float, default=600.0)
    args = ap.parse_args()
    runs = []
    for i in range(args.runs):
        r = one_run(args)
        runs.append(r)
        print(
            f"run {i + 1}: "
            + ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
            ),
            flush=True,
        )
    for key in ("offered", "capacity", "factor", "peak_rss_mib", "recovery_s"):
        vals = [r[key] for r in runs if r[key] is not None]
        print(f"{key:<14} median {median(vals):10.1f}  {[round(v, 1) for v in vals]}")
    print(
        "lost readings:",
        [r["expected"] - (r["readings_in"] or 0) for r in runs],
        "alive:",
        [r["alive"] for r in runs],
    )


if __name__ == "__main__":
    main()

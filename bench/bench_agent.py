"""End-to-end throughput of the agent against a bare paho subscriber (issue 2).

    python bench/bench_agent.py [--runs 3] [--quick] [--rates 5000,10000,...]
                                [--duration 5] [--profile OUT.prof]

100 sensors publish QoS 1 JSON readings `{"ts": <now>, "value": v}` on sensors/<i>
to a local mosquitto from publisher processes. Each run, on fresh brokers:

1. Bare subscriber (the baseline), on the same broker: a paho process that only
   counts QoS 1 messages. "live": publishers go flat out while it is online; its rate
   is messages / (last - first arrival). "drain": the broker holds a backlog of N
   messages for its persistent session and it drains them (no publisher competing
   for the CPU). Both with paho's automatic acks and with manual acks in batches.
2. The agent, `python -m edge_agent run -c cfg` (tumbling 1 s windows, count/min/
   max/mean, max_out_of_orderness 0 s, idle_timeout 2 s, max_batch_delay 250 ms)
   with a consumer on the upstream broker that sums window counts of the CBOR
   batches (deduplicated on (agent, seq), newest rev per window). For each rate of a
   ramp it publishes for --duration s, then waits until the upstream sum stops
   changing. A step passes with zero loss (upstream sum == readings published) when
   the agent also kept up: its readings_in reached the published count within
   --keepup s after the publishers stopped. The figure is the highest *achieved*
   publishing rate of a passing step (the publishers may fall short of the target).
3. The agent draining a backlog: stopped, N readings queued for its persistent
   session, started again; rate = N / (ready -> readings_in == N).

Figures are medians over --runs. The machine is shared and has 2 cores: publishers,
mosquitto, the agent and whatever else runs compete for them; read the load average
printed at the end, and compare ratios within a run rather than absolute rates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    AgentProcess,
    Broker,
    PublisherPool,
    SubscriberProcess,
    UpstreamConsumer,
    cpu_seconds,
    free_port,
    median,
    peak_rss,
    wait_for,
)

IDLE_TIMEOUT = 2.0
DEFAULT_RATES = "2500,5000,7500,10000,15000,20000,25000,30000,40000,50000,60000,80000"

AGENT_TOML = """\
[agent]
id = "bench"
state_dir = "{state}"
log_level = "warning"

[local]
port = {local}

[upstream]
port = {upstream}
max_batch_delay = "250ms"

[health]
listen = "127.0.0.1:{health}"

[[pipeline]]
name = "bench"
topics = ["sensors/#"]
window = "tumbling"
size = "1s"
aggregates = ["count", "min", "max", "mean"]
max_out_of_orderness = "0s"
idle_timeout = "{idle}s"
"""


@dataclass
class Step:
    target: int
    sent: int = 0
    rate: float = 0.0  # achieved publishing rate
    upstream: int = 0  # sum of window counts received upstream for this step
    drain_s: float = float("nan")  # publishers stopped -> agent's readings_in caught up
    processed_rate: float = float("nan")  # sent / (publishing + catch-up): what it really took in
    settle_s: float = float("nan")  # publishers stopped -> upstream sum final
    cpu_per_1k: float = float("nan")
    bytes_per_reading: float = float("nan")
    rss: int = 0
    kept_up: bool = False

    @property
    def lost(self) -> int:
        return max(0, self.sent - self.upstream)

    @property
    def dups(self) -> int:
        return max(0, self.upstream - self.sent)

    @property
    def ok(self) -> bool:
        return self.upstream == self.sent and self.kept_up


@dataclass
class RunResult:
    sub: dict[str, float] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    agent_drain: float = float("nan")
    agent_drain_lost: int = 0
    drain_rss: int = 0  # peak RSS of the agent process that drained the backlog
    peak_rss: int = 0
    upstream_dup_batches: int = 0

    @property
    def best(self) -> Step | None:
        ok = [s for s in self.steps if s.ok]
        return max(ok, key=lambda s: s.rate) if ok else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- baseline


def bare_live(port: int, pool: PublisherPool, n: int, mode: str) -> tuple[float, float]:
    """(subscriber rate, publisher rate) with the subscriber online, publishers flat out."""
    sub = SubscriberProcess(port, mode=mode)
    try:
        pub = pool.publish(n, None)
        wait_for(lambda: sub.stats(flush=True)["n"] >= n, 60, 0.1)
        s = sub.stats()
        if s["n"] != n:
            log(f"  bare subscriber ({mode}) got {s['n']} of {n}")
        return s["n"] / max(1e-9, s["last"] - s["first"]), pub["rate"]
    finally:
        sub.close()


def bare_drain(port: int, pool: PublisherPool, n: int, mode: str) -> float:
    """Rate at which the subscriber drains a backlog of n messages queued for its session."""
    cid = f"bench-drain-{mode}-{os.getpid()}"
    SubscriberProcess(port, mode=mode, client_id=cid).close()  # the session and subscription stay
    pool.publish(n, None)
    sub = SubscriberProcess(port, mode=mode, client_id=cid)
    try:
        wait_for(lambda: sub.stats(flush=True)["n"] >= n, 60, 0.1)
        s = sub.stats()
        if s["n"] != n:
            log(f"  bare subscriber drain ({mode}) got {s['n']} of {n}")
        return s["n"] / max(1e-9, s["last"] - s["first"])
    finally:
        sub.close()


# --------------------------------------------------------------------------- agent


def run_step(
    agent: AgentProcess,
    consumer: UpstreamConsumer,
    pool: PublisherPool,
    target: int,
    duration: float,
    keepup: float,
) -> Step:
    step = Step(target)
    c0 = consumer.stats()
    in0 = agent.counters().get("readings_in", 0)
    cpu0 = cpu_seconds(agent.pid)
    pub = pool.publish(int(target * duration), target)
    t_end = time.monotonic()
    step.sent, step.rate = pub["sent"], pub["rate"]
    # Did the agent keep up? Its readings_in must reach what was published, soon.
    # Waited for past --keepup too: how far behind it was gives its processing rate.
    caught = wait_for(
        lambda: agent.counters().get("readings_in", 0) - in0 >= step.sent,
        max(keepup, 5.0 + step.sent / 5000.0),
        0.05,
    )
    if caught:
        step.drain_s = time.monotonic() - t_end
        step.processed_rate = step.sent / (pub["elapsed"] + step.drain_s)
    # Judged on the time measured: a /healthz answer that is slow under load counts too.
    step.kept_up = caught and step.drain_s <= keepup
    # Wait for the upstream sum: the last windows fire after idle_timeout of silence.
    limit = IDLE_TIMEOUT + 10.0 + (step.drain_s if caught else step.sent / 2000.0)
    last, last_change = -1, time.monotonic()
    while time.monotonic() - t_end < limit:
        got = consumer.stats()["count"] - c0["count"]
        if got != last:
            last, last_change = got, time.monotonic()
        if got >= step.sent:
            step.settle_s = time.monotonic() - t_end
            time.sleep(0.5)  # anything more would be a duplicate
            break
        if time.monotonic() - last_change > IDLE_TIMEOUT + 3.0 and caught:
            break
        time.sleep(0.05)
    c1 = consumer.stats()
    step.upstream = c1["count"] - c0["count"]
    step.cpu_per_1k = (cpu_seconds(agent.pid) - cpu0) / step.sent * 1000
    step.bytes_per_reading = (c1["bytes"] - c0["bytes"]) / max(1, step.upstream)
    step.rss = peak_rss(agent.pid)
    return step


def agent_drain(
    agent: AgentProcess, consumer: UpstreamConsumer, pool: PublisherPool, n: int
) -> tuple[float, int]:
    """Stop the agent, queue n readings for its session, start it again: (rate, lost).

    Messages flow as soon as the session resumes, before /readyz can be asked, so the
    time runs from exec and the start-up cost of the first, empty start is taken off.
    Counters start from 0 in a new process.
    """
    startup = agent.ready_after
    agent.stop()
    c0 = consumer.stats()["count"]
    pool.publish(n, None)
    agent.start(wait=False)
    done = wait_for(lambda: agent.counters().get("readings_in", 0) >= n, 120, 0.05)
    took = time.monotonic() - agent.started_at - startup
    rate = n / took if done and took > 0 else float("nan")
    # Upstream may trail readings_in by a lot after a burst: wait while it still moves.
    last, changed, t0 = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - t0 < 120:
        got = consumer.stats()["count"] - c0
        if got >= n:
            break
        if got != last:
            last, changed = got, time.monotonic()
        elif time.monotonic() - changed > IDLE_TIMEOUT + 8:
            break
        time.sleep(0.1)
    return rate, n - (consumer.stats()["count"] - c0)


def prelude(args: argparse.Namespace) -> str:
    """Experiments: code run in the agent's process before its main(), changing nothing on disk."""
    lines = []
    if args.receive_maximum:
        lines += [
            "import edge_agent.ingest.connection as conn",
            "import edge_agent.ingest_session as session",
            f"conn.RECEIVE_MAXIMUM = {args.receive_maximum}",
            f"session._ACK_FLUSH = max(1, {args.receive_maximum} // 4)",
        ]
    return "\n".join(lines)


def one_run(args: argparse.Namespace, k: int) -> RunResult:
    res = RunResult()
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    local = Broker(work / "local").start()
    upstream = Broker(work / "upstream").start()
    pool = PublisherPool(local.port, sensors=100, procs=args.publishers, kind=args.publisher)
    agent: AgentProcess | None = None
    consumer: UpstreamConsumer | None = None
    try:
        log(f"run {k}: bare subscriber")
        for mode in ("auto", "manual"):
            res.sub[f"live_{mode}"], res.sub[f"pub_{mode}"] = bare_live(
                local.port, pool, args.baseline_n, mode
            )
            res.sub[f"drain_{mode}"] = bare_drain(local.port, pool, args.baseline_n, mode)
        log("  " + ", ".join(f"{k}={v:,.0f}/s" for k, v in res.sub.items()))

        cfg = work / "agent.toml"
        cfg.write_text(
            AGENT_TOML.format(
                state=work / "state",
                local=local.port,
                upstream=upstream.port,
                health=free_port(),
                idle=IDLE_TIMEOUT,
            )
        )
        consumer = UpstreamConsumer(upstream.port)
        health = int(cfg.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
        agent = AgentProcess(
            cfg,
            health,
            work / "agent.log",
            profile_out=Path(args.profile) if args.profile else None,
            prelude=prelude(args),
        ).start()
        failures = 0
        for target in args.rates:
            st = run_step(agent, consumer, pool, target, args.duration, args.keepup)
            res.steps.append(st)
            log(
                f"  target {target:>6,}/s: sent {st.sent:,} at {st.rate:,.0f}/s, upstream {st.upstream:,}"
                f" (lost {st.lost}, dup {st.dups}), caught up in {st.drain_s:.2f}s,"
                f" settled {st.settle_s:.2f}s, {st.cpu_per_1k:.3f} cpu-s/1k, rss {st.rss / 2**20:.1f} MiB"
                f" -> {'ok' if st.ok else 'FAIL'}"
            )
            if agent.proc is not None and agent.proc.poll() is not None:
                log(f"  agent exited {agent.proc.returncode}; see {agent.log}")
                break
            failures = 0 if st.ok else failures + 1
            if failures >= args.stop_after:
                break
        res.peak_rss = peak_rss(agent.pid)
        if args.drain_n and not args.profile:
            res.agent_drain, res.agent_drain_lost = agent_drain(agent, consumer, pool, args.drain_n)
            res.drain_rss = peak_rss(agent.pid)
            log(
                f"  agent drains a backlog at {res.agent_drain:,.0f}/s (lost {res.agent_drain_lost})"
            )
        res.upstream_dup_batches = int(consumer.stats()["dup_batches"])
    finally:
        if agent is not None:
            rc = agent.stop()
            if rc not in (0, None):
                log(f"  agent exit code {rc}; log: {agent.log}")
        if consumer is not None:
            consumer.close()
        pool.close()
        local.stop()
        upstream.stop()
        if args.keep:
            log(f"  kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- report


def report(results: list[RunResult], args: argparse.Namespace, load0: tuple[float, ...]) -> int:
    def med(xs: list[float]) -> float:
        xs = [x for x in xs if x == x]
        return median(xs)

    print()
    print(
        "edge-agent end-to-end benchmark: 100 sensors, QoS 1 JSON readings, local -> agent -> upstream"
    )
    print(
        "brokers: mosquitto with max_queued_messages 1000000 (tests.helpers.brokers.Broker); a stock"
    )
    print(
        "mosquitto (1000) drops QoS 1 for an online subscriber >~1000 messages behind (docs/field-notes.md)."
    )
    if args.receive_maximum:
        print(f"EXPERIMENT: agent run with {prelude(args)!r}")
    print(f"code: {args.version}")
    print(
        f"runs: {len(results)}, step {args.duration:g} s, {args.publishers} {args.publisher} publisher process(es),"
        f" cpus {os.cpu_count()}"
    )
    print()
    print("bare paho subscriber (count only), msgs/s, median over runs:")
    for key, label in (
        ("live_auto", "live, QoS 1 auto-ack"),
        ("live_manual", "live, QoS 1 manual acks in batches"),
        ("drain_auto", "backlog drain, auto-ack"),
        ("drain_manual", "backlog drain, manual acks"),
    ):
        vals = [r.sub.get(key, float("nan")) for r in results]
        extra = ""
        if key.startswith("live"):
            pub = med([r.sub.get("pub_" + key[5:], float("nan")) for r in results])
            extra = f"   (publishers managed {pub:,.0f}/s{'; publisher-bound' if med(vals) > 0.95 * pub else ''})"
        print(f"  {label:<38} {med(vals):>9,.0f}  [{', '.join(f'{v:,.0f}' for v in vals)}]{extra}")
    print()
    print(
        "agent ramp (per run; ok = zero loss and readings_in caught up within "
        f"{args.keepup:g} s of the publishers stopping):"
    )
    print(
        f"  {'run':>3} {'target/s':>9} {'achieved/s':>10} {'published':>10} {'upstream':>10} {'lost':>6}"
        f" {'dup':>4} {'catch-up':>8} {'took-in/s':>9} {'settle':>7} {'cpu-s/1k':>9} {'B/reading':>9} {'peakRSS':>8}  ok"
    )
    for k, r in enumerate(results):
        for s in r.steps:
            print(
                f"  {k:>3} {s.target:>9,} {s.rate:>10,.0f} {s.sent:>10,} {s.upstream:>10,} {s.lost:>6}"
                f" {s.dups:>4} {s.drain_s:>7.2f}s {s.processed_rate:>9,.0f} {s.settle_s:>6.2f}s {s.cpu_per_1k:>9.3f}"
                f" {s.bytes_per_reading:>9.2f} {s.rss / 2**20:>6.1f}Mi  {'ok' if s.ok else 'FAIL'}"
            )
    print()
    best = [r.best for r in results]
    best_rate = med([b.rate if b else 0.0 for b in best])
    live = med([r.sub["live_auto"] for r in results])
    drain = med([r.sub["drain_auto"] for r in results])
    ratios = [
        (b.rate if b else 0.0) / r.sub["live_auto"] for b, r in zip(best, results, strict=True)
    ]
    ratio = med(ratios)
    cpu = med([b.cpu_per_1k for b in best if b])
    bpr = med([b.bytes_per_reading for b in best if b])
    rss = med([float(r.peak_rss) for r in results]) / 2**20
    adrain = med([r.agent_drain for r in results])
    took = med(
        [
            max(
                (s.processed_rate for s in r.steps if s.processed_rate == s.processed_rate),
                default=float("nan"),
            )
            for r in results
        ]
    )
    print("agent, median over runs:")
    print(
        f"  highest zero-loss rate          {best_rate:>10,.0f} readings/s  [{', '.join(f'{b.rate:,.0f}' if b else 'none' for b in best)}]"
    )
    print(
        f"  vs bare subscriber (live, auto) {ratio:>10.0%}  [{', '.join(f'{x:.0%}' for x in ratios)}]"
    )
    print(f"  CPU per 1,000 readings          {cpu:>10.3f} s (at that rate)")
    print(f"  peak RSS                        {rss:>10.1f} MiB")
    print(f"  upstream bytes per reading      {bpr:>10.2f}")
    print(
        f"  highest take-in rate (any step) {took:>10,.0f} readings/s = {took / live:.0%} of the bare live rate"
        " (published / (publishing + catch-up) time)"
    )
    if adrain == adrain:
        print(
            f"  backlog drain                   {adrain:>10,.0f} readings/s = {adrain / drain:.0%} of the bare"
            f" subscriber's drain; lost {[r.agent_drain_lost for r in results]};"
            f" peak RSS {med([float(r.drain_rss) for r in results]) / 2**20:.1f} MiB"
        )
    dupb = [r.upstream_dup_batches for r in results]
    if any(dupb):
        print(f"  duplicate batches upstream (same agent, seq): {dupb}")
    load1 = os.getloadavg()
    print(
        f"  load average before {load0[0]:.2f}, after {load1[0]:.2f} (1 min): shared machine, expect noise"
    )
    passed = ratio >= 0.5 and rss <= 60
    print()
    if args.quick:
        print(
            "(--quick: one short run with a coarse ramp, a smoke test of the bench; not the figure)"
        )
    print(
        f"SUMMARY: agent {best_rate:,.0f} readings/s zero-loss = {ratio:.0%} of bare paho subscriber"
        f" {live:,.0f}/s (target >= 50%), peak RSS {rss:.1f} MiB (target <= 60), {cpu:.3f} CPU-s/1k readings,"
        f" {bpr:.1f} upstream B/reading -> {'PASS' if passed else 'FAIL'}"
    )
    return 0 if passed else 1


def code_version() -> str:
    """The commit measured, and whether the work tree differs from it (shared tree)."""
    import subprocess

    from bench.common import REPO

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    dirty = git("status", "--porcelain", "--", "edge_agent")
    return git("rev-parse", "--short", "HEAD") + (
        " + uncommitted edge_agent changes" if dirty else ""
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--rates", default=DEFAULT_RATES, help="comma-separated target readings/s of the ramp"
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of publishing per step")
    ap.add_argument(
        "--keepup",
        type=float,
        default=1.0,
        help="a step fails when readings_in lags the publishers by longer than this (s)",
    )
    ap.add_argument(
        "--stop-after", type=int, default=2, help="consecutive failed steps that end the ramp"
    )
    ap.add_argument(
        "--baseline-n", type=int, default=100_000, help="messages per bare-subscriber measurement"
    )
    ap.add_argument(
        "--drain-n", type=int, default=100_000, help="backlog for the agent drain (0: skip)"
    )
    ap.add_argument("--publishers", type=int, default=1, help="publisher processes")
    ap.add_argument(
        "--publisher",
        choices=("raw", "paho"),
        default="raw",
        help="raw: QoS 1 packets built by hand on a socket (~6 us/msg); paho: ~35 us/msg",
    )
    ap.add_argument(
        "--profile", default="", help="run the agent under cProfile, writing this file (one run)"
    )
    ap.add_argument(
        "--receive-maximum",
        type=int,
        default=0,
        help="experiment: the agent's local Receive Maximum (its _ACK_FLUSH = a quarter)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, state)")
    ap.add_argument(
        "--quick", action="store_true", help="one short run: a smoke test of the bench itself"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.baseline_n, args.drain_n = 1, 2.0, 20_000, 20_000
        if args.rates == DEFAULT_RATES:
            args.rates = "5000,15000,30000"
    args.rates = [int(float(x)) for x in args.rates.split(",") if x.strip()]
    if args.profile:
        args.runs = 1
        if prelude(args):
            ap.error("--profile cannot be combined with --receive-maximum (cProfile has no -c)")
    load0 = os.getloadavg()
    args.version = code_version()
    results: list[Any] = [one_run(args, k) for k in range(args.runs)]
    return report(results, args, load0)


if __name__ == "__main__":
    sys.exit(main())

"""What "loses nothing" costs (issue 4).

    python bench/bench_durability.py [--runs 3] [--quick] [--rates 5000,10000,...]

Per run, on fresh mosquittos (local and upstream, max_queued_messages 1000000):

1. Zero-loss rate, checkpoints on (buffer.checkpoints = true, the default: readings
   acknowledged after the commit that holds their effect) against off (acknowledged
   on arrival). A ramp of target rates, --duration s each, 100 sensors of QoS 1 JSON
   readings; a step passes when the upstream sum of window counts (batches
   deduplicated on (agent, seq), newest rev per window) equals the readings published
   and readings_in caught up within --keepup s. Target: on >= 70 % of off.
2. Bytes written to disk per reading with a healthy uplink: write_bytes of
   /proc/<agent pid>/io over a steady step at --wear-rate, divided by the readings
   (both modes). SQLite's WAL writes and its checkpoints into the main file count.
3. Outbox spill and drain: the upstream broker stopped, --spill-n readings with 20 ms
   windows (so many small batches) spill into the outbox (batches/s and windows/s
   into SQLite); the broker started again, the backlog drains (batches/s and
   windows/s, from upstream reconnect to an empty outbox). The baseline is the
   upstream broker's own QoS 1 rate in the same run: one paho client publishing
   payloads of the batches' mean size with the agent's in-flight window (32), a
   consumer subscribed as during the drain. Target: drain >= 80 % of it.

Figures are medians over --runs; the machine is shared, compare ratios in a run.
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
    UpstreamConsumer,
    free_port,
    median,
    wait_for,
)

IDLE = 2.0
MAX_INFLIGHT = 64  # the uplink's window (edge_agent.uplink.sender.Uplink.max_inflight)

AGENT_TOML = """\
[agent]
id = "bench-durability"
state_dir = "{state}"
log_level = "warning"

[local]
port = {local}

[upstream]
port = {upstream}
max_batch_delay = "250ms"
max_batch_windows = {batch_windows}

[buffer]
checkpoints = {checkpoints}
checkpoint_interval = "{interval}"

[health]
listen = "127.0.0.1:{health}"

[[pipeline]]
name = "bench"
topics = ["sensors/#"]
window = "tumbling"
size = "{size}"
aggregates = ["count", "min", "max", "mean"]
max_out_of_orderness = "0s"
idle_timeout = "{idle}s"
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


@dataclass
class ModeResult:
    best: float = 0.0  # highest zero-loss achieved rate
    steps: list[str] = field(default_factory=list)
    wear: float = float("nan")  # disk bytes written per reading


@dataclass
class RunResult:
    modes: dict[str, ModeResult] = field(default_factory=dict)
    spill_batches: float = float("nan")
    spill_windows: float = float("nan")
    drain_batches: float = float("nan")
    drain_windows: float = float("nan")
    broker_qos1: float = float("nan")
    batch_bytes: float = float("nan")
    lost: int = 0


class Agent:
    """The agent with its config, fresh state dir, health port."""

    def __init__(
        self,
        work: Path,
        local: int,
        upstream: int,
        checkpoints: bool,
        size: str,
        batch_windows: int = 500,
        interval: str = "250ms",
    ) -> None:
        self.health = free_port()
        state = work / f"state-{checkpoints}-{size}"
        shutil.rmtree(state, ignore_errors=True)
        cfg = work / f"agent-{checkpoints}-{size}.toml"
        cfg.write_text(
            AGENT_TOML.format(
                state=state,
                local=local,
                upstream=upstream,
                health=self.health,
                checkpoints="true" if checkpoints else "false",
                size=size,
                idle=IDLE,
                batch_windows=batch_windows,
                interval=interval,
            )
        )
        self.proc = AgentProcess(cfg, self.health, work / "agent.log")

    def health_doc(self) -> dict[str, Any]:
        import json

        _, text = self.proc._get("/healthz")
        return json.loads(text) if text else {}


def step(
    agent: AgentProcess,
    consumer: UpstreamConsumer,
    pool: PublisherPool,
    rate: float | None,
    n: int,
    keepup: float,
) -> tuple[bool, float, int, int, int]:
    """(ok, achieved rate, sent, upstream, disk bytes written) for one step."""
    c0 = consumer.stats()["count"]
    in0 = agent.counters().get("readings_in", 0)
    w0 = write_bytes(agent.pid)
    pub = pool.publish(n, rate)
    t_end = time.monotonic()
    sent = int(pub["sent"])
    caught = wait_for(lambda: agent.counters().get("readings_in", 0) - in0 >= sent, keepup, 0.05)
    caught = caught and time.monotonic() - t_end <= keepup
    wait_for(lambda: consumer.stats()["count"] - c0 >= sent, IDLE + 10 + sent / 5000, 0.1)
    time.sleep(0.3)  # anything more would be a duplicate
    got = consumer.stats()["count"] - c0
    return caught and got == sent, pub["rate"], sent, got, write_bytes(agent.pid) - w0


def ramp(
    work: Path,
    local: Broker,
    upstream: Broker,
    pool: PublisherPool,
    checkpoints: bool,
    args: argparse.Namespace,
) -> ModeResult:
    res = ModeResult()
    agent = Agent(work, local.port, upstream.port, checkpoints, "1s")
    consumer = UpstreamConsumer(upstream.port)
    agent.proc.start()
    try:
        n = int(args.wear_rate * args.duration)
        _, _, sent, got, written = step(agent.proc, consumer, pool, args.wear_rate, n, args.keepup)
        res.wear = written / max(1, sent)
        log(
            f"    wear at {args.wear_rate:,.0f}/s: {written:,} B written for {sent:,} readings"
            f" = {res.wear:.1f} B/reading (upstream {got:,})"
        )
        fails = 0
        for target in args.rates:
            ok, rate, sent, got, _ = step(
                agent.proc, consumer, pool, target, int(target * args.duration), args.keepup
            )
            res.steps.append(
                f"{target:,}->{rate:,.0f}/s {'ok' if ok else f'FAIL ({got:,}/{sent:,})'}"
            )
            log(
                f"    target {target:>6,}/s: achieved {rate:,.0f}/s, upstream {got:,} of {sent:,}"
                f" -> {'ok' if ok else 'FAIL'}"
            )
            if ok:
                res.best = max(res.best, rate)
                fails = 0
            else:
                fails += 1
                if fails >= 2:
                    break
    finally:
        agent.proc.stop()
        consumer.close()
    return res


def broker_qos1_rate(port: int, size: int, n: int) -> float:
    """Messages/s one paho client gets PUBACKed at QoS 1 with MAX_INFLIGHT in flight."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-q1-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    c.max_inflight_messages_set(MAX_INFLIGHT)
    acked = [0]
    c.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    c.connect("127.0.0.1", port)
    while not c.is_connected():
        c.loop(0.05)
    payload = os.urandom(size)
    t0 = time.perf_counter()
    sent = 0
    while acked[0] < n:
        while sent < n and sent - acked[0] < MAX_INFLIGHT:
            c.publish("baseline/qos1", payload, qos=1)  # outside the consumer's edge/#
            sent += 1
        c.loop(0.01)
    rate = n / (time.perf_counter() - t0)
    c.disconnect()
    return rate


def spill_and_drain(
    work: Path,
    local: Broker,
    upstream: Broker,
    pool: PublisherPool,
    args: argparse.Namespace,
    res: RunResult,
) -> None:
    # 20 ms windows, 10 per batch: many small batches, as a long outage of a busy agent makes.
    agent = Agent(work, local.port, upstream.port, True, "20ms", batch_windows=10)
    consumer: UpstreamConsumer | None = None
    agent.proc.start()
    try:
        upstream.stop()
        wait_for(
            lambda: not agent.health_doc().get("upstream", {}).get("connected", True), 10, 0.05
        )
        h0 = agent.health_doc()
        t0 = time.monotonic()
        pool.publish(args.spill_n, args.spill_rate)
        # Spilled = what the outbox holds once the last windows fired and were committed.
        wait_for(lambda: agent.health_doc()["counters"]["readings_in"] >= args.spill_n, 30, 0.05)
        last = [-1]

        def settled() -> bool:
            b = agent.health_doc()["buffer"]["batches"]
            same, last[0] = b == last[0], b
            return same

        wait_for(settled, IDLE + 10, 0.5)
        t_spill = time.monotonic() - t0 - 0.5  # less the final settle poll
        h1 = agent.health_doc()
        batches = h1["buffer"]["batches"]
        windows = h1["counters"]["windows_emitted"] - h0["counters"]["windows_emitted"]
        res.spill_batches, res.spill_windows = batches / t_spill, windows / t_spill
        res.batch_bytes = h1["buffer"]["bytes"] / max(1, batches)
        log(f"    spilled {batches:,} batches ({windows:,} windows) in {t_spill:.2f}s")
        # Drained = PUBACKed by the broker (batches_sent), timed from the first PUBACK to
        # the last: the outbox forgets acknowledged batches only at the next checkpoint
        # (250 ms), which would dominate a backlog that drains in well under a second.
        # The count is read while upstream is still down, so none is missed.
        sent0 = agent.health_doc()["counters"]["batches_sent"]

        def sent() -> int:
            return int(agent.health_doc()["counters"]["batches_sent"]) - sent0

        # The consumer (a clean session) subscribes before the agent's backoff brings it back.
        upstream.start()
        consumer = UpstreamConsumer(upstream.port)
        c0 = consumer.stats()
        wait_for(lambda: sent() > 0, 60, 0.002)
        t0 = time.monotonic()
        wait_for(lambda: sent() >= batches, 120, 0.005)
        t_drain = max(1e-3, time.monotonic() - t0)
        res.drain_batches = (batches - 1) / t_drain  # first PUBACK to last
        res.drain_windows = windows / t_drain
        wait_for(lambda: consumer.stats()["count"] >= args.spill_n, IDLE + 10, 0.1)
        c1 = consumer.stats()
        res.lost = (
            args.spill_n - c1["count"]
        )  # not seen upstream (or seen before the consumer joined)
        payload = int((c1["bytes"] - c0["bytes"]) / max(1, c1["batches"] - c0["batches"]))
        log(
            f"    drained {batches:,} batches in {t_drain:.2f}s; upstream count {c1['count']:,} of"
            f" {args.spill_n:,}; mean payload {payload} B"
        )
        res.broker_qos1 = broker_qos1_rate(upstream.port, max(64, payload), max(2000, batches))
        log(
            f"    broker QoS 1 baseline ({payload} B payloads, {MAX_INFLIGHT} in flight): {res.broker_qos1:,.0f}/s"
        )
    finally:
        agent.proc.stop()
        if consumer is not None:
            consumer.close()


def one_run(args: argparse.Namespace, k: int) -> RunResult:
    res = RunResult()
    work = Path(tempfile.mkdtemp(prefix="bench-durability-"))
    local = Broker(work / "local").start()
    upstream = Broker(work / "upstream").start()
    pool = PublisherPool(local.port, sensors=100, procs=args.publishers)
    try:
        for checkpoints in () if args.drain_only else (True, False):
            name = "on" if checkpoints else "off"
            log(f"run {k}: checkpoints {name}")
            res.modes[name] = ramp(work, local, upstream, pool, checkpoints, args)
        log(f"run {k}: outbox spill and drain")
        spill_and_drain(work, local, upstream, pool, args, res)
    finally:
        pool.close()
        local.stop()
        upstream.stop()
        if args.keep:
            log(f"  kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res


def report(results: list[RunResult], args: argparse.Namespace) -> int:
    def med(xs: list[float]) -> float:
        return median([x for x in xs if x == x])

    def vals(xs: list[float], fmt: str = "{:,.0f}") -> str:
        return "[" + ", ".join(fmt.format(x) for x in xs) + "]"

    if args.drain_only:
        drain = [r.drain_batches for r in results]
        ratio = [r.drain_batches / r.broker_qos1 for r in results]
        print(
            f"\noutbox drain: {med(drain):,.0f} batches/s {vals(drain)}, "
            f"windows/s {med([r.drain_windows for r in results]):,.0f}; broker QoS 1 "
            f"{med([r.broker_qos1 for r in results]):,.0f} msgs/s; drain / broker {med(ratio):.0%} "
            f"{vals(ratio, '{:.0%}')}; spill {med([r.spill_batches for r in results]):,.0f} batches/s; "
            f"lost {[r.lost for r in results]}"
        )
        return 0
    on = [r.modes["on"].best for r in results]
    off = [r.modes["off"].best for r in results]
    ratio = [a / b if b else 0.0 for a, b in zip(on, off, strict=True)]
    wear_on = [r.modes["on"].wear for r in results]
    wear_off = [r.modes["off"].wear for r in results]
    drain_ratio = [r.drain_batches / r.broker_qos1 for r in results]
    print()
    print(
        f"edge-agent durability benchmark: {len(results)} run(s), {args.duration:g} s steps, cpus {os.cpu_count()}"
    )
    print(f"  zero-loss readings/s, checkpoints on   {med(on):>10,.0f}  {vals(on)}")
    print(f"  zero-loss readings/s, checkpoints off  {med(off):>10,.0f}  {vals(off)}")
    print(f"  on / off                               {med(ratio):>10.0%}  {vals(ratio, '{:.0%}')}")
    print(
        f"  disk bytes written per reading, on     {med(wear_on):>10.1f}  at {args.wear_rate:,.0f} readings/s"
        f" {vals(wear_on, '{:.1f}')}"
    )
    print(
        f"  disk bytes written per reading, off    {med(wear_off):>10.1f}  {vals(wear_off, '{:.1f}')}"
    )
    print(
        f"  outbox spill, batches/s                {med([r.spill_batches for r in results]):>10,.0f}"
        f"  windows/s {med([r.spill_windows for r in results]):,.0f}"
    )
    print(
        f"  outbox drain, batches/s                {med([r.drain_batches for r in results]):>10,.0f}"
        f"  windows/s {med([r.drain_windows for r in results]):,.0f}"
    )
    print(
        f"  upstream broker QoS 1, msgs/s          {med([r.broker_qos1 for r in results]):>10,.0f}"
        f"  (mean batch on disk {med([r.batch_bytes for r in results]):,.0f} B)"
    )
    print(
        f"  drain / broker                         {med(drain_ratio):>10.0%}  {vals(drain_ratio, '{:.0%}')}"
    )
    print(f"  readings lost in spill/drain           {[r.lost for r in results]}")
    print(f"  load average {os.getloadavg()[0]:.2f} (1 min): shared machine, expect noise")
    ok = med(ratio) >= 0.7 and med(drain_ratio) >= 0.8 and not any(r.lost for r in results)
    print()
    print(
        f"SUMMARY: checkpoints on {med(on):,.0f}/s = {med(ratio):.0%} of off {med(off):,.0f}/s (target >= 70%);"
        f" drain {med([r.drain_batches for r in results]):,.0f} batches/s = {med(drain_ratio):.0%} of the broker's"
        f" QoS 1 rate (target >= 80%); {med(wear_on):.1f} disk B/reading -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


def wear_sweep(args: argparse.Namespace) -> int:
    """Disk bytes written per reading for each checkpoint interval (healthy uplink)."""
    intervals = [x.strip() for x in args.wear_intervals.split(",") if x.strip()]
    table: dict[str, list[float]] = {i: [] for i in intervals}
    for k in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="bench-wear-"))
        local = Broker(work / "local").start()
        upstream = Broker(work / "upstream").start()
        pool = PublisherPool(local.port, sensors=100, procs=args.publishers)
        try:
            for interval in intervals:
                agent = Agent(work, local.port, upstream.port, True, "1s", interval=interval)
                consumer = UpstreamConsumer(upstream.port)
                agent.proc.start()
                try:
                    n = int(args.wear_rate * args.duration)
                    _, _, sent, got, written = step(
                        agent.proc, consumer, pool, args.wear_rate, n, args.keepup
                    )
                    table[interval].append(written / max(1, sent))
                    log(
                        f"run {k}: checkpoint_interval {interval}: {written:,} B for {sent:,} readings "
                        f"= {written / max(1, sent):.1f} B/reading (upstream {got:,})"
                    )
                finally:
                    agent.proc.stop()
                    consumer.close()
        finally:
            pool.close()
            local.stop()
            upstream.stop()
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\ndisk bytes written per reading at {args.wear_rate:,.0f} readings/s, checkpoints on "
        f"({args.runs} run(s), medians):"
    )
    for interval, xs in table.items():
        print(
            f"  checkpoint_interval {interval:>6}: {median(xs):7.1f} B/reading  {[round(x, 1) for x in xs]}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rates", default="5000,10000,15000,20000,25000,30000,35000,40000")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--keepup", type=float, default=1.0)
    ap.add_argument("--wear-rate", type=float, default=5000.0)
    ap.add_argument("--spill-n", type=int, default=100_000)
    ap.add_argument("--spill-rate", type=float, default=10_000.0)
    ap.add_argument("--publishers", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one short run: a smoke test of the bench")
    ap.add_argument("--drain-only", action="store_true", help="only the outbox spill and drain")
    ap.add_argument(
        "--wear-intervals",
        default="",
        help='only the SD-wear sweep over checkpoint intervals, e.g. "250ms,1s,5s"',
    )
    args = ap.parse_args(argv)
    if args.wear_intervals:
        return wear_sweep(args)
    args.rates = [int(float(x)) for x in args.rates.split(",") if x.strip()]
    if args.quick:
        args.runs, args.duration, args.spill_n = 1, 2.0, 30_000
        args.rates = args.rates[:3]
    results = [one_run(args, k) for k in range(args.runs)]
    return report(results, args)


if __name__ == "__main__":
    sys.exit(main())

"""Window engine alone, one core: readings/s per window kind and memory per open key.

    python bench/bench_windows.py [--keys 1000] [--seconds 300] [--runs 5]

Stream: every key reports once per event-time second, up to 0.5 s out of order
(max_out_of_orderness 2 s), 100 readings per `process` call as the runtime
batches them. Session keys report in bursts (10 readings 1 s apart, then 10 s
quiet, gap 5 s) so sessions open and close. Figures are medians of --runs runs.
Targets (SPEC notes): sliding <= 2x tumbling per reading; 10,000 keys with one
open window each in <= 50 MB.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc

import psutil

from edge_agent.config import PipelineConfig
from edge_agent.windows import Emitted, WindowEngine

AGGS = ("count", "min", "max", "mean")
BATCH = 100
T0 = 1_700_000_000.0


def stream(keys: int, seconds: int, bursty: bool = False) -> list[list[tuple[str, float, float]]]:
    rng = random.Random(42)
    names = [f"sensors/dev{i}/temp" for i in range(keys)]
    flat = []
    for t in range(seconds):
        if bursty and t % 20 >= 10:
            continue
        for name in names:
            flat.append((name, T0 + t - rng.random() * 0.5, 20.0 + rng.random()))
    return [flat[i : i + BATCH] for i in range(0, len(flat), BATCH)]


def run_once(
    cfg: PipelineConfig, batches: list[list[tuple[str, float, float]]]
) -> tuple[float, int]:
    engine = WindowEngine(cfg)
    out = Emitted()
    wall = 0.0
    emitted = 0
    gc.collect()
    t = time.process_time()  # CPU time: the VM is shared, wall time is noisy
    for batch in batches:
        out.clear()
        engine.process(batch, wall, out)
        emitted += len(out.windows)
    elapsed = time.process_time() - t
    return engine.readings_in / elapsed, emitted


def memory(keys: int, aggregates: tuple[str, ...]) -> tuple[float, float]:
    """MB held by an engine whose every key has one open window (tracemalloc, RSS delta)."""
    cfg = PipelineConfig(name="m", window="tumbling", size=60.0, aggregates=aggregates)
    readings = [(f"sensors/dev{i}/temp", T0 + 1.0, 20.0) for i in range(keys)]
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    tracemalloc.start()
    engine = WindowEngine(cfg)
    engine.process(readings, 0.0, Emitted())
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = psutil.Process().memory_info().rss - rss0
    assert engine.open_windows() == keys
    return traced / 2**20, rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    steady = stream(args.keys, args.seconds)
    bursty = stream(args.keys, args.seconds, bursty=True)
    common = {"name": "b", "max_out_of_orderness": 2.0, "aggregates": AGGS}
    cases = {
        "tumbling 10s": (PipelineConfig(window="tumbling", size=10.0, **common), steady),
        "tumbling 60s": (PipelineConfig(window="tumbling", size=60.0, **common), steady),
        "sliding 60s/10s": (
            PipelineConfig(window="sliding", size=60.0, slide=10.0, **common),
            steady,
        ),
        "session gap 5s": (PipelineConfig(window="session", gap=5.0, **common), bursty),
        "tumbling 60s +p50,p99": (
            PipelineConfig(
                window="tumbling", size=60.0, **{**common, "aggregates": (*AGGS, "p50", "p99")}
            ),
            steady,
        ),
    }
    print(f"{args.keys} keys, {args.seconds} s of event time, median of {args.runs} runs, one core")
    samples: dict[str, list[float]] = {label: [] for label in cases}
    emitted: dict[str, int] = {}
    for _ in range(args.runs):  # round robin, so background load hits every case alike
        for label, (cfg, batches) in cases.items():
            rate, emitted[label] = run_once(cfg, batches)
            samples[label].append(rate)
    rates = {label: statistics.median(r) for label, r in samples.items()}
    for label, rate in rates.items():
        print(
            f"  {label:24s} {rate:12,.0f} readings/s  {1e9 / rate:5.0f} ns/reading"
            f"  ({emitted[label]:,} windows)"
        )
    # Cost ratios per round (same background load within a round), then their median:
    # steadier than a ratio of medians on a shared machine. Target: same size <= 2x.
    for base in ("tumbling 60s", "tumbling 10s"):
        ratios = [b / s for b, s in zip(samples[base], samples["sliding 60s/10s"], strict=True)]
        print(
            f"  sliding 60s/10s vs {base}: {statistics.median(ratios):.2f}x cost per reading"
            f" (rounds {min(ratios):.2f}..{max(ratios):.2f})"
            + ("  [same size: target <= 2x]" if base == "tumbling 60s" else "  [same slide]")
        )
    for aggs in (AGGS, (*AGGS, "p50")):
        traced, rss = memory(10_000, aggs)
        print(
            f"  10,000 keys x 1 open window {'+'.join(aggs):28s} traced {traced:6.1f} MB, RSS +{rss:6.1f} MB"
        )


if __name__ == "__main__":
    main()

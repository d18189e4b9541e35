"""Decode rate of PayloadDecoder per payload shape, against plain json.loads / cbor2.loads.

    python bench/bench_decode.py [--messages N] [--runs 5]

Each figure is the median of --runs timed passes over N distinct, realistic payloads
(values and timestamps vary, as from real sensors). The baseline does only the parse
(`json.loads`, or `cbor2.loads` for CBOR) on the same payloads in the same run; the
decoder also validates, converts timestamps and builds the readings, so a ratio near
or above 1 means the checks cost nothing on top of a plain parse.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.ingest.decode import PayloadDecoder

ARRIVAL = 1_700_000_000.0
TOPIC = "sensors/dev1/temp"


def workloads(n: int) -> list[tuple[str, str, str | None, list[bytes], Callable[[bytes], object]]]:
    rng = random.Random(42)
    ts = [ARRIVAL - 60 + i * 0.001 for i in range(n)]
    vals = [round(rng.uniform(-20, 40), rng.randint(0, 3)) for _ in range(n)]
    multi = [
        {"ts": t, "id": "dev1", "temp": v, "hum": rng.randint(20, 90), "pres": 1013.25 + v}
        for t, v in zip(ts, vals, strict=True)
    ]
    return [
        ("bare number", "json", None, [json.dumps(v).encode() for v in vals], json.loads),
        (
            '{"ts","value"} JSON',
            "json",
            None,
            [json.dumps({"ts": t, "value": v}).encode() for t, v in zip(ts, vals, strict=True)],
            json.loads,
        ),
        (
            '{"ts","value"} JSON, auto',
            "auto",
            None,
            [json.dumps({"ts": t, "value": v}).encode() for t, v in zip(ts, vals, strict=True)],
            json.loads,
        ),
        (
            '{"ts" RFC 3339,"value"}',
            "json",
            None,
            [
                json.dumps(
                    {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z", "value": v}
                ).encode()
                for t, v in zip(ts, vals, strict=True)
            ],
            json.loads,
        ),
        ("multi-field JSON (3)", "json", None, [json.dumps(m).encode() for m in multi], json.loads),
        (
            '{"ts","value"} CBOR',
            "cbor",
            None,
            [cbor2.dumps({"ts": t, "value": v}) for t, v in zip(ts, vals, strict=True)],
            cbor2.loads,
        ),
        (
            '{"ts","value"} CBOR, auto+ct',
            "auto",
            "application/cbor",
            [cbor2.dumps({"ts": t, "value": v}) for t, v in zip(ts, vals, strict=True)],
            cbor2.loads,
        ),
        ("multi-field CBOR (3)", "cbor", None, [cbor2.dumps(m) for m in multi], cbor2.loads),
    ]


def rate(fn: Callable[[], None], n: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = args.messages

    print(f"{'payload':30} {'decoder msg/s':>14} {'baseline msg/s':>15} {'ratio':>6}")
    for name, fmt, ct, payloads, parse in workloads(n):
        decoder = PayloadDecoder(fmt, 300.0)
        decode = decoder.decode
        out: list[tuple[str, float, float]] = []
        rejects: Counter[str] = Counter()

        def run_decoder(decode=decode, payloads=payloads, out=out, rejects=rejects, ct=ct) -> None:
            out.clear()
            for p in payloads:
                decode(TOPIC, p, ct, ARRIVAL, out, rejects)

        def run_baseline(parse=parse, payloads=payloads) -> None:
            for p in payloads:
                parse(p)

        run_decoder()
        if rejects:
            raise SystemExit(f"{name}: unexpected rejects {dict(rejects)}")
        ours = rate(run_decoder, n, args.runs)
        base = rate(run_baseline, n, args.runs)
        print(f"{name:30} {ours:14,.0f} {base:15,.0f} {ours / base:6.2f}")


if __name__ == "__main__":
    main()

"""JSON parse cost of sensor readings: the stdlib path the decoder uses against orjson and msgspec.

    python bench/bench_json.py [--messages N] [--runs 5]

Each figure is the median of --runs passes over N distinct payloads of three
realistic shapes. "stdlib scanner" is what edge_agent/ingest/formats.py does (the C
scanner under json.loads, called directly); "json.loads" is the plain call. orjson
and msgspec are measured when installed (`pip install orjson msgspec`); the ratio
column is against the stdlib scanner measured in the same run. Only the parse is
timed: validation and reading construction are the same whichever parser runs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.ingest.decode import _parse_json  # the decoder's own parser


def payloads(n: int) -> dict[str, list[bytes]]:
    rng = random.Random(7)
    t0 = 1_700_000_000.0
    single = [
        json.dumps(
            {"ts": round(t0 + i * 0.001, 3), "value": round(rng.uniform(-20, 40), 2)}
        ).encode()
        for i in range(n)
    ]
    multi = [
        json.dumps(
            {
                "ts": round(t0 + i * 0.001, 3),
                "id": f"dev{i % 100}",
                "temp": round(rng.uniform(-20, 40), 2),
                "hum": rng.randint(20, 90),
                "pres": round(rng.uniform(990, 1030), 2),
            }
        ).encode()
        for i in range(n)
    ]
    bare = [b"%.2f" % rng.uniform(-20, 40) for _ in range(n)]
    return {"value object (~40 B)": single, "5 fields (~90 B)": multi, "bare number": bare}


def parsers() -> dict[str, Callable[[bytes], object]]:
    out: dict[str, Callable[[bytes], object]] = {
        "stdlib scanner": _parse_json,
        "json.loads": json.loads,
    }
    try:
        import orjson

        out["orjson"] = orjson.loads
    except ImportError:
        pass
    try:
        import msgspec

        out["msgspec"] = msgspec.json.Decoder().decode
    except ImportError:
        pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    ps = parsers()
    print(f"{'shape':<22} {'parser':<16} {'msgs/s':>12} {'us/msg':>8} {'vs stdlib':>9}")
    for shape, data in payloads(args.messages).items():
        base = None
        for name, parse in ps.items():
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                for p in data:
                    parse(p)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            rate = len(data) / med
            base = base or rate
            print(
                f"{shape:<22} {name:<16} {rate:>12,.0f} {1e6 * med / len(data):>8.2f} {rate / base:>8.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

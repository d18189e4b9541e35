"""Benchmark: frames/s from a pty through firmware-bridge into mosquitto, and CPU per 1,000 frames.

    python bench/bench_bridge.py [--frames 20000] [--runs 5] [--format json|kv|cobs_cbor]
    python bench/bench_bridge.py --publisher [--frames 50000] [--runs 5]

Each run starts a fresh `python -m firmware_bridge run` process reading a simulated
board's pty (blocking writes, so the board goes exactly as fast as the bridge reads)
and publishing at QoS 1 to a real mosquitto. Throughput is frames until the last
PUBACK (the bridge's own `published` figure, read over its health endpoint) over
wall time; CPU is the bridge process's user+system time over the same span. The
median of the runs is reported, with min and max.

`--publisher` times the publish path alone, in this process: firmware_bridge's
Publisher and edge_agent's MqttClient publishing readings at QoS 1 to mosquitto, in
reads of 20 as from a pty, until the last PUBACK; CPU of this process per message
(the broker's is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware_bridge.simulator import SimulatedBoard  # noqa: E402
from tests.helpers.brokers import Broker, free_port  # noqa: E402


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
        return json.loads(r.read())


def _wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def one_run(broker: Broker, work: Path, frames: int, fmt: str) -> tuple[float, float]:
    link = str(work / "ttyBENCH")
    hport = free_port()
    cfg = work / "bridge.toml"
    cfg.write_text(
        f'[source]\nkind = "pty"\npath = "{link}"\n'
        f'[frames]\nformat = "{"cobs_cbor" if fmt == "cobs_cbor" else "auto"}"\n'
        f'[clock]\nmode = "uptime_ms"\nfield = "uptime_ms"\n'
        f"[publish]\nport = {broker.port}\n"
        f'[health]\nlisten = "127.0.0.1:{hport}"\n[bridge]\nlog_level = "warning"\n'
    )
    with SimulatedBoard("bench", rate=0, format=fmt, blocking=True, link=link, seed=1) as board:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            [sys.executable, "-m", "firmware_bridge", "run", "-c", str(cfg)], env=env
        )
        try:
            _wait(
                lambda: (h := _health(hport))["source"]["open"] and h["broker"]["connected"],
                15,
                "bridge",
            )
            ps = psutil.Process(proc.pid)
            c0 = ps.cpu_times()
            t0 = time.perf_counter()
            board.start_thread(count=frames)
            _wait(lambda: _health(hport)["published"] >= frames, 120, "all frames published")
            t1 = time.perf_counter()
            c1 = ps.cpu_times()
            board.stop()
            h = _health(hport)
            if h["frames_in"] != frames or sum(h["dropped"].values()):
                raise SystemExit(f"frames lost or dropped: {h}")
        finally:
            proc.terminate()
            proc.wait(10)
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return frames / (t1 - t0), cpu / frames * 1000.0


async def publisher_run(port: int, messages: int) -> float:
    """CPU microseconds per message of the Publisher -> MqttClient path (see the doc)."""
    import asyncio

    from firmware_bridge.config import PublishSection
    from firmware_bridge.publish import JSON, Publisher

    pub = Publisher(PublishSection(port=port, max_inflight=1000))
    await pub.start()
    await asyncio.wait_for(pub.connected.wait(), 10)
    payload = b'{"id":"b1","t":1700000000.123,"temp":21.5,"hum":40}'
    c0 = time.process_time()
    for n in range(messages):
        pub.submit(f"sensors/b{n % 4}", payload, JSON)
        if n % 20 == 19:  # a read's worth of frames
            await asyncio.sleep(0)
            while pub.queued > 5000:
                await asyncio.sleep(0.001)
    while pub.published < messages:
        await asyncio.sleep(0.001)
    cpu = time.process_time() - c0
    await pub.close()
    return cpu / messages * 1e6


def publisher_main(frames: int, runs: int) -> None:
    import asyncio

    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        us = [asyncio.run(publisher_run(broker.port, frames)) for _ in range(runs)]
    for i, u in enumerate(us):
        print(f"run {i + 1}: {u:.2f} us CPU per message", file=sys.stderr)
    print(
        json.dumps(
            {
                "publisher_only": True,
                "messages": frames,
                "runs": runs,
                "cpu_us_per_message": {
                    "median": round(statistics.median(us), 2),
                    "min": round(min(us), 2),
                    "max": round(max(us), 2),
                },
            },
            indent=2,
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--format", choices=("json", "kv", "cobs_cbor"), default="json")
    ap.add_argument("--publisher", action="store_true", help="time the publish path alone")
    args = ap.parse_args()
    if args.publisher:
        publisher_main(args.frames, args.runs)
        return
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        rates, cpus = [], []
        for i in range(args.runs):
            rate, cpu = one_run(broker, Path(tmp), args.frames, args.format)
            rates.append(rate)
            cpus.append(cpu)
            print(
                f"run {i + 1}: {rate:,.0f} frames/s, {cpu * 1000:.1f} ms CPU per 1,000 frames",
                file=sys.stderr,
            )
    print(
        json.dumps(
            {
                "format": args.format,
                "frames": args.frames,
                "runs": args.runs,
                "frames_per_s": {
                    "median": round(statistics.median(rates)),
                    "min": round(min(rates)),
                    "max": round(max(rates)),
                },
                "cpu_ms_per_1000_frames": {
                    "median": round(statistics.median(cpus) * 1000, 2),
                    "min": round(min(cpus) * 1000, 2),
                    "max": round(max(cpus) * 1000, 2),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

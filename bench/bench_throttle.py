"""The adaptive uplink window on a congested link (issue 5), as a plot.

    python bench/bench_throttle.py [--rate 1000] [--limit 20KiB] [--before 10]
                                   [--throttled 20] [--after 25] [--png bench/out/throttle.png]

The agent's upstream goes through tests.helpers.tcp_proxy.TcpProxy on loopback. Publishers
send a steady `--rate` readings/s (QoS 1, single values) into a raw pipeline
(`window = "none"`, `max_batch_delay = "100ms"`), so the uplink needs a steady
~75 bytes per reading. After `--before` s the proxy is throttled to `--limit` bytes/s
(each direction) for `--throttled` s, then released; the run goes on for `--after` s.

Every ~100 ms it samples /healthz `uplink` {inflight, window, puback_latency_s}, the
outbox, and the upstream consumer's received bytes and batches. It writes a PNG
(received rate, PUBACK latency, window and in-flight over time; the throttled
interval shaded) to --png and a copy to bench/throttle.png for the README, and
prints the figures: rates before/while/after, the latency peak, the smallest
window, how long after the release the window was back at max_inflight and the
backlog drained, reconnects through the proxy and batches lost (must be 0).
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

from bench.common import (
    REPO,
    AgentProcess,
    Broker,
    PublisherPool,
    UpstreamConsumer,
    free_port,
)
from edge_agent.units import parse_size
from tests.helpers.tcp_proxy import TcpProxy

MAX_INFLIGHT = 32

AGENT_TOML = """\
[agent]
id = "bench-throttle"
state_dir = "{state}"
log_level = "info"

[local]
port = {local}

[upstream]
port = {upstream}
max_batch_delay = "100ms"
max_inflight = {max_inflight}

[health]
listen = "127.0.0.1:{health}"

[[pipeline]]
name = "raw"
topics = ["sensors/#"]
window = "none"
"""


def healthz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return dict(json.loads(r.read()))
    except OSError:
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    limit = float(parse_size(args.limit))
    total = args.before + args.throttled + args.after
    work = Path(tempfile.mkdtemp(prefix="bench-throttle-"))
    samples: list[dict[str, Any]] = []
    with (
        Broker(work / "local") as local,
        Broker(work / "upstream") as upstream,
        TcpProxy(upstream.port) as proxy,
    ):
        health = free_port()
        cfg = work / "agent.toml"
        cfg.write_text(
            AGENT_TOML.format(
                state=work / "state",
                local=local.port,
                upstream=proxy.port,
                health=health,
                max_inflight=MAX_INFLIGHT,
            )
        )
        consumer = UpstreamConsumer(upstream.port, "edge/#")
        pubs = PublisherPool(local.port, sensors=100, procs=1, inflight=1000)
        agent = AgentProcess(cfg, health, work / "agent.log").start()
        try:
            n = int(args.rate * total)
            load = threading.Thread(target=pubs.publish, args=(n, args.rate), daemon=True)
            t0 = time.monotonic()
            load.start()
            phase = "before"
            while time.monotonic() - t0 < total:
                t = time.monotonic() - t0
                if phase == "before" and t >= args.before:
                    proxy.set_rate(limit)
                    phase = "throttled"
                elif phase == "throttled" and t >= args.before + args.throttled:
                    proxy.set_rate(None)
                    phase = "after"
                h = healthz(health)
                st = consumer.stats()
                samples.append(
                    {
                        "t": time.monotonic() - t0,
                        "bytes": st["bytes"],
                        "batches": st["batches"],
                        "dups": st["dup_batches"],
                        "uplink": h["uplink"] if h else None,
                        "outbox": h["buffer"]["batches"] if h else None,
                        "oldest": h["buffer"]["oldest_age_s"] if h else None,
                        "sent": h["counters"]["batches_sent"] if h else None,
                    }
                )
                time.sleep(max(0.0, 0.1 - (time.monotonic() - t0 - t)))
            load.join(60)
            # Everything the agent built must arrive: nothing lost on the congested link.
            deadline = time.monotonic() + 60
            final: dict[str, Any] | None = None
            while time.monotonic() < deadline:
                final = healthz(health)
                if (
                    final
                    and final["buffer"]["batches"] == 0
                    and final["counters"]["readings_in"] >= n
                ):
                    break
                time.sleep(0.2)
            time.sleep(0.5)
            st = consumer.stats()
            return {
                "samples": samples,
                "limit": limit,
                "final": final,
                "consumer": st,
                "connections": proxy.connections,
                "published": n,
            }
        finally:
            agent.stop()
            pubs.close()
            consumer.close()
            shutil.rmtree(work, ignore_errors=True)


def rates(samples: list[dict[str, Any]], span: float = 0.5) -> list[tuple[float, float, float]]:
    """(t, bytes/s, batches/s) received upstream, over the last `span` s at each sample."""
    out = []
    j = 0
    for i, s in enumerate(samples):
        while samples[j]["t"] < s["t"] - span:
            j += 1
        if i == j:
            continue
        dt = s["t"] - samples[j]["t"]
        out.append(
            (
                s["t"],
                (s["bytes"] - samples[j]["bytes"]) / dt,
                (s["batches"] - samples[j]["batches"]) / dt,
            )
        )
    return out


def figures(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    s = res["samples"]
    t_on, t_off = args.before, args.before + args.throttled

    def mean_rate(a: float, b: float) -> float:
        inside = [x for x in s if a <= x["t"] <= b]
        if len(inside) < 2:
            return float("nan")
        return (inside[-1]["bytes"] - inside[0]["bytes"]) / (inside[-1]["t"] - inside[0]["t"])

    up = [(x["t"], x["uplink"]) for x in s if x["uplink"]]
    during = [u for t, u in up if t_on <= t <= t_off + 2]
    lat = [u["puback_latency_s"] for u in during if u["puback_latency_s"] is not None]
    back = next((t - t_off for t, u in up if t > t_off and u["window"] == MAX_INFLIGHT), None)
    drained = next(
        (
            x["t"] - t_off
            for x in s
            if x["t"] > t_off
            and x["oldest"] is not None
            and x["oldest"] < 1.0
            and (x["outbox"] or 0) < 20
        ),
        None,
    )
    c, final = res["consumer"], res["final"] or {}
    return {
        "rate_before_Bps": mean_rate(1.0, t_on),
        "rate_throttled_Bps": mean_rate(t_on + 2, t_off),
        "limit_Bps": res["limit"],
        "rate_after_Bps": mean_rate(t_off, t_off + 5),
        "latency_floor_s": min(
            (u["puback_latency_s"] for t, u in up if t < t_on and u["puback_latency_s"]),
            default=None,
        ),
        "latency_peak_s": max(lat, default=None),
        "window_min": min((u["window"] for u in during), default=None),
        "inflight_max": max((u["inflight"] for _, u in up), default=None),
        "window_back_after_s": back,
        "backlog_drained_after_s": drained,
        "reconnects": res["connections"] - 1,
        "batches_sent": final.get("counters", {}).get("batches_sent"),
        "batches_received": c["batches"],
        "duplicates_received": c["dup_batches"],
        "readings_in": final.get("counters", {}).get("readings_in"),
        "readings_received": c["readings"],
        "published": res["published"],
    }


def plot(res: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["samples"]
    t_on, t_off = args.before, args.before + args.throttled
    r = rates(s)
    up = [(x["t"], x["uplink"]) for x in s if x["uplink"]]
    fig, (a1, a2, a3) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    for ax in (a1, a2, a3):
        ax.axvspan(t_on, t_off, color="tab:red", alpha=0.08, lw=0)
        ax.grid(alpha=0.3)
    a1.plot(
        [t for t, _, _ in r],
        [b / 1024 for _, b, _ in r],
        color="tab:blue",
        label="received upstream",
    )
    a1.hlines(
        res["limit"] / 1024,
        t_on,
        t_off,
        colors="tab:red",
        linestyles="--",
        label=f"link limit {res['limit'] / 1024:g} KiB/s",
    )
    a1.set_ylabel("sending rate (KiB/s)")
    a1.legend(loc="upper right")
    a1.set_title(
        f"edge-agent uplink through a throttled link: {args.rate:g} readings/s, "
        f"link {res['limit'] / 1024:g} KiB/s from {t_on:g} s to {t_off:g} s"
    )
    lat = [(t, u["puback_latency_s"]) for t, u in up if u["puback_latency_s"] is not None]
    a2.plot([t for t, _ in lat], [v for _, v in lat], color="tab:orange")
    a2.set_yscale("log")
    a2.set_ylabel("PUBACK latency (s)")
    a3.step(
        [t for t, _ in up],
        [u["window"] for _, u in up],
        where="post",
        color="tab:green",
        label="window (adaptive limit)",
    )
    a3.plot(
        [t for t, _ in up],
        [u["inflight"] for _, u in up],
        color="tab:purple",
        alpha=0.7,
        label="batches in flight",
    )
    a3.set_ylabel("batches")
    a3.set_xlabel("time (s)")
    a3.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=float, default=1000.0, help="readings/s published")
    ap.add_argument("--limit", default="20KiB", help="link bandwidth while throttled (bytes/s)")
    ap.add_argument("--before", type=float, default=10.0)
    ap.add_argument("--throttled", type=float, default=20.0)
    ap.add_argument("--after", type=float, default=25.0)
    ap.add_argument("--png", type=Path, default=REPO / "bench" / "out" / "throttle.png")
    ap.add_argument(
        "--no-copy", action="store_true", help="do not copy the PNG to bench/throttle.png"
    )
    args = ap.parse_args()
    res = run(args)
    figs = figures(res, args)
    plot(res, args, args.png)
    if not args.no_copy:
        shutil.copyfile(args.png, REPO / "bench" / "throttle.png")
    width = max(map(len, figs))
    for k, v in figs.items():
        print(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()

"""Start-up cost: `edge-agent run` to ready, `--version`, `check`, and RSS after start.

    python bench/bench_startup.py [--runs 5] [--importtime]

- run -> ready: exec of `python -m edge_agent run -c cfg` to the sd_notify READY=1
  datagram on a NOTIFY_SOCKET we hold (what `start` and systemd wait for: connected
  and subscribed on the local broker), with a fresh state dir each run; RSS after
  start = the agent's VmRSS right after READY=1;
- `edge-agent --version` and `edge-agent check -c cfg`: exec to exit;
- baseline, same run: `python -c pass` (the interpreter's own start-up), exec to exit;
- the CPU time (user + system) the agent used until READY=1: what the wall time
  becomes on a loaded machine, where the agent gets a fraction of a core.

Each figure twice: *installed*, with the bytecode of every module cached (what
`pip install` leaves: it compiles .pyc files; here PYTHONPYCACHEPREFIX points to a
throwaway directory warmed by one run), and *no bytecode cache* (an editable install
run with PYTHONDONTWRITEBYTECODE=1, as on the development machines: the bench
deletes edge_agent's __pycache__ directories before each such run, so each start
compiles edge_agent's modules from source; the interpreter's and the dependencies'
bytecode stays cached).

Figures are medians of --runs. --importtime prints the 25 slowest cumulative
imports of the run path (`python -X importtime`), once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Broker, free_port, median, status_bytes

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "edge_agent"
CFG = """\
[agent]
id = "bench"
state_dir = "{state}"
log_level = "warning"

[local]
port = {local}
qos = 0

[upstream]
port = {upstream}

[health]
listen = "127.0.0.1:{health}"

[[pipeline]]
name = "bench"
topics = ["sensors/#"]
window = "tumbling"
size = "1s"
aggregates = ["count", "min", "max", "mean"]
"""


def timed_exit(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def run_to_ready(work: Path, local: int, up: int, env0: dict[str, str]) -> tuple[float, int, float]:
    """Seconds from exec to READY=1, RSS (bytes) and CPU seconds at READY=1."""
    state = Path(tempfile.mkdtemp(dir=work))
    cfg = state / "agent.toml"
    cfg.write_text(CFG.format(state=state / "s", local=local, upstream=up, health=free_port()))
    sock_path = str(state / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    env = dict(env0, NOTIFY_SOCKET=sock_path)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        took = time.perf_counter() - t0
        rss = status_bytes(proc.pid, "VmRSS")
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    finally:
        proc.terminate()
        proc.wait(30)
        sock.close()
    return took, rss, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--importtime", action="store_true")
    args = ap.parse_args()
    load0 = os.getloadavg()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        with Broker(work / "local") as local, Broker(work / "up") as up:
            check_cfg = work / "check.toml"
            check_cfg.write_text(
                CFG.format(state=work / "cs", local=local.port, upstream=up.port, health=1)
            )
            cached = dict(os.environ, PYTHONPYCACHEPREFIX=str(work / "pyc"))
            cached.pop("PYTHONDONTWRITEBYTECODE", None)
            uncached = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
            uncached.pop("PYTHONPYCACHEPREFIX", None)
            envs = {"installed": cached, "no bytecode cache": uncached}
            run_to_ready(work, local.port, up.port, cached)  # warms the bytecode cache
            keys = ("pass", "version", "check", "ready", "rss", "cpu")
            rows = {(e, k): [] for e in envs for k in keys}
            for _ in range(args.runs):  # interleaved: a load spike hits every figure alike
                for e, env in envs.items():
                    if env is uncached:
                        for d in PACKAGE.rglob("__pycache__"):
                            shutil.rmtree(d, ignore_errors=True)
                    rows[e, "pass"].append(timed_exit([py, "-c", "pass"], env))
                    rows[e, "version"].append(
                        timed_exit([py, "-m", "edge_agent", "--version"], env)
                    )
                    rows[e, "check"].append(
                        timed_exit([py, "-m", "edge_agent", "check", "-c", str(check_cfg)], env)
                    )
                    took, r, cpu = run_to_ready(work, local.port, up.port, env)
                    rows[e, "ready"].append(took)
                    rows[e, "rss"].append(r / 2**20)
                    rows[e, "cpu"].append(cpu)
            if args.importtime:
                out = subprocess.run(
                    [
                        py,
                        "-X",
                        "importtime",
                        "-c",
                        "import edge_agent.cli.daemon, edge_agent.runtime",
                    ],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                ).stderr.splitlines()
                parsed = []
                for line in out[1:]:
                    _, self_us, cum, name = (
                        s.strip() for s in line.replace(":", "|", 1).split("|")
                    )
                    parsed.append((int(cum), int(self_us), name))
                print("slowest cumulative imports (us, self us, module):")
                for cum, self_us, name in sorted(parsed, reverse=True)[:25]:
                    print(f"  {cum:>8} {self_us:>8}  {name}")
                print(f"  modules imported by the run path: {len(parsed)}")
    print(
        f"\nmedians of {args.runs} (load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}):\n"
        "| figure | bytecode | median | runs | over `python -c pass` |\n|---|---|---|---|---|"
    )
    for key, label in (
        ("pass", "`python -c pass` (baseline)"),
        ("version", "`edge-agent --version`"),
        ("check", "`edge-agent check`"),
        ("ready", "`edge-agent run` -> READY=1"),
    ):
        for e in envs:
            xs, base = rows[e, key], median(rows[e, "pass"])
            print(
                f"| {label} | {e} | {median(xs):.3f} s | {', '.join(f'{x:.3f}' for x in xs)} |"
                f" +{median(xs) - base:.3f} s |"
            )
    for e in envs:
        xs = rows[e, "cpu"]
        print(
            f"| CPU (user + system) of `run` until READY=1 | {e} | {median(xs):.2f} s |"
            f" {', '.join(f'{x:.2f}' for x in xs)} | |"
        )
    for e in envs:
        xs = rows[e, "rss"]
        print(
            f"| RSS right after READY=1 | {e} | {median(xs):.1f} MiB |"
            f" {', '.join(f'{x:.1f}' for x in xs)} | |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

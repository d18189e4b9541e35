"""Memory of a running agent: RSS after start and after 1,000 keys (run by
scripts/arm-inside.sh inside the emulated root; works on any Linux host too).

Prints one JSON object. Under qemu-user the kernel's RSS of the agent process
is the RSS of qemu: the guest's pages plus qemu's own (its translated-code
buffer, its heap, its binary). `rss` is that figure; `guest_rss` leaves out
qemu's own mappings (see guest_rss()), an estimate of what the agent uses on a
real ARM board. Natively both are the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_agent.cli.mosquitto import Broker, free_port

KEYS = 1000

CONFIG = """\
[agent]
id = "rss-probe"
state_dir = "{state}"
log_level = "warning"

[local]
port = {local}

[upstream]
port = {upstream}
max_batch_delay = "1s"

[health]
listen = "127.0.0.1:{health}"

[[pipeline]]
name = "rss"
topics = ["sensors/#"]
window = "tumbling"
size = "10m"
max_out_of_orderness = "1s"
idle_timeout = "10m"
aggregates = ["count", "min", "max", "mean", "p95"]
"""


def smaps(pid: int) -> list[tuple[str, str, int]]:
    """(header line, path, Rss bytes) per mapping."""
    out: list[tuple[str, str, int]] = []
    header = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if not first.endswith(":") or "-" in first:
                header = line.strip()
            elif first == "Rss:":
                parts = header.split(None, 5)
                path = parts[5] if len(parts) > 5 else ""
                out.append((header, path, int(line.split()[1]) * 1024))
    return out


def rss(pid: int) -> int:
    return sum(r for _, _, r in smaps(pid))


def guest_rss(pid: int) -> int:
    """RSS without qemu-user's own mappings when the process runs under qemu.

    qemu-*-static loads itself high (0x500000000000 in Debian's builds) and its
    own heap, malloc arenas, host stack and translated-code buffer lie above
    that; the guest's mappings (its binary, libraries, heap, stack, anonymous
    memory) lie below it, at guest_base + guest address. So: the Rss of every
    mapping below the lowest qemu mapping. An estimate (qemu's page-table
    shadows and the like are not in it), checked against an idle interpreter:
    7 MiB under qemu-aarch64 by this count, 8 MiB natively on x86_64.
    Natively nothing is left out.
    """
    maps = smaps(pid)
    qemu = [int(h.split("-", 1)[0], 16) for h, p, _ in maps if "qemu-" in p]
    if not qemu:
        return sum(r for _, _, r in maps)
    qemu_base = min(qemu)
    return sum(r for h, _, r in maps if int(h.split("-", 1)[0], 16) < qemu_base)


def healthz(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}")
    except OSError:
        return {}


def wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.25)
    return cond()


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="arm-rss-"))
    local, upstream = Broker(tmp / "local").start(), Broker(tmp / "upstream").start()
    health = free_port()
    cfg = tmp / "agent.toml"
    cfg.write_text(
        CONFIG.format(state=tmp / "state", local=local.port, upstream=upstream.port, health=health)
    )
    exe = [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)]
    with open(tmp / "agent.log", "wb") as log:
        agent = subprocess.Popen(exe, stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, object] = {"machine": os.uname().machine}
    try:
        t0 = time.monotonic()
        if not wait(lambda: agent.poll() is not None or bool(healthz(health)), 180):
            raise SystemExit("agent did not answer /healthz")
        if agent.poll() is not None:
            raise SystemExit(
                f"agent exited {agent.returncode}: {(tmp / 'agent.log').read_text()[-2000:]}"
            )
        result["start_seconds"] = round(time.monotonic() - t0, 1)
        time.sleep(5)
        result["rss_start"] = rss(agent.pid)
        result["guest_rss_start"] = guest_rss(agent.pid)

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rss-publisher")
        pub.connect("127.0.0.1", local.port)
        pub.loop_start()
        now = time.time()
        infos = [
            pub.publish(f"sensors/k{i:04d}", json.dumps({"ts": now, "temp": 20 + i % 7}), qos=1)
            for i in range(KEYS)
        ]
        for info in infos:
            info.wait_for_publish(60)
        pub.loop_stop()
        pub.disconnect()

        def counted() -> bool:
            return healthz(health).get("counters", {}).get("readings_in", 0) >= KEYS

        if not wait(counted, 180):
            raise SystemExit(f"agent did not take in {KEYS} readings: {healthz(health)}")
        time.sleep(5)
        result["rss_1000_keys"] = rss(agent.pid)
        result["guest_rss_1000_keys"] = guest_rss(agent.pid)
        result["counters"] = {
            k: v
            for k, v in healthz(health).get("counters", {}).items()
            if k in ("readings_in", "windows_open", "keys")
        }
    finally:
        agent.terminate()
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        local.stop()
        upstream.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

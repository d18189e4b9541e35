"""Shared helpers for benches: brokers, publisher and subscriber processes, process
CPU/RSS, the agent as a subprocess, medians.

Every load generator runs in its own process (spawned, not forked: paho starts
threads), so it does not share the GIL with what it measures. Processes talk to the
bench over a multiprocessing Pipe: a command in, a dict of figures out.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.brokers import Broker, free_port  # noqa: E402

__all__ = [
    "REPO",
    "AgentProcess",
    "Broker",
    "PublisherPool",
    "SubscriberProcess",
    "UpstreamConsumer",
    "cpu_seconds",
    "free_port",
    "median",
    "peak_rss",
    "wait_for",
]

_SPAWN = mp.get_context("spawn")


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (children not included)."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def status_bytes(pid: int, key: str) -> int:
    """A size field of /proc/PID/status in bytes (`VmRSS`, `VmHWM`, ...); 0 if absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss(pid: int) -> int:
    """Peak resident set size in bytes (VmHWM: the kernel's high-water mark)."""
    return status_bytes(pid, "VmHWM") or int(psutil.Process(pid).memory_info().rss)


def wait_for(cond: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def _paho_client(client_id: str, v5: bool) -> Any:
    import paho.mqtt.client as mqtt

    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )


# --------------------------------------------------------------------------- publishers


def _publisher_main(
    conn: Connection, port: int, index: int, sensors: list[int], inflight: int
) -> None:
    """One publisher: QoS 1 JSON readings `{"ts": now, "value": v}` on sensors/<i>.

    No loop thread: publish() writes to the socket at once when no thread owns the
    client, and loop(0) between chunks reads the PUBACKs. At most `inflight` messages
    are unacknowledged (paho's window = ours), so nothing piles up inside paho.
    """
    client = _paho_client(f"bench-pub-{os.getpid()}-{index}", v5=False)
    client.max_inflight_messages_set(inflight)
    acked = [0]

    def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        acked[0] += 1

    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=60)
    while not client.is_connected():
        client.loop(0.05)
    topics = [f"sensors/{i}" for i in sensors]
    nt = len(topics)
    conn.send({"ready": True})
    perf, now = time.perf_counter, time.time
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        n, rate = cmd["n"], cmd["rate"]  # rate None = as fast as possible
        t0 = perf()
        cpu0 = time.process_time()
        acked[0] = 0
        sent = 0
        t_start_wall = now()
        while sent < n:
            due = n if rate is None else min(n, int((perf() - t0) * rate) + 1)
            room = inflight - (sent - acked[0])
            k = min(due - sent, room, 64)
            if k <= 0:
                # Paced and ahead, or the window is full: wait for acks, not busily.
                client.loop(0.001 if room <= 0 else 0.0)
                if room > 0 and rate is not None:
                    time.sleep(min(0.002, max(0.0, (sent + 1) / rate - (perf() - t0))))
                continue
            for _ in range(k):
                v = 20.0 + (sent % 100) / 10
                client.publish(
                    topics[sent % nt], b'{"ts": %.6f, "value": %.1f}' % (now(), v), qos=1
                )
                sent += 1
            client.loop(0.0)
        t_pub = perf()
        deadline = t_pub + 30.0
        while acked[0] < sent and perf() < deadline:
            client.loop(0.01)
        conn.send(
            {
                "sent": sent,
                "acked": acked[0],
                "elapsed": t_pub - t0,
                "start_wall": t_start_wall,
                "cpu": time.process_time() - cpu0,
            }
        )
    client.disconnect()
    conn.close()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _raw_publisher_main(
    conn: Connection, port: int, index: int, sensors: list[int], inflight: int, qos: int = 1
) -> None:
    """Same job as _publisher_main, on a bare socket: MQTT 3.1.1 QoS 1 PUBLISH packets
    built by hand and written 64 at a time, PUBACKs counted (4 bytes each: nothing else
    arrives, keepalive is off). Several times cheaper per message than paho, so on a
    small machine the CPU goes to the broker and to what is being measured."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = f"bench-raw-{os.getpid()}-{index}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    sock.sendall(b"\x10" + _varint(len(body)) + body)
    connack = b""
    while len(connack) < 4:
        connack += sock.recv(4 - len(connack))
    if connack[3] != 0:
        raise RuntimeError(f"CONNACK refused: {connack!r}")
    sock.setblocking(False)
    heads = [(f"sensors/{i}".encode()) for i in sensors]
    heads = [len(t).to_bytes(2, "big") + t for t in heads]
    nt = len(heads)
    acked_bytes = 0
    conn.send({"ready": True})
    perf, now = time.perf_counter, time.time

    def read_acks(wait: float) -> int:
        nonlocal acked_bytes
        if wait:
            import select

            select.select([sock], [], [], wait)
        try:
            while True:
                got = sock.recv(65536)
                if not got:
                    raise RuntimeError("broker closed the connection")
                acked_bytes += len(got)
        except BlockingIOError:
            pass
        return acked_bytes // 4

    pid = 0
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        n, rate = cmd["n"], cmd["rate"]
        t0 = perf()
        cpu0 = time.process_time()
        base = read_acks(0)
        sent = 0
        qos0 = qos == 0
        t_start_wall = now()
        while sent < n:
            due = n if rate is None else min(n, int((perf() - t0) * rate) + 1)
            room = inflight if qos0 else inflight - (sent - (read_acks(0) - base))
            k = min(due - sent, room, 64)
            if k <= 0:
                if room <= 0:
                    read_acks(0.001)
                elif rate is not None:
                    time.sleep(min(0.002, max(0.0, (sent + 1) / rate - (perf() - t0))))
                continue
            parts = []
            ts = now()
            for _ in range(k):
                head = heads[sent % nt]
                payload = b'{"ts": %.6f, "value": %.1f}' % (ts, 20.0 + (sent % 100) / 10)
                if qos0:
                    rest = head + payload
                    parts.append(b"\x30" + _varint(len(rest)) + rest)
                else:
                    pid = pid % 65535 + 1
                    rest = head + pid.to_bytes(2, "big") + payload
                    parts.append(b"\x32" + _varint(len(rest)) + rest)
                sent += 1
            data = memoryview(b"".join(parts))
            while data:
                try:
                    data = data[sock.send(data) :]
                except BlockingIOError:
                    read_acks(0.001)
        t_pub = perf()
        deadline = t_pub + 30.0
        while not qos0 and read_acks(0.01) - base < sent and perf() < deadline:
            pass
        conn.send(
            {
                "sent": sent,
                "acked": sent if qos0 else read_acks(0) - base,
                "elapsed": t_pub - t0,
                "start_wall": t_start_wall,
                "cpu": time.process_time() - cpu0,
            }
        )
    sock.setblocking(True)
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    conn.close()


class PublisherPool:
    """`procs` publisher processes; sensor i belongs to publisher i % procs, so each
    sensor's readings reach the broker in order. kind "raw" (hand-built packets on a
    socket) or "paho"."""

    def __init__(
        self,
        port: int,
        sensors: int = 100,
        procs: int = 2,
        inflight: int = 1000,
        kind: str = "raw",
        qos: int = 1,
    ) -> None:
        target = _raw_publisher_main if kind == "raw" else _publisher_main
        extra = (qos,) if kind == "raw" else ()
        self.workers: list[tuple[Any, Connection]] = []
        for j in range(procs):
            parent, child = _SPAWN.Pipe()
            mine = [i for i in range(sensors) if i % procs == j]
            p = _SPAWN.Process(
                target=target, args=(child, port, j, mine, inflight, *extra), daemon=True
            )
            p.start()
            self.workers.append((p, parent))
        for _, c in self.workers:
            if not c.poll(30):
                raise RuntimeError("publisher did not connect")
            c.recv()

    def publish(self, n: int, rate: float | None) -> dict[str, float]:
        """Publish n readings in total at `rate`/s (None: flat out); returns when all are acked."""
        k = len(self.workers)
        shares = [n // k + (1 if j < n % k else 0) for j in range(k)]
        for (_, c), share in zip(self.workers, shares, strict=True):
            c.send({"n": share, "rate": None if rate is None else rate / k})
        res = [c.recv() for _, c in self.workers]
        elapsed = max(r["elapsed"] for r in res)
        sent = sum(r["sent"] for r in res)
        return {
            "sent": sent,
            "acked": sum(r["acked"] for r in res),
            "elapsed": elapsed,
            "rate": sent / elapsed if elapsed > 0 else float("nan"),
            "cpu": sum(r["cpu"] for r in res),
            "start_wall": min(r["start_wall"] for r in res),
        }

    def close(self) -> None:
        for p, c in self.workers:
            with _suppress():
                c.send(None)
            p.join(5)
            if p.is_alive():
                p.terminate()


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


# --------------------------------------------------------------------------- bare subscriber


def _subscriber_main(conn: Connection, port: int, topic: str, mode: str, client_id: str) -> None:
    """Counts messages and nothing else. mode "auto": QoS 1 with paho's automatic acks
    (MQTT 3.1.1); "manual": QoS 1, MQTT 5 with Receive Maximum 65535 and acks sent in
    batches of 256 (docs/field-notes.md: the broker's default window of 20 would stall it).
    With a client_id the session is persistent, so the broker queues for it while it
    is away (used to time draining a backlog); without one it is a clean session."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    manual = mode == "manual"
    persistent = bool(client_id)
    if persistent and not manual:
        client = _paho_client_v311_persistent(client_id)
    else:
        client = _paho_client(client_id or f"bench-sub-{os.getpid()}", v5=manual)
    if manual:
        client.manual_ack_set(True)
    state = {"n": 0, "first": 0.0, "last": 0.0}
    pending: list[int] = []
    perf = time.perf_counter

    def on_message(c: Any, u: Any, msg: Any) -> None:
        t = perf()
        if not state["n"]:
            state["first"] = t
        state["n"] += 1
        state["last"] = t
        if manual:
            pending.append(msg.mid)
            if len(pending) >= 256:
                for m in pending:
                    c.ack(m, 1)
                pending.clear()

    subscribed = [False]

    def on_subscribe(c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
        subscribed[0] = True

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    if manual:
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = 65535
        if persistent:
            props.SessionExpiryInterval = 3600
        client.connect(
            "127.0.0.1", port, keepalive=60, clean_start=not persistent, properties=props
        )
    else:
        client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    wait_for(client.is_connected, 10)
    client.subscribe(topic, qos=1)
    wait_for(lambda: subscribed[0], 10)
    conn.send({"ready": True})
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        if cmd == "flush" and manual:
            # From another thread: paho's out-queue is locked, acks are safe to send.
            left = list(pending)
            pending.clear()
            for m in left:
                client.ack(m, 1)
        conn.send(
            {
                "n": state["n"],
                "first": state["first"],
                "last": state["last"],
                "cpu": time.process_time(),
            }
        )
    client.loop_stop()
    client.disconnect()


def _paho_client_v311_persistent(client_id: str) -> Any:
    import paho.mqtt.client as mqtt

    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )


class SubscriberProcess:
    def __init__(
        self, port: int, topic: str = "sensors/#", mode: str = "auto", client_id: str = ""
    ) -> None:
        self.conn, child = _SPAWN.Pipe()
        self.proc = _SPAWN.Process(
            target=_subscriber_main, args=(child, port, topic, mode, client_id), daemon=True
        )
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError("subscriber did not subscribe")
        self.conn.recv()

    def stats(self, flush: bool = False) -> dict[str, float]:
        self.conn.send("flush" if flush else "stats")
        return self.conn.recv()  # type: ignore[no-any-return]

    def close(self) -> None:
        with _suppress():
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()


# --------------------------------------------------------------------------- upstream consumer


def _consumer_main(conn: Connection, port: int, topic: str) -> None:
    """Decodes CBOR batches; sums window counts (newest rev per window wins, batches
    deduplicated on (agent, seq)), payload bytes and readings of window="none"."""
    import cbor2

    client = _paho_client(f"bench-consumer-{os.getpid()}", v5=True)
    seen: set[tuple[str, int]] = set()
    windows: dict[tuple[str, str, float], tuple[int, int]] = {}
    st = {"batches": 0, "dup_batches": 0, "bytes": 0, "readings": 0, "revised": 0, "last": 0.0}

    def on_message(c: Any, u: Any, msg: Any) -> None:
        b = cbor2.loads(msg.payload)
        if b.get("schema") == "edge-agent/status/1":
            return  # the retained device status (SPEC 4), not a batch
        ident = (b.get("agent"), b.get("seq"))
        if ident in seen:
            st["dup_batches"] += 1
            return
        seen.add(ident)
        st["batches"] += 1
        st["bytes"] += len(msg.payload)
        st["last"] = time.monotonic()
        for w in b.get("windows", ()):
            k = (w["pipeline"], w["key"], w["start"])
            old = windows.get(k)
            if old is not None:
                st["revised"] += 1
                if old[0] >= w["rev"]:
                    continue
            windows[k] = (w["rev"], int(w["count"]))
        st["readings"] += len(b.get("readings", ()))

    subscribed = [False]
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.__setitem__(0, True)
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    wait_for(client.is_connected, 10)
    client.subscribe(topic, qos=1)
    wait_for(lambda: subscribed[0], 10)
    conn.send({"ready": True})
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        total = sum(c for _, c in list(windows.values())) + st["readings"]
        conn.send(
            {**st, "count": total, "windows": len(windows), "age": time.monotonic() - st["last"]}
        )
    client.loop_stop()
    client.disconnect()


class UpstreamConsumer:
    def __init__(self, port: int, topic: str = "edge/#") -> None:
        self.conn, child = _SPAWN.Pipe()
        self.proc = _SPAWN.Process(target=_consumer_main, args=(child, port, topic), daemon=True)
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError("consumer did not subscribe")
        self.conn.recv()

    def stats(self) -> dict[str, Any]:
        self.conn.send("stats")
        return self.conn.recv()  # type: ignore[no-any-return]

    def close(self) -> None:
        with _suppress():
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()


# --------------------------------------------------------------------------- the agent


@dataclass
class AgentProcess:
    """`python -m edge_agent run -c cfg` (optionally under cProfile), with its health port."""

    cfg: Path
    health_port: int
    log: Path
    profile_out: Path | None = None
    prelude: str = ""  # Python run in the agent's process before main(): bench experiments
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_after: float = 0.0  # exec -> /readyz 200, with nothing queued: the start-up cost

    def start(self, timeout: float = 30.0, wait: bool = True) -> AgentProcess:
        """Start it; with `wait`, return once /readyz answers 200 (`ready_after` s after exec)."""
        cmd = [sys.executable]
        if self.profile_out is not None:
            cmd += ["-m", "cProfile", "-o", str(self.profile_out)]
        if self.prelude:
            cmd += [
                "-c",
                f"{self.prelude}\nimport sys\nfrom edge_agent.cli.main import main\n"
                f"sys.exit(main(['run', '-c', {str(self.cfg)!r}]))",
            ]
        else:
            cmd += ["-m", "edge_agent", "run", "-c", str(self.cfg)]
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._logf, stderr=subprocess.STDOUT)
        if not wait:
            return self
        if not wait_for(lambda: self.proc.poll() is not None or self.ready(), timeout, 0.05):
            raise RuntimeError(f"agent not ready within {timeout}s; log: {self.log}")
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"agent exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            )
        self.ready_after = time.monotonic() - self.started_at
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}{path}", timeout=2
            ) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def health(self) -> dict[str, Any]:
        """The /healthz document; {} if unreachable."""
        code, text = self._get("/healthz")
        if code not in (200, 503) or not text:
            return {}
        return dict(json.loads(text))

    def counters(self) -> dict[str, float]:
        """The /healthz counters (readings_in, windows_emitted, batches_sent, ...); {} if unreachable."""
        return dict(self.health().get("counters", {}))

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode

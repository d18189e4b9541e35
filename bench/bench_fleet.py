"""The fleet side: consumer throughput, device status latency, bytes upstream with deflate.

    python bench/bench_fleet.py                 # everything, medians of 3
    python bench/bench_fleet.py --only consume  # consume | status | bytes

consume: N batches of 500 window records wait at a real mosquitto for the
    consumer's persistent session (published while it was stopped); then one
    `edge-agent consume` process (or two on a shared subscription) drains them into
    SQLite or a throwaway PostgreSQL. Rate = records / (last stored - first stored),
    read from the database itself. Baseline in the same run: the same records put
    into the same kind of database by a bare loop with no MQTT (the storage alone).
status: an agent process connects to an upstream broker a subscriber already watches;
    latency = status receipt - the agent's "upstream connected" log line. Then kill -9
    with upstream.keepalive = K: time until the will's "offline" arrives, as a
    multiple of K.
bytes: 100 sensors, 10 s tumbling windows (count, min, max, mean), readings with
    event times spanning 60 windows, through a real agent; payload bytes upstream per
    reading and per window record, compression "none" vs "deflate".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
from common import REPO, Broker, cpu_seconds, free_port, median, wait_for  # type: ignore[import-not-found]
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(REPO))
from edge_agent.consume.decode import decode_message
from edge_agent.consume.storage import open_storage
from tests.helpers.postgres import Postgres

RECORDS_PER_BATCH = 500


def _batches(n: int, agents: int = 4) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        agent = f"bench-{i % agents}"
        seq = i // agents
        ws = [
            {
                "pipeline": "climate",
                "key": f"sensors/{j % 100}/t{j // 100}",
                "start": 1.7e9 + seq * 10.0,
                "end": 1.7e9 + seq * 10.0 + 10.0,
                "rev": 0,
                "count": 10,
                "min": 20.5 + j / 1000,
                "max": 22.25,
                "mean": 21.375,
            }
            for j in range(RECORDS_PER_BATCH)
        ]
        doc = {
            "schema": "edge-agent/batch/1",
            "agent": agent,
            "seq": seq,
            "sent": time.time(),
            "config": "0123456789ab",
            "windows": ws,
        }
        out.append((f"edge/{agent}/batches", cbor2.dumps(doc)))
    return out


def _publish(port: int, msgs: list[tuple[str, bytes]]) -> None:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(200)
    c.connect("127.0.0.1", port)
    c.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/cbor"
    infos = [c.publish(t, p, qos=1, properties=props) for t, p in msgs]
    for i in infos:
        i.wait_for_publish(60)
    c.loop_stop()
    c.disconnect()


def _consumer(
    port: int, db: str, client_id: str, share: str, log: Path, src: Path = REPO
) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "edge_agent",
        "consume",
        "--broker",
        f"127.0.0.1:{port}",
        "--db",
        db,
        "--client-id",
        client_id,
        "--log-level",
        "info",
    ]
    if share:
        args += ["--share", share]
    with open(log, "ab") as err:
        # `python -m` imports edge_agent from the working directory first: `src` may be
        # another checkout (--before), measured in the same run.
        return subprocess.Popen(args, cwd=src, stdout=subprocess.DEVNULL, stderr=err)


_PG_POLL = """
SELECT (SELECT count(*) FROM batches),
       count(*) FILTER (WHERE wait_event_type = 'Lock'),
       count(*) FILTER (WHERE state = 'active'),
       string_agg(wait_event, ' ') FILTER (WHERE wait_event_type = 'Lock')
FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


class _Progress:
    """Batches stored so far, read over one connection kept open (the `batches` table is
    small: polling it costs the database almost nothing, unlike counting `windows`)."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.loop = asyncio.new_event_loop()
        self.pg: Any = None
        self.lite: Any = None
        self.backend_pid = 0
        if db.startswith("postgresql"):
            import asyncpg

            self.pg = self.loop.run_until_complete(asyncpg.connect(db))
            self.backend_pid = int(
                self.loop.run_until_complete(self.pg.fetchval("SELECT pg_backend_pid()"))
            )
        else:
            import sqlite3

            from edge_agent.consume.storage import sqlite_path

            self.lite = sqlite3.connect(sqlite_path(db) or db, timeout=5, isolation_level=None)

        # PostgreSQL: what the consumers' server processes are doing at each poll, to
        # see whether anything serialises them (a lock wait) or they just run.
        self.samples = self.lock_waits = self.active = 0
        self.waited_on: dict[str, int] = {}  # lock type (pg_stat_activity.wait_event) -> polls

    def batches(self) -> int:
        if self.pg is not None:
            row = self.loop.run_until_complete(self.pg.fetchrow(_PG_POLL))
            self.samples += 1
            self.lock_waits += int(row[1])
            self.active += int(row[2])
            for what in (row[3] or "").split():
                self.waited_on[what] = self.waited_on.get(what, 0) + 1
            return int(row[0])
        return int(self.lite.execute("SELECT count(*) FROM batches").fetchone()[0])

    def close(self) -> None:
        if self.pg is not None:
            self.loop.run_until_complete(self.pg.close())
        if self.lite is not None:
            self.lite.close()
        self.loop.close()


def _pg_cpu(pg: Postgres | None, skip: int) -> dict[int, float]:
    """CPU seconds of every process of the PostgreSQL server (postmaster and children),
    but the bench's own polling backend `skip`."""
    if pg is None:
        return {}
    import psutil

    pm = int((pg.data / "postmaster.pid").read_text().split()[0])
    out = {}
    root = psutil.Process(pm)
    for p in [root, *root.children()]:
        if p.pid != skip:
            with contextlib.suppress(psutil.Error):
                out[p.pid] = cpu_seconds(p.pid)
    return out


def _fresh_db(kind: str, tmp: Path, pg: Postgres | None, tag: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp}/{tag}.db"
    assert pg is not None
    name = f"b_{tag}"

    async def create() -> None:
        import asyncpg

        c = await asyncpg.connect(pg.url)
        await c.execute(f"DROP DATABASE IF EXISTS {name}")
        await c.execute(f"CREATE DATABASE {name}")
        await c.close()

    asyncio.run(create())
    return pg.url.rsplit("/", 1)[0] + "/" + name


def consume_run(
    kind: str,
    consumers: int,
    n_batches: int,
    tmp: Path,
    pg: Postgres | None,
    tag: str,
    src: Path = REPO,
) -> dict[str, Any]:
    """`consumers` consumers draining a backlog already queued at the broker.

    Returns records/s (wall, from the first consumer's connect to the last batch in
    the database), each consumer's own CPU time per record (its process, user +
    system, over the same interval), the database server's and the broker's, and
    the 1-minute load average at the end.
    """
    db = _fresh_db(kind, tmp, pg, tag)
    msgs = _batches(n_batches)
    total = n_batches * RECORDS_PER_BATCH
    with Broker(tmp / f"broker-{tag}") as broker:
        assert broker.proc is not None
        share = "bench" if consumers > 1 else ""
        ids = [f"bench-{tag}-{i}" for i in range(consumers)]
        logs = [tmp / f"consume-{tag}-{i}.log" for i in range(consumers)]
        # Make the sessions (and the tables), then stop: the backlog queues for them.
        procs = [
            _consumer(broker.port, db, cid, share, lg, src)
            for cid, lg in zip(ids, logs, strict=True)
        ]
        if not wait_for(lambda: all(_log_times(lg, "subscribed to") for lg in logs), 60, 0.1):
            raise RuntimeError(f"consumers did not subscribe; see {logs}")
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        _publish(broker.port, msgs)
        for lg in logs:
            lg.write_text("")
        progress = _Progress(db)
        procs = [
            _consumer(broker.port, db, cid, share, lg, src)
            for cid, lg in zip(ids, logs, strict=True)
        ]
        try:
            # Each consumer's CPU from the moment it starts connecting (start-up and
            # imports are not throughput), sampled as soon as its log says so.
            cpu0: dict[int, float] = {}
            deadline = time.monotonic() + 60
            while len(cpu0) < consumers and time.monotonic() < deadline:
                for i, (p, lg) in enumerate(zip(procs, logs, strict=True)):
                    if i not in cpu0 and _log_times(lg, "connecting to"):
                        cpu0[i] = cpu_seconds(p.pid)
                time.sleep(0.002)
            pg0 = _pg_cpu(pg, progress.backend_pid)
            broker0 = cpu_seconds(broker.proc.pid)
            last = 0.0
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if progress.batches() >= n_batches:
                    last = time.time()
                    break
                time.sleep(0.01)
            if not last:
                raise RuntimeError(f"only {progress.batches()} of {n_batches} batches; see {logs}")
            cpu = [cpu_seconds(p.pid) - cpu0[i] for i, p in enumerate(procs)]
            pg1 = _pg_cpu(pg, progress.backend_pid)
            broker_cpu = cpu_seconds(broker.proc.pid) - broker0
            load = os.getloadavg()[0]
            first = min(min(_log_times(lg, "connecting to")) for lg in logs)
            waits = (progress.lock_waits, progress.active, progress.samples, progress.waited_on)
        finally:
            progress.close()
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
    pg_cpu = sum(v - pg0.get(k, 0.0) for k, v in pg1.items())
    # Each consumer's own share, from the totals it logs at exit.
    stored = [_stored_records(lg) for lg in logs]
    return {
        "rate": total / (last - first),
        # each consumer's CPU per record it stored itself
        "cpu_us": [c / max(n, 1) * 1e6 for c, n in zip(cpu, stored, strict=True)],
        "share": [n / total for n in stored],
        "consumers_us": sum(cpu) / total * 1e6,
        "db_us": pg_cpu / total * 1e6,
        "broker_us": broker_cpu / total * 1e6,
        "load": load,
        # PostgreSQL, over the polls: backends waiting on a lock, backends running
        "waits": waits,
    }


def _stored_records(log: Path) -> int:
    """Window records a consumer stored, from its last totals line."""
    import re

    found = re.findall(
        r"stored \d+ batches \(\d+ duplicates skipped\), (\d+) window records", log.read_text()
    )
    return int(found[-1]) if found else 0


def storage_only(kind: str, n_batches: int, tmp: Path, pg: Postgres | None, tag: str) -> float:
    """Baseline: the same records decoded and written in 20-batch groups, no MQTT, one process."""
    db = _fresh_db(kind, tmp, pg, tag)
    items = [decode_message(p) for _, p in _batches(n_batches)]

    async def run() -> float:
        s = open_storage(db)
        await s.open()
        t = time.perf_counter()
        for i in range(0, len(items), 20):
            await s.write(items[i : i + 20])
        d = time.perf_counter() - t
        await s.close()
        return len(items) * RECORDS_PER_BATCH / d

    return asyncio.run(run())


# ----------------------------------------------------------------------------- status


def _agent_cfg(tmp: Path, local: int, upstream: int, **up: str) -> Path:
    state = tmp / "state"
    shutil.rmtree(state, ignore_errors=True)
    extra = "".join(f'{k} = "{v}"\n' for k, v in up.items())
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f'[agent]\nid = "bench-status"\nstate_dir = "{state}"\n'
        f"[local]\nport = {local}\n"
        f"[upstream]\nport = {upstream}\n{extra}"
        f'[health]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[[pipeline]]\nname = "p"\ntopics = ["s/#"]\n'
    )
    return cfg


class _Link:
    """A loopback TCP forwarder whose link can go silent (`cut`): nothing more is
    forwarded and no side is closed, as when a device loses power or its modem dies."""

    def __init__(self, target: int) -> None:
        import socket
        import threading

        self.target = target
        self.cut = threading.Event()
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.held: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                a, _ = self.srv.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.held += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        while not self.cut.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data or self.cut.is_set():
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        if not self.cut.is_set():
            import socket

            for s in (src, dst):  # shutdown, not just close: it wakes the other pump's recv
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self.srv.close()
        for s in self.held:
            with contextlib.suppress(OSError):
                s.close()


class _StatusWatch:
    def __init__(self, port: int) -> None:
        self.got: list[tuple[float, dict[str, Any], bool]] = []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self.got.append(
            (time.time(), cbor2.loads(m.payload), m.retain)
        )
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("edge/+/status", qos=1)
        self.c.loop_start()
        time.sleep(0.3)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _log_times(log: Path, marker: str) -> list[float]:
    """Wall-clock times of log lines (edge-agent's text format) that contain `marker`."""
    import calendar

    out = []
    for line in log.read_text(errors="replace").splitlines():
        if marker in line:
            stamp = line.split()[0].rstrip("Z")
            whole, _, frac = stamp.partition(".")
            out.append(
                calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
                + float("0." + (frac or "0"))
            )
    return out


def _connected_at(log: Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        if "upstream connected" in line:
            stamp = line.split()[0].rstrip("Z")
            t = time.strptime(stamp.split(".")[0], "%Y-%m-%dT%H:%M:%S")
            frac = float("0." + stamp.split(".")[1]) if "." in stamp else 0.0
            import calendar

            return calendar.timegm(t) + frac
    return None


def status_run(tmp: Path, keepalive: int, link_cut: bool) -> tuple[float, float]:
    """(seconds from upstream connect to status receipt, offline delay after kill -9 / keepalive).

    With `link_cut` the agent reaches the broker through a TCP proxy that stops
    forwarding before the kill -9, as a power cut or a dead cellular link would: the
    broker hears nothing more and only the keep-alive tells it the device is gone.
    Without it the kernel closes the dead process's socket and the broker knows at once.
    """
    with Broker(tmp / "local") as local, Broker(tmp / "up", persistence=False) as up:
        proxy = _Link(up.port)
        watch = _StatusWatch(up.port)
        cfg = _agent_cfg(tmp, local.port, proxy.port, keepalive=f"{keepalive}s")
        log = tmp / "agent.log"
        log.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        p = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),  # noqa: SIM115
            env=env,
        )
        try:
            if not wait_for(lambda: any(d["state"] == "online" for _, d, _ in watch.got), 30):
                raise RuntimeError(f"no online status; see {log}")
            t_online = next(t for t, d, _ in watch.got if d["state"] == "online")
            wait_for(lambda: _connected_at(log) is not None, 5)
            conn = _connected_at(log)
            assert conn is not None
            latency = t_online - conn
            if link_cut:
                proxy.cut.set()  # the link goes silent: nothing more reaches the broker
            p.send_signal(signal.SIGKILL)
            t_kill = time.time()
            p.wait()
            if not wait_for(
                lambda: watch.got[-1][1]["state"] == "offline", keepalive * 3 + 5, 0.01
            ):
                raise RuntimeError("no offline status after kill -9")
            offline = (watch.got[-1][0] - t_kill) / keepalive
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            watch.close()
            proxy.close()
    return latency, offline


# ----------------------------------------------------------------------------- bytes


def bytes_run(
    tmp: Path, compression: str, sensors: int = 100, windows: int = 60, per_window: int = 10
) -> dict[str, float]:
    with Broker(tmp / "local") as local, Broker(tmp / "up") as up:
        got: list[bytes] = []
        sub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        sub.on_message = lambda _c, _u, m: got.append(m.payload)
        sub.connect("127.0.0.1", up.port)
        sub.subscribe("edge/+/batches", qos=1)
        sub.loop_start()
        cfg = _agent_cfg(tmp, local.port, up.port, compression=compression, status_topic="")
        text = cfg.read_text().replace(
            'topics = ["s/#"]\n',
            'topics = ["s/#"]\nsize = "10s"\nmax_out_of_orderness = "0s"\nidle_timeout = "2s"\n',
        )
        cfg.write_text(text)
        log = tmp / f"agent-{compression}.log"
        p = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),  # noqa: SIM115
        )
        try:
            time.sleep(1.5)
            pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
            pub.max_inflight_messages_set(1000)
            pub.connect("127.0.0.1", local.port)
            pub.loop_start()
            t0 = (int(time.time()) // 10 - windows - 2) * 10.0
            import random

            rng = random.Random(7)
            infos = []
            n = 0
            for w in range(windows):
                for k in range(per_window):
                    ts = t0 + w * 10 + k * (10 / per_window)
                    for s in range(sensors):
                        v = round(21.0 + s / 10 + rng.gauss(0, 0.5), 2)  # a sensor's noise
                        infos.append(
                            pub.publish(f"s/dev{s}/temp", json.dumps({"ts": ts, "value": v}), qos=1)
                        )
                        n += 1
            # One reading per sensor a window later moves every watermark past the last
            # window (no waiting on idle_timeout); that window stays open, uncounted.
            for s in range(sensors):
                infos.append(
                    pub.publish(
                        f"s/dev{s}/temp",
                        json.dumps({"ts": t0 + windows * 10 + 5, "value": 1.0}),
                        qos=1,
                    )
                )
            for i in infos:
                i.wait_for_publish(60)
            pub.loop_stop()
            pub.disconnect()
            expected_windows = sensors * windows

            def records() -> int:
                total = 0
                for b in list(got):
                    raw = zlib.decompress(b) if b[:1] == b"\x78" else b
                    total += len(cbor2.loads(raw).get("windows", ()))
                return total

            if not wait_for(lambda: records() >= expected_windows, 60, 0.2):
                raise RuntimeError(f"{records()} of {expected_windows} windows upstream; see {log}")
            payload = sum(len(b) for b in got)
            return {
                "bytes_per_reading": payload / n,
                "bytes_per_record": payload / records(),
                "batches": len(got),
            }
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
            sub.loop_stop()
            sub.disconnect()


def _report_consume(
    kind: str, base: list[float], one: list[dict[str, Any]], two: list[dict[str, Any]]
) -> None:
    def m(runs: list[dict[str, Any]], k: str) -> float:
        return median([r[k] for r in runs])

    def total_us(r: dict[str, Any]) -> float:
        return float(r["consumers_us"] + r["db_us"] + r["broker_us"])

    r1, r2 = m(one, "rate"), m(two, "rate")
    print(
        f"consume {kind}: storage alone {median(base):,.0f} records/s; "
        f"one consumer {r1:,.0f}/s; two on $share {r2:,.0f}/s = {r2 / r1:.2f}x one "
        f"(runs: one {[round(r['rate']) for r in one]}, two {[round(r['rate']) for r in two]}; "
        f"load average {[round(r['load'], 1) for r in one]} / {[round(r['load'], 1) for r in two]})",
        flush=True,
    )
    print(
        f"  CPU per record, medians: one consumer {median([r['cpu_us'][0] for r in one]):.2f} us "
        f"in its process; two: {median([min(r['cpu_us']) for r in two]):.2f} / "
        f"{median([max(r['cpu_us']) for r in two]):.2f} us each (shares "
        f"{[[round(x, 2) for x in r['share']] for r in two]}); database server "
        f"{m(one, 'db_us'):.2f} / {m(two, 'db_us'):.2f} us, broker {m(one, 'broker_us'):.2f} / "
        f"{m(two, 'broker_us'):.2f} us; whole pipeline {median([total_us(r) for r in one]):.2f} / "
        f"{median([total_us(r) for r in two]):.2f} us per record (one / two)",
        flush=True,
    )
    if kind == "postgresql":
        print(
            "  consumers' server processes over the polls (lock waits / active / polls / on what): "
            "one "
            f"{[r['waits'] for r in one]}, two {[r['waits'] for r in two]}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["consume", "status", "bytes"], default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--batches", type=int, default=400, help="batches of 500 records per consume run"
    )
    ap.add_argument("--keepalive", type=int, default=4)
    ap.add_argument(
        "--before",
        type=Path,
        default=None,
        help="consume: also run the consumers of this checkout (e.g. git archive of an older "
        "commit), interleaved with these, for a before/after in the same run",
    )
    ap.add_argument(
        "--db", choices=["sqlite", "postgresql"], default=None, help="consume: only this one"
    )
    ap.add_argument(
        "--pg-setting",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="a PostgreSQL server setting (repeatable); default shared_buffers=128MB,"
        " PostgreSQL's own default (the test fixture's 64MB is sized for tests)",
    )
    a = ap.parse_args()
    pg_settings = dict(item.split("=", 1) for item in (a.pg_setting or ["shared_buffers=128MB"]))
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        if a.only in (None, "consume"):
            with Postgres(settings=pg_settings) as pg:
                print(f"PostgreSQL settings: {pg_settings}", flush=True)
                for kind in ("sqlite", "postgresql"):
                    if a.db and kind != a.db:
                        continue
                    base = []
                    one: list[dict[str, Any]] = []
                    two: list[dict[str, Any]] = []
                    old_one: list[dict[str, Any]] = []
                    old_two: list[dict[str, Any]] = []
                    # Interleaved, so the host's load drifts over all alike.
                    for i in range(a.runs):
                        base.append(storage_only(kind, a.batches, tmp, pg, f"{kind}_base{i}"))
                        one.append(consume_run(kind, 1, a.batches, tmp, pg, f"{kind}_one{i}"))
                        two.append(consume_run(kind, 2, a.batches, tmp, pg, f"{kind}_two{i}"))
                        if a.before:
                            old_one.append(
                                consume_run(kind, 1, a.batches, tmp, pg, f"{kind}_b1{i}", a.before)
                            )
                            old_two.append(
                                consume_run(kind, 2, a.batches, tmp, pg, f"{kind}_b2{i}", a.before)
                            )
                    _report_consume(kind, base, one, two)
                    if a.before:
                        print(f"  --before {a.before}, same run:", flush=True)
                        _report_consume(kind, base, old_one, old_two)
        if a.only in (None, "status"):
            res = [status_run(tmp / f"s{i}", a.keepalive, False) for i in range(a.runs)]
            cut = [status_run(tmp / f"c{i}", a.keepalive, True) for i in range(a.runs)]
            lat = [r[0] for r in res + cut]
            off = [r[1] for r in res]
            offc = [r[1] for r in cut]
            print(
                f"status: upstream connect -> subscriber {median(lat) * 1000:.0f} ms (runs "
                f"{[round(x * 1000) for x in lat]} ms); kill -9 -> offline "
                f"{median(off) * a.keepalive * 1000:.0f} ms ({median(off):.2f}x keep-alive: the kernel "
                f"closes the socket); link cut + kill -9 -> offline {median(offc):.2f}x keep-alive "
                f"(keep-alive {a.keepalive} s; runs {[round(x, 2) for x in offc]})",
                flush=True,
            )
        if a.only in (None, "bytes"):
            out = {}
            for comp in ("none", "deflate"):
                rs = [bytes_run(tmp / f"b{comp}{i}", comp) for i in range(a.runs)]
                out[comp] = {k: median([r[k] for r in rs]) for k in rs[0]}
                print(
                    f"bytes upstream, compression={comp}: {out[comp]['bytes_per_reading']:.2f} B/reading, "
                    f"{out[comp]['bytes_per_record']:.1f} B/window record ({out[comp]['batches']:.0f} batches)",
                    flush=True,
                )
            print(
                f"deflate: {out['none']['bytes_per_reading'] / out['deflate']['bytes_per_reading']:.2f}x "
                "fewer bytes upstream",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

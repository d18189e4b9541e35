"""`edge-agent demo`: the whole path on one machine, printed as it happens.

Two mosquitto brokers (local and upstream) on free loopback ports, simulated
sensors publishing JSON readings, a simulated microcontroller writing frames to a
pseudo-terminal that firmware_bridge turns into readings, the agent itself, and the
reference consumer (`edge-agent consume`) storing every batch and the device status in
a SQLite file; the demo prints the windows as they are stored. A third of the way
through, the upstream broker is stopped for a few seconds: the agent buffers, then
drains the backlog in seq order.

Ctrl-C (or --duration) drains in order: the sensors stop, the agent's last windows
fire and their batches go upstream, the consumer catches up, then everything stops
and the totals show that nothing was lost. The brokers run in sessions of their own,
so the terminal's Ctrl-C reaches only the demo, which stops them last. A second
Ctrl-C skips the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_agent.cli.mosquitto import Broker, find_mosquitto
from edge_agent.config import load_config
from edge_agent.consume.consumer import ConsumeOptions, Consumer
from edge_agent.consume.storage import SqliteStorage
from edge_agent.errors import EdgeAgentError
from edge_agent.mqtt import MqttClient

__all__ = ["demo"]

# idle_timeout: a key silent this long fires its open window. Short, so the last
# windows fire within seconds of the sensors stopping; well above the gap between
# two readings of a sensor (and a slow broker's hiccup), so no window fires early:
# its next reading would be late and dropped.
_CONFIG = """\
[agent]
id = "demo-pi"
state_dir = "{state}"
log_level = "error"

[local]
port = {local}

[upstream]
port = {upstream}
max_batch_delay = "1s"

[health]
listen = ""

[[pipeline]]
name = "climate"
topics = ["sensors/#"]
window = "tumbling"
size = "5s"
max_out_of_orderness = "1s"
idle_timeout = "{idle}s"
aggregates = ["count", "min", "max", "mean", "p95"]
"""

DRAIN_TIMEOUT = 15.0  # seconds the drain may take before the demo gives up on it


def demo(duration: float, sensors: int, rate: float) -> int:
    if find_mosquitto() is None:
        raise EdgeAgentError("the demo needs mosquitto: sudo apt-get install -y mosquitto")
    _demo_logging()
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
        return asyncio.run(_demo(Path(tmp), duration, sensors, rate))


def _demo_logging() -> None:
    """Errors only. The demo narrates the outage itself, and a busy host's hiccup
    (an event loop late for a moment, which /healthz reports as overload) is not
    something to alarm a first-time user with: readings wait at the local broker
    and the totals at the end show that none were lost."""
    logging.basicConfig(level=logging.ERROR, format="  [%(name)s] %(levelname)s %(message)s")
    for name in ("edge_agent", "firmware_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _Stop:
    """Ctrl-C once: drain and stop (`requested`). Twice: stop now (`now`)."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.now = asyncio.Event()

    def signal(self) -> None:
        if self.requested.is_set():
            self.now.set()
            return
        print(
            "\n>>> stopping: the sensors stop, the agent sends its last windows, the consumer "
            "catches up (Ctrl-C again to quit at once)\n",
            flush=True,
        )
        self.requested.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless a stop is requested first; True if it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.requested.wait()
        return self.requested.is_set()


async def _demo(tmp: Path, duration: float, sensors: int, rate: float) -> int:
    from edge_agent.runtime import Agent

    stop = _Stop()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.signal)
    totals = {"published": 0, "counted": 0, "batches": 0}
    async with contextlib.AsyncExitStack() as stack:
        # Stopped last (the stack unwinds in reverse), after everything that uses them.
        local = Broker(tmp / "local").start()
        stack.callback(local.stop)
        upstream = Broker(tmp / "upstream").start()
        stack.callback(upstream.stop)

        cfg_path = tmp / "agent.toml"
        cfg_path.write_text(
            _CONFIG.format(
                state=tmp / "state",
                local=local.port,
                upstream=upstream.port,
                idle=max(3.0, 3.0 / rate),
            )
        )
        agent = Agent(load_config(cfg_path))
        db_path = tmp / "fleet.db"
        print(f"edge-agent demo: local broker :{local.port}, upstream broker :{upstream.port}")
        print(
            f"{sensors} sensors x {rate:g} readings/s -> 5 s tumbling windows -> CBOR batches upstream"
            f" -> edge-agent consume -> SQLite {db_path.name}"
        )
        print("Ctrl-C to stop.\n")
        storage = SqliteStorage(str(db_path))
        await storage.open()
        stack.push_async_callback(storage.close)
        consumer = Consumer(
            ConsumeOptions(
                host="127.0.0.1",
                port=upstream.port,
                db=str(db_path),
                topics=("edge/+/batches", "edge/+/status"),
            ),
            storage,
            "demo-consumer",
        )
        consumer_stop = asyncio.Event()
        consumer_task = asyncio.create_task(consumer.run(consumer_stop), name="consumer")
        stack.push_async_callback(_stop_consumer, consumer_stop, consumer_task)
        async with asyncio.timeout(10.0):
            await consumer.subscribed.wait()
        shown = _Shown(db_path)
        show_task = asyncio.create_task(_show_stored(shown, totals, consumer))
        stack.push_async_callback(_cancel, show_task)
        agent_task = asyncio.create_task(agent.run(), name="agent")
        stack.push_async_callback(_stop_agent, agent, agent_task)
        while not agent.ready():
            if agent_task.done():
                agent_task.result()
            await asyncio.sleep(0.05)

        sensor_task = asyncio.create_task(_sensors(local.port, sensors, rate, totals, stop))
        board, bridge = await _start_board(tmp, local.port, rate)
        stack.callback(board.close)
        stack.push_async_callback(_close_quietly, bridge)
        outage_task = asyncio.create_task(_outage(upstream, duration, stop))

        if duration > 0:
            await stop.sleep(duration)
            stop.requested.set()
        await stop.requested.wait()

        # The drain, in order: sources stop, then the agent's last windows fire (idle)
        # and go upstream, then the consumer has them all.
        await sensor_task
        board.stop()
        await asyncio.sleep(0.3)  # the last frames through the pty
        await bridge.close()
        totals["published"] += 2 * int(bridge.health().get("published", 0))  # two fields a frame
        await outage_task  # the upstream broker is back
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while (
            totals["counted"] < totals["published"]
            and time.monotonic() < deadline
            and not stop.now.is_set()
        ):
            await asyncio.sleep(0.1)
        await shown.refresh(totals, consumer)
    lost = totals["published"] - totals["counted"]
    print(
        f"\nstored in {db_path.name}: try  SELECT key, window_start, rev, count, aggregates "
        f"FROM windows  (the file is removed when the demo ends; `edge-agent consume --db` keeps yours)"
    )
    print(
        f"\npublished {totals['published']} readings; upstream counted {totals['counted']} "
        f"in {totals['batches']} batches; lost {lost}"
    )
    return 0


async def _stop_agent(agent: Any, task: asyncio.Task[None]) -> None:
    agent.request_stop()
    with contextlib.suppress(Exception):
        await task


async def _close_quietly(bridge: Any) -> None:
    with contextlib.suppress(Exception):
        await bridge.close()


async def _start_board(tmp: Path, port: int, rate: float) -> tuple[Any, Any]:
    """A microcontroller on a serial line: SimulatedBoard -> pty -> firmware_bridge -> MQTT."""
    from firmware_bridge.bridge import Bridge
    from firmware_bridge.config import parse_config
    from firmware_bridge.simulator import SimulatedBoard

    link = str(tmp / "ttyDEMO")
    board = SimulatedBoard(
        "mcu1", rate=rate, format="kv", clock="uptime_ms", noise=0.02, seed=3, link=link
    )
    board.open()
    cfg = parse_config(
        f'[source]\nkind = "pty"\npath = "{link}"\n'
        f'[clock]\nmode = "uptime_ms"\nfield = "uptime_ms"\n'
        f'[publish]\nport = {port}\ntopic_template = "sensors/{{id}}"\n',
        "demo-bridge.toml",
    )
    bridge = Bridge(cfg)
    await bridge.start()
    board.start_thread()
    print(
        f"microcontroller mcu1 on {link} (key=value frames with *HH checksums, some line noise)"
        " -> firmware_bridge -> sensors/mcu1"
    )
    return board, bridge


class _Shown:
    """What the demo has printed of the consumer's SQLite file so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seq = -1  # windows brought by batches up to this seq are printed
        self.device: tuple[Any, ...] | None = None
        self.duplicates = 0

    def _read(self) -> tuple[list[tuple[Any, ...]], int, int, tuple[Any, ...] | None]:
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.path, timeout=5)) as db:
            rows = db.execute(
                "SELECT seq, key, window_start, window_end, rev, count, aggregates FROM windows"
                " WHERE seq > ? ORDER BY seq, key",
                (self.seq,),
            ).fetchall()
            counted, batches = db.execute(
                "SELECT (SELECT coalesce(sum(count), 0) FROM windows),"
                " (SELECT count(*) FROM batches WHERE schema = 'edge-agent/batch/1')"
            ).fetchone()
            device = db.execute("SELECT agent, state, health, reasons FROM devices").fetchone()
        return rows, counted, batches, device

    async def refresh(self, totals: dict[str, int], consumer: Consumer) -> None:
        rows, totals["counted"], totals["batches"], device = await asyncio.to_thread(self._read)
        if device is not None and device != self.device:
            agent, state, health, reasons = device
            why = json.loads(reasons)
            print(
                f"device {agent}: {state}, health {health}"
                + (f" ({'; '.join(why)})" if why else "")
            )
            self.device = device
        if consumer.duplicates > self.duplicates:
            print(
                f"{consumer.duplicates - self.duplicates} batch(es) delivered again after the "
                "outage: stored once (deduplicated on agent and seq)"
            )
            self.duplicates = consumer.duplicates
        by_seq: dict[int, list[tuple[Any, ...]]] = {}
        for r in rows:
            by_seq.setdefault(r[0], []).append(r)
        for seq, ws in by_seq.items():
            print(f"batch seq={seq} stored: {len(ws)} window(s)")
            for _, key, start, end, rev, count, aggs in ws[:6]:
                a = json.loads(aggs)
                t = time.strftime("%H:%M:%S", time.localtime(start))
                print(
                    f"   {key:<24} [{t} +{end - start:g}s) rev={rev} count={count:<3} "
                    f"min={a['min']:.2f} max={a['max']:.2f} mean={a['mean']:.2f} p95={a['p95']:.2f}"
                )
            if len(ws) > 6:
                print(f"   ... and {len(ws) - 6} more")
            self.seq = max(self.seq, seq)
        sys.stdout.flush()


async def _show_stored(shown: _Shown, totals: dict[str, int], consumer: Consumer) -> None:
    while True:
        await asyncio.sleep(0.5)
        await shown.refresh(totals, consumer)


async def _stop_consumer(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _sensors(port: int, n: int, rate: float, totals: dict[str, int], stop: _Stop) -> None:
    pub = MqttClient(host="127.0.0.1", port=port, client_id="demo-sensors")
    await pub.connect()
    rng = random.Random(7)
    t0 = time.time()
    try:
        while not stop.requested.is_set():
            now = time.time()
            for i in range(n):
                temp = 21 + 2 * math.sin((now - t0) / 20 + i) + rng.gauss(0, 0.2)
                payload = {
                    "ts": round(now, 3),
                    "id": f"s{i}",
                    "temp": round(temp, 2),
                    "hum": round(45 + 5 * math.cos((now - t0) / 30 + i), 1),
                }
                await pub.publish(f"sensors/s{i}", json.dumps(payload).encode(), 1)
                totals["published"] += 2  # two number fields: two readings
            await stop.sleep(1.0 / rate)
    finally:
        await pub.disconnect()


async def _outage(upstream: Broker, duration: float, stop: _Stop) -> None:
    """Stop the upstream broker for a while, as a cellular link would drop; a stop
    request during the outage ends it early. The consumer reconnects by itself."""
    start_after = 12.0 if duration <= 0 else max(4.0, duration / 3)
    if await stop.sleep(start_after):
        return
    print("\n>>> upstream broker stopped: the agent keeps windowing and buffers batches on disk\n")
    upstream.stop()
    await stop.sleep(6.0)
    upstream.start()
    print("\n>>> upstream broker back: the backlog drains oldest first, in seq order\n")

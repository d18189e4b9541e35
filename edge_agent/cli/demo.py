"""`edge-agent demo`: the whole path on one machine, printed as it happens.

Two mosquitto brokers (local and upstream) on free loopback ports, simulated
sensors publishing JSON readings, a simulated microcontroller writing frames to a
pseudo-terminal that firmware_bridge turns into readings, the agent itself, and a
consumer that prints each CBOR batch it receives, decoded. Halfway through, the upstream broker is
stopped for a few seconds: the agent buffers, then drains the backlog in seq
order, and the consumer's totals show that nothing was lost. Ctrl-C (or
--duration) stops everything and leaves nothing running.
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

import cbor2

from edge_agent.cli.mosquitto import Broker, find_mosquitto
from edge_agent.config import load_config
from edge_agent.errors import EdgeAgentError
from edge_agent.mqtt import MqttClient

__all__ = ["demo"]

_CONFIG = """\
[agent]
id = "demo-pi"
state_dir = "{state}"
log_level = "warning"

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
idle_timeout = "10s"
aggregates = ["count", "min", "max", "mean", "p95"]
"""


def demo(duration: float, sensors: int, rate: float) -> int:
    if find_mosquitto() is None:
        raise EdgeAgentError("the demo needs mosquitto: sudo apt-get install -y mosquitto")
    logging.basicConfig(level=logging.WARNING, format="  [%(name)s] %(levelname)s %(message)s")
    logging.getLogger("firmware_bridge").setLevel(logging.ERROR)  # its shutdown is the demo's
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
        return asyncio.run(_demo(Path(tmp), duration, sensors, rate))


async def _demo(tmp: Path, duration: float, sensors: int, rate: float) -> int:
    from edge_agent.runtime import Agent

    local = Broker(tmp / "local").start()
    upstream = Broker(tmp / "upstream").start()
    cfg_path = tmp / "agent.toml"
    cfg_path.write_text(_CONFIG.format(state=tmp / "state", local=local.port, upstream=upstream.port))
    cfg = load_config(cfg_path)
    agent = Agent(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    totals = {"published": 0, "counted": 0, "batches": 0}
    consumer = _consumer(upstream.port, totals)
    print(f"edge-agent demo: local broker :{local.port}, upstream broker :{upstream.port}")
    print(f"{sensors} sensors x {rate:g} readings/s -> 5 s tumbling windows -> CBOR batches upstream")
    print("Ctrl-C to stop.\n")
    agent_task = asyncio.create_task(agent.run(), name="agent")
    tasks: list[asyncio.Task[None]] = []
    board, bridge = None, None
    try:
        await _connect_retry(consumer)
        await consumer.subscribe([("edge/#", 1)])
        while not agent.ready():
            if agent_task.done():
                agent_task.result()
            await asyncio.sleep(0.05)
        tasks.append(asyncio.create_task(_sensors(local.port, sensors, rate, totals, stop)))
        board, bridge = await _start_board(tmp, local.port, rate)
        tasks.append(asyncio.create_task(_outage(upstream, consumer, duration, stop)))
        if duration > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        else:
            await stop.wait()
        stop.set()
        for t in tasks:
            with contextlib.suppress(Exception):
                await t
        if board is not None and bridge is not None:
            board.stop()
            await asyncio.sleep(0.3)  # the last frames through the pty
            h = bridge.health()
            totals["published"] += 2 * int(h.get("published", 0))
            await bridge.close()
            bridge = None
        # Let the last windows fire (idle) and their batches arrive.
        deadline = time.monotonic() + 15
        while totals["counted"] < totals["published"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        if board is not None:
            board.close()
        if bridge is not None:
            with contextlib.suppress(Exception):
                await bridge.close()
        agent.request_stop()
        with contextlib.suppress(Exception):
            await agent_task
        await consumer.disconnect()
        local.stop()
        upstream.stop()
    lost = totals["published"] - totals["counted"]
    print(
        f"\npublished {totals['published']} readings; upstream counted {totals['counted']} "
        f"in {totals['batches']} batches; lost {max(lost, 0)}"
    )
    return 0


def _consumer(port: int, totals: dict[str, int]) -> MqttClient:
    # A persistent session, so batches the agent sends before the consumer is
    # back after the outage wait for it at the broker.
    return MqttClient(host="127.0.0.1", port=port, client_id="demo-consumer", clean_start=False,
                      session_expiry=3600, on_message=lambda m: _show(m, totals))


async def _start_board(tmp: Path, port: int, rate: float) -> tuple[Any, Any]:
    """A microcontroller on a serial line: SimulatedBoard -> pty -> firmware_bridge -> MQTT."""
    from firmware_bridge.bridge import Bridge
    from firmware_bridge.config import parse_config
    from firmware_bridge.simulator import SimulatedBoard

    link = str(tmp / "ttyDEMO")
    board = SimulatedBoard("mcu1", rate=rate, format="kv", clock="uptime_ms", noise=0.02,
                           seed=3, link=link)
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
    print(f"microcontroller mcu1 on {link} (key=value frames with *HH checksums, some line noise)"
          " -> firmware_bridge -> sensors/mcu1")
    return board, bridge


async def _connect_retry(client: MqttClient) -> None:
    for _ in range(50):
        try:
            await client.connect(timeout=2.0)
            return
        except EdgeAgentError:
            await asyncio.sleep(0.1)
    await client.connect(timeout=2.0)


def _show(msg: object, totals: dict[str, int]) -> None:
    batch = cbor2.loads(msg.payload)  # type: ignore[attr-defined]
    windows = batch.get("windows", [])
    totals["batches"] += 1
    totals["counted"] += sum(w["count"] for w in windows)
    print(f"batch seq={batch['seq']} agent={batch['agent']} config={batch['config']} "
          f"records={len(windows)}")
    for w in windows[:6]:
        start = time.strftime("%H:%M:%S", time.localtime(w["start"]))
        print(f"   {w['key']:<24} [{start} +{w['end'] - w['start']:g}s) rev={w['rev']} "
              f"count={w['count']:<3} min={w['min']:.2f} max={w['max']:.2f} "
              f"mean={w['mean']:.2f} p95={w['p95']:.2f}")
    if len(windows) > 6:
        print(f"   ... and {len(windows) - 6} more")
    sys.stdout.flush()


async def _sensors(port: int, n: int, rate: float, totals: dict[str, int], stop: asyncio.Event) -> None:
    pub = MqttClient(host="127.0.0.1", port=port, client_id="demo-sensors")
    await pub.connect()
    rng = random.Random(7)
    t0 = time.time()
    try:
        while not stop.is_set():
            now = time.time()
            for i in range(n):
                temp = 21 + 2 * math.sin((now - t0) / 20 + i) + rng.gauss(0, 0.2)
                payload = {"ts": round(now, 3), "id": f"s{i}", "temp": round(temp, 2),
                           "hum": round(45 + 5 * math.cos((now - t0) / 30 + i), 1)}
                await pub.publish(f"sensors/s{i}", json.dumps(payload).encode(), 1)
                totals["published"] += 2  # two number fields: two readings
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0 / rate)
    finally:
        await pub.disconnect()


async def _outage(upstream: Broker, consumer: MqttClient, duration: float, stop: asyncio.Event) -> None:
    """Stop the upstream broker for a while, as a cellular link would drop."""
    start_after = 12.0 if duration <= 0 else max(4.0, duration / 3)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), start_after)
        return
    print("\n>>> upstream broker stopped: the agent keeps windowing and buffers batches on disk\n")
    await consumer.disconnect()
    upstream.stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 6.0)
    upstream.start()
    await _connect_retry(consumer)
    print("\n>>> upstream broker back: the backlog drains oldest first, in seq order\n")

"""`edge-agent demo`: the whole path on one machine, printed as it happens.

Two mosquitto brokers (local and upstream) on free loopback ports, simulated
sensors publishing JSON readings, a simulated microcontroller writing frames to a
pseudo-terminal that firmware_bridge turns into readings, the agent itself, and a
consumer that prints each CBOR batch it receives, decoded. A third of the way through,
the upstream broker is stopped for a few seconds: the agent buffers, then drains the
backlog in seq order.

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

import cbor2

from edge_agent.cli.mosquitto import Broker, find_mosquitto
from edge_agent.config import load_config
from edge_agent.errors import EdgeAgentError
from edge_agent.mqtt import MqttClient

__all__ = ["demo"]

# idle_timeout: a key silent this long fires its open window. Short, so the last
# windows fire within seconds of the sensors stopping; longer than the gap between
# two readings of a sensor, so no window fires early (its next reading would be late).
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
        print("\n>>> stopping: the sensors stop, the agent sends its last windows, the consumer "
              "catches up (Ctrl-C again to quit at once)\n", flush=True)
        self.requested.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless a stop is requested first; True if it was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.requested.wait(), seconds)
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
        cfg_path.write_text(_CONFIG.format(state=tmp / "state", local=local.port,
                                           upstream=upstream.port, idle=max(2.0, 3.0 / rate)))
        agent = Agent(load_config(cfg_path))
        consumer = _consumer(upstream.port, totals)
        print(f"edge-agent demo: local broker :{local.port}, upstream broker :{upstream.port}")
        print(f"{sensors} sensors x {rate:g} readings/s -> 5 s tumbling windows -> CBOR batches upstream")
        print("Ctrl-C to stop.\n")
        await _connect_retry(consumer)
        stack.push_async_callback(consumer.disconnect)
        await consumer.subscribe([("edge/+/batches", 1)])  # not the retained status
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
        outage_task = asyncio.create_task(_outage(upstream, consumer, duration, stop))

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
        while (totals["counted"] < totals["published"] and time.monotonic() < deadline
               and not stop.now.is_set()):
            await asyncio.sleep(0.1)
    lost = totals["published"] - totals["counted"]
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


def _consumer(port: int, totals: dict[str, int]) -> MqttClient:
    # A persistent session, so batches the agent sends before the consumer is
    # back after the outage wait for it at the broker.
    seen: set[tuple[str, int]] = set()
    return MqttClient(host="127.0.0.1", port=port, client_id="demo-consumer", clean_start=False,
                      session_expiry=3600, on_message=lambda m: _show(m, totals, seen))


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


def _show(msg: object, totals: dict[str, int], seen: set[tuple[str, int]]) -> None:
    batch = cbor2.loads(msg.payload)  # type: ignore[attr-defined]
    windows = batch.get("windows", [])
    # Delivery is at least once: a batch resent after the outage is counted once.
    if (batch["agent"], batch["seq"]) in seen:
        print(f"batch seq={batch['seq']} again (resent after the outage; counted once)")
        return
    seen.add((batch["agent"], batch["seq"]))
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
                payload = {"ts": round(now, 3), "id": f"s{i}", "temp": round(temp, 2),
                           "hum": round(45 + 5 * math.cos((now - t0) / 30 + i), 1)}
                await pub.publish(f"sensors/s{i}", json.dumps(payload).encode(), 1)
                totals["published"] += 2  # two number fields: two readings
            await stop.sleep(1.0 / rate)
    finally:
        await pub.disconnect()


async def _outage(upstream: Broker, consumer: MqttClient, duration: float, stop: _Stop) -> None:
    """Stop the upstream broker for a while, as a cellular link would drop; a stop
    request during the outage ends it early."""
    start_after = 12.0 if duration <= 0 else max(4.0, duration / 3)
    if await stop.sleep(start_after):
        return
    print("\n>>> upstream broker stopped: the agent keeps windowing and buffers batches on disk\n")
    await consumer.disconnect()
    upstream.stop()
    await stop.sleep(6.0)
    upstream.start()
    await _connect_retry(consumer)
    print("\n>>> upstream broker back: the backlog drains oldest first, in seq order\n")

"""The MQTT layer's candidates for the local subscription: CPU per message received.

    python bench/bench_mqtt.py [--messages 200000] [--runs 3] [--topics 100]

Same run, same broker (a fresh mosquitto with room for the whole backlog), for each
of QoS 0 and QoS 1 and each candidate, median of --runs:

- `paho`: paho-mqtt through its public API only (`loop_forever()` in the
  subscriber process; QoS 1: paho's automatic PUBACK per message);
- `paho manual ack`: QoS 1 with `manual_ack=True`, acks sent in batches of 1,000
  (`Client.ack` per message, the public way);
- `ours`: edge_agent.mqtt.MqttClient, an asyncio Protocol (QoS 1: `ack_many` per
  1,000, as the agent does after a checkpoint).

Each subscriber runs in its own process and counts messages, nothing else; its CPU
time (user + system, from resource.getrusage) is divided by the messages received.
The publisher (our client, in another process) sends `--messages` 40-byte JSON
readings over `--topics` topics as fast as the broker takes them, live, while the
subscriber reads: figures are per message at a live rate, not draining a backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.cli.mosquitto import Broker
from edge_agent.mqtt import MqttClient


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sub_paho(port: int, qos: int, n: int, manual: bool, ready: mp.Event, out: mp.Queue) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-paho-{time.monotonic_ns()}",
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual,
    )
    got = [0]
    pending: list[int] = []
    t = [0.0, 0.0]

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        got[0] += 1
        if got[0] == 1:
            t[0], t[1] = _cpu(), time.perf_counter()
        if manual:
            pending.append(msg.mid)
            if len(pending) >= 1000:
                for m in pending:
                    client.ack(m, 1)
                pending.clear()
        if got[0] >= n:
            client.disconnect()

    def on_connect(client, userdata, flags, rc, props):  # type: ignore[no-untyped-def]
        client.subscribe("b/#", qos)

    def on_subscribe(client, userdata, mid, codes, props):  # type: ignore[no-untyped-def]
        ready.set()

    c.on_message, c.on_connect, c.on_subscribe = on_message, on_connect, on_subscribe
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 8192
    c.connect("127.0.0.1", port, properties=props)
    c.loop_forever()
    out.put((got[0], _cpu() - t[0], time.perf_counter() - t[1]))


def _sub_ours(port: int, qos: int, n: int, ready: mp.Event, out: mp.Queue) -> None:
    async def run() -> None:
        got = [0]
        done = asyncio.get_running_loop().create_future()
        pending: list[int] = []
        t = [0.0, 0.0]
        client: MqttClient

        def on_message(msg) -> None:  # type: ignore[no-untyped-def]
            got[0] += 1
            if got[0] == 1:
                t[0], t[1] = _cpu(), time.perf_counter()
            if qos:
                pending.append(msg.mid)
                if len(pending) >= 1000:
                    client.ack_many(pending)
                    pending.clear()
            if got[0] >= n and not done.done():
                done.set_result(None)

        client = MqttClient(
            host="127.0.0.1",
            port=port,
            client_id=f"bench-ours-{time.monotonic_ns()}",
            receive_maximum=8192,
            manual_ack=True,
            on_message=on_message,
        )
        await client.connect()
        await client.subscribe([("b/#", qos)])
        ready.set()
        await done
        out.put((got[0], _cpu() - t[0], time.perf_counter() - t[1]))
        client.close()

    asyncio.run(run())


def _publish(port: int, qos: int, n: int, topics: int) -> None:
    async def run() -> None:
        pub = MqttClient(host="127.0.0.1", port=port, max_inflight=2000)
        await pub.connect()
        names = [f"b/dev{i}" for i in range(topics)]
        futs = []
        for i in range(n):
            futs.append(
                pub.publish(
                    names[i % topics], b'{"ts": %.3f, "value": %d.5}' % (1.7e9 + i, i % 50), qos
                )
            )
            if len(futs) >= 1000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
        await pub.disconnect()

    asyncio.run(run())


def one(port: int, who: str, qos: int, n: int, topics: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    if who == "ours":
        p = ctx.Process(target=_sub_ours, args=(port, qos, n, ready, out))
    else:
        p = ctx.Process(target=_sub_paho, args=(port, qos, n, who == "paho manual ack", ready, out))
    p.start()
    ready.wait(30)
    pub = ctx.Process(target=_publish, args=(port, qos, n, topics))
    pub.start()
    got, cpu, wall = out.get(timeout=600)
    pub.join(60)
    p.join(30)
    return 1e6 * cpu / got, got / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--topics", type=int, default=100)
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Broker(Path(tmp) / "b", max_queued_messages=10_000_000) as b,
    ):
        print(f"{args.messages} messages, {args.topics} topics, medians of {args.runs}")
        print(
            f"{'qos':<4} {'subscriber':<18} {'CPU us/msg':>10} {'msgs/s':>10} {'CPU vs paho':>11}"
        )
        for qos in (0, 1):
            who_all = ["paho", "ours"] if qos == 0 else ["paho", "paho manual ack", "ours"]
            base = None
            for who in who_all:
                runs = [one(b.port, who, qos, args.messages, args.topics) for _ in range(args.runs)]
                cpu = statistics.median(r[0] for r in runs)
                rate = statistics.median(r[1] for r in runs)
                base = base or cpu
                print(
                    f"{qos:<4} {who:<18} {cpu:>10.2f} {rate:>10,.0f} {cpu / base:>10.2f}x",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 11 item 8: structures that grow with input are bounded in bytes, not only
in counts, and what overflows is refused and counted."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

from edge_agent.config import load_config
from edge_agent.ingest.limits import KeyLimits
from edge_agent.ingest.router import TopicRouter
from edge_agent.mqtt import MAX_PACKET, Message, MqttClient
from edge_agent.runtime import Agent
from tests.helpers.agent_harness import AgentProcess, pipeline, poll, write_config
from tests.helpers.aio import run_async
from tests.helpers.brokers import Broker

LONG = 60_000  # a topic name of 60 KB (MQTT allows 65,535 bytes)


def test_key_names_are_bounded_in_characters_and_the_overflow_counted() -> None:
    held: dict[str, None] = {}
    lim = KeyLimits(max_keys=100_000, max_key_rate=None, max_key_bytes=1_000_000)

    def admit(keys: list[str]) -> list[str]:
        readings = [(k, 1.0, 1.0) for k in keys]
        out = lim.admit(readings, 0.0, len(held), held.__contains__, lambda: sum(map(len, held)))
        for k, _, _ in out:
            held.setdefault(k)
        return [r[0] for r in out]

    long_keys = [f"{i:05d}" + "x" * (LONG - 5) for i in range(40)]
    taken = admit(long_keys)
    assert len(taken) == 16  # 16 x 60,000 <= 1,000,000 < 17 x 60,000
    assert lim.over_key_bytes == 24
    assert sum(map(len, held)) <= 1_000_000
    # keys already held go on; short new keys still fit in what is left
    assert admit([*long_keys[:16], "short/a", "short/b"]) == [*long_keys[:16], "short/a", "short/b"]
    assert lim.over_key_bytes == 24
    # the common case never asks for the exact figure
    calls = []
    lim2 = KeyLimits(100_000, None)
    lim2.admit([("k", 1.0, 1.0)] * 100, 0.0, 0, lambda k: False, lambda: calls.append(1) or 0)
    assert calls == []


def test_topic_caches_are_bounded_in_bytes() -> None:
    router = TopicRouter([["#"]], cache_bytes=2_000_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):  # 60 MB of distinct topic names
            topic = f"{i:04d}/" + "t" * LONG
            assert router.route(topic) == (0,)
            router.first_copy(topic, [1])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 8_000_000, f"{grown / 1e6:.1f} MB held for 60 MB of topic names"


def test_agent_with_1000_keys_of_60_kb_names_stays_bounded(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[agent]
id = "bytes"
state_dir = "{tmp_path / "state"}"
[health]
listen = ""
[[pipeline]]
name = "p"
topics = ["#"]
size = "10s"
""")

    async def run() -> tuple[int, Agent]:
        agent = Agent(load_config(cfg))
        agent.session.start()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(1000):
                topic = (f"{i:04d}/" + "k" * LONG).encode()
                agent.session.on_message(
                    Message(topic, json.dumps({"value": i}).encode(), 0, 0, False, False)
                )
                if i % 50 == 49:
                    agent.session.process_inbox(everything=True)
            agent.session.process_inbox(everything=True)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        return grown, agent

    grown, agent = run_async(run())
    p = agent.pipelines[0]
    held = p.engine.key_bytes()
    assert held <= 8 * 1024 * 1024
    assert p.rejects["over_key_bytes"] > 0
    assert p.readings_in + p.rejects["over_key_bytes"] + p.readings_shed == 1000
    # Key names, topic caches and window state of 1,000 keys x 60 KB: bounded near
    # the 8 MiB key budget plus the 4 MiB route cache, not 60+ MB.
    assert grown < 30_000_000, f"{grown / 1e6:.1f} MB"


async def _publish_big(port: int) -> None:
    pub = MqttClient(host="127.0.0.1", port=port)
    await pub.connect()
    await pub.publish("big/dev", b"1" + b" " * (5 * 1024 * 1024), 1)  # over MAX_PACKET
    await pub.publish("big/dev", b"21.5", 1)
    await pub.disconnect()


def test_an_oversized_message_is_skipped_counted_and_acknowledged(
    tmp_path: Path,
    broker: Broker,
    upstream_broker: Broker,
) -> None:
    assert MAX_PACKET < 5 * 1024 * 1024
    cfg = write_config(
        tmp_path, broker.port, upstream_broker.port, pipelines=[pipeline("p", topics=["big/#"])]
    )
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        run_async(_publish_big(broker.port))
        h = poll(
            lambda: (h := agent.health())["counters"]["readings_in"] == 1 and h,
            30,
            what="the ordinary reading after the big one",
        )
        assert h["rejected_by_reason"] == {"too_large": 1}
        assert h["local"]["connected"]
        # acknowledged: a restart does not get it again
        agent.stop()
        agent.start()
        agent.wait_ready()
        time.sleep(1.0)
        assert agent.health()["rejected_by_reason"] == {}


def test_queued_messages_share_one_copy_of_each_short_topic_name(tmp_path: Path) -> None:
    # Each parsed message brings its own bytes of the topic name; while queued they
    # share one (a full inbox holds up to shed.MAX_LIMIT). Long names keep their own copy,
    # so the shared table stays small; what is processed is the same either way.
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[agent]
id = "share"
state_dir = "{tmp_path / "state"}"
[health]
listen = ""
[[pipeline]]
name = "p"
topics = ["#"]
size = "10s"
""")

    async def run() -> Agent:
        agent = Agent(load_config(cfg))
        agent.session.start()
        for topic in (b"s/1", b"s/2", b"s/1", b"s/2", b"s/1", b"L" * 200, b"L" * 200):
            payload = json.dumps({"value": 1.0}).encode()
            fresh = bytes(bytearray(topic))  # its own object, as the parser makes
            agent.session.on_message(Message(fresh, payload, 0, 0, False, False))
        return agent

    agent = run_async(run())
    inbox = agent.session.inbox
    assert len(inbox) == 7
    assert inbox[0].topic_bytes is inbox[2].topic_bytes is inbox[4].topic_bytes
    assert inbox[1].topic_bytes is inbox[3].topic_bytes
    assert inbox[0].topic_bytes is not inbox[1].topic_bytes
    assert inbox[5].topic_bytes == inbox[6].topic_bytes
    assert inbox[5].topic_bytes is not inbox[6].topic_bytes  # over 128 bytes: not shared
    agent.session.process_inbox(everything=True)
    p = agent.pipelines[0]
    assert p.readings_in == 7 and p.engine.keys() == 3

"""MqttClient.publish_many: one completion for a group of publishes, the same bytes
on the wire as `publish`, and which messages a group did not get through."""

from __future__ import annotations

import asyncio
import struct

import pytest

from edge_agent.mqtt import Message, MqttClient, MqttError
from tests.helpers.brokers import Broker
from tests.helpers.fake_broker import FakeBroker


def _publish_bytes(topic: bytes, payload: bytes, qos: int, mid: int, props: bytes) -> bytes:
    """A PUBLISH derived by hand from MQTT 5 3.3 (fixed header, topic, packet id, properties)."""
    body = struct.pack(">H", len(topic)) + topic
    body += struct.pack(">H", mid) if qos else b""
    body += props + payload
    n, rl = len(body), b""
    while True:
        b, n = n & 0x7F, n >> 7
        rl += bytes([b | (0x80 if n else 0)])
        if not n:
            break
    return bytes([0x30 | qos << 1]) + rl + body


async def _until(cond: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_the_bytes_are_those_of_publish_one_by_one() -> None:
    ct = b"\x03\x00\x10application/json"
    big = b"x" * 300  # a two-byte remaining length
    async with FakeBroker() as fake:
        c = MqttClient(host="127.0.0.1", port=fake.port)
        await c.connect()
        group = c.publish_many(
            [("a/b", b"1", "application/json"), ("a/b", big, None), ("c", b"3", "application/json")]
        )
        await asyncio.wait_for(group.future, 5)
        assert group.undelivered() == []
        single = c.publish("c", b"4", 1, "application/json")
        await asyncio.wait_for(single, 5)
        await c.disconnect()
    raws = [p.raw for p in fake.published]
    assert raws == [
        _publish_bytes(b"a/b", b"1", 1, 1, bytes([len(ct)]) + ct),
        _publish_bytes(b"a/b", big, 1, 2, b"\x00"),
        _publish_bytes(b"c", b"3", 1, 3, bytes([len(ct)]) + ct),
        _publish_bytes(b"c", b"4", 1, 4, bytes([len(ct)]) + ct),
    ]


async def test_qos0_completes_at_once_with_the_same_bytes() -> None:
    async with FakeBroker() as fake:
        c = MqttClient(host="127.0.0.1", port=fake.port)
        await c.connect()
        group = c.publish_many([("t", b"a", None), ("t", b"b", "text/plain")], qos=0)
        assert group.future.done() and group.undelivered() == []
        assert c.unacked_publishes == 0
        await _until(lambda: len(fake.published) == 2)
        await c.disconnect()
    assert [p.raw for p in fake.published] == [
        _publish_bytes(b"t", b"a", 0, 0, b"\x00"),
        _publish_bytes(b"t", b"b", 0, 0, b"\x0d\x03\x00\x0atext/plain"),
    ]


async def test_refused_and_unanswered_messages_are_named() -> None:
    # the broker refuses "r" (0x87 not authorized) and never answers "s"
    codes = {b"r": 0x87, b"s": None}
    async with FakeBroker(answer=lambda mid, payload: codes.get(payload, 0)) as fake:
        c = MqttClient(host="127.0.0.1", port=fake.port)
        await c.connect()
        done = c.publish_many([("t", p, None) for p in (b"a", b"r", b"b")])
        await asyncio.wait_for(done.future, 5)
        assert done.future.result() is None
        assert done.undelivered() == [1]
        lost = c.publish_many([("t", p, None) for p in (b"c", b"s", b"d")])
        await _until(lambda: len(fake.published) == 6)
        await _until(lambda: c.unacked_publishes == 1)  # "c" and "d" acknowledged
        assert not lost.future.done()
        fake.drop()
        with pytest.raises(MqttError, match="connection lost before PUBACK"):
            await asyncio.wait_for(lost.future, 5)
        assert lost.undelivered() == [1]
        c.close()


async def test_not_connected_raises() -> None:
    c = MqttClient(host="127.0.0.1", port=1)
    with pytest.raises(MqttError, match="not connected"):
        c.publish_many([("t", b"x", None)])


async def test_a_topic_mqtt_cannot_carry_is_refused_alone() -> None:
    async with FakeBroker() as fake:
        c = MqttClient(host="127.0.0.1", port=fake.port)
        await c.connect()
        group = c.publish_many([("t", b"1", None), ("x" * 70_000, b"2", None), ("t", b"3", None)])
        await asyncio.wait_for(group.future, 5)
        assert group.undelivered() == [1]
        await c.disconnect()
    assert [p.payload for p in fake.published] == [b"1", b"3"]


async def test_groups_beyond_max_inflight_all_arrive_in_order(broker: Broker) -> None:
    got: list[Message] = []
    sub = MqttClient(
        host="127.0.0.1", port=broker.port, receive_maximum=5000, on_message=got.append
    )
    await sub.connect()
    await sub.subscribe([("g/#", 1)])
    pub = MqttClient(host="127.0.0.1", port=broker.port, max_inflight=10)
    await pub.connect()
    groups = [
        pub.publish_many([(f"g/{k % 3}", b"%d" % k, None) for k in range(i, i + 100)])
        for i in range(0, 3000, 100)
    ]
    assert pub.unacked_publishes == 3000
    await asyncio.wait_for(asyncio.gather(*(g.future for g in groups)), 30)
    assert all(g.undelivered() == [] for g in groups)
    assert pub.unacked_publishes == 0
    await _until(lambda: len(got) == 3000, timeout=30)
    assert [m.payload for m in got] == [b"%d" % k for k in range(3000)]  # in order
    await sub.disconnect()
    await pub.disconnect()

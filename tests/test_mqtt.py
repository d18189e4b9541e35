"""Our MQTT 5 client against a real mosquitto, and against a fake broker that sends
exactly the bytes a test wants (split reads, malformed packets)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import AsyncIterator

import pytest

from edge_agent.mqtt import Message, MqttClient, MqttError, Will
from tests.helpers.brokers import Broker
from tests.helpers.fake_broker import serving


async def _until(cond: object, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(0.01)


async def test_round_trip_with_content_type_and_session(broker: Broker) -> None:
    got: list[Message] = []
    sub = MqttClient(
        host="127.0.0.1",
        port=broker.port,
        client_id="rt-sub",
        clean_start=False,
        session_expiry=60,
        manual_ack=True,
        on_message=got.append,
    )
    assert await sub.connect() is False
    await sub.subscribe([("rt/#", 1)])
    pub = MqttClient(host="127.0.0.1", port=broker.port)
    await pub.connect()
    await asyncio.gather(
        *(pub.publish("rt/a", b"%d" % i, 1, "application/json") for i in range(50))
    )
    await _until(lambda: len(got) == 50)
    assert [m.payload for m in got] == [b"%d" % i for i in range(50)]
    assert {m.content_type for m in got} == {"application/json"}
    assert {m.topic for m in got} == {"rt/a"} and {m.qos for m in got} == {1}
    # Unacknowledged (manual ack): the session resumes and redelivers them with DUP set.
    sub.close()
    again: list[Message] = []
    sub2 = MqttClient(
        host="127.0.0.1",
        port=broker.port,
        client_id="rt-sub",
        clean_start=False,
        session_expiry=60,
        manual_ack=True,
        on_message=again.append,
    )
    assert await sub2.connect() is True
    await _until(lambda: len(again) == 50)
    assert len(again) == 50 and all(m.dup for m in again)
    assert [m.mid for m in again] == [m.mid for m in got]
    await sub2.disconnect()
    await pub.disconnect()


async def test_ack_many_acknowledges_every_message_in_one_write(broker: Broker) -> None:
    got: list[Message] = []
    sub = MqttClient(
        host="127.0.0.1",
        port=broker.port,
        client_id="am-sub",
        clean_start=False,
        session_expiry=60,
        receive_maximum=1000,
        manual_ack=True,
        on_message=got.append,
    )
    await sub.connect()
    await sub.subscribe([("am/#", 1)])
    pub = MqttClient(host="127.0.0.1", port=broker.port)
    await pub.connect()
    await asyncio.gather(*(pub.publish(f"am/{i}", b"x" * i, 1) for i in range(300)))
    await _until(lambda: len(got) == 300)
    assert sorted(len(m.payload) for m in got) == list(range(300))  # every size intact
    sub.ack_many([m.mid for m in got])
    await sub.disconnect()
    again: list[Message] = []
    sub2 = MqttClient(
        host="127.0.0.1",
        port=broker.port,
        client_id="am-sub",
        clean_start=False,
        session_expiry=60,
        manual_ack=True,
        on_message=again.append,
    )
    assert await sub2.connect() is True
    await asyncio.sleep(0.3)  # a redelivery would come right after CONNACK
    assert again == []
    await sub2.disconnect()
    await pub.disconnect()


async def test_publishes_beyond_max_inflight_wait_for_acks_and_all_arrive(broker: Broker) -> None:
    got: list[Message] = []
    sub = MqttClient(
        host="127.0.0.1", port=broker.port, receive_maximum=5000, on_message=got.append
    )
    await sub.connect()
    await sub.subscribe([("b", 1)])
    pub = MqttClient(host="127.0.0.1", port=broker.port, max_inflight=10)
    await pub.connect()
    futs = [pub.publish("b", b"%d" % i, 1) for i in range(3000)]
    assert pub.unacked_publishes == 3000
    await asyncio.gather(*futs)
    await _until(lambda: len(got) == 3000)
    assert [m.payload for m in got] == [b"%d" % i for i in range(3000)]  # in order
    await sub.disconnect()
    await pub.disconnect()


async def test_qos2_both_ways(broker: Broker) -> None:
    got: list[Message] = []
    sub = MqttClient(host="127.0.0.1", port=broker.port, on_message=got.append)
    await sub.connect()
    assert await sub.subscribe([("q2", 2)]) == [2]
    pub = MqttClient(host="127.0.0.1", port=broker.port)
    await pub.connect()
    await asyncio.wait_for(asyncio.gather(*(pub.publish("q2", b"%d" % i, 2) for i in range(20))), 5)
    await _until(lambda: len(got) == 20)
    assert [m.payload for m in got] == [b"%d" % i for i in range(20)]
    assert {m.qos for m in got} == {2}
    await sub.disconnect()
    await pub.disconnect()


async def test_retain_user_properties_and_will(broker: Broker) -> None:
    will = Will(
        "st/agent",
        b"offline",
        qos=1,
        retain=True,
        content_type="application/cbor",
        user_properties=(("k", "v"),),
    )
    dying = MqttClient(host="127.0.0.1", port=broker.port, client_id="dying", will=will)
    await dying.connect()
    pub = MqttClient(host="127.0.0.1", port=broker.port)
    await pub.connect()
    await pub.publish(
        "st/kept",
        b"hello",
        1,
        "text/plain",
        retain=True,
        user_properties=[("content-encoding", "deflate")],
        user_property=("a", "b"),
    )
    dying.close()  # no DISCONNECT: the broker publishes the will
    got: list[Message] = []
    sub = MqttClient(host="127.0.0.1", port=broker.port, on_message=got.append)
    await sub.connect()
    await asyncio.sleep(0.2)
    await sub.subscribe([("st/#", 1)])
    await _until(lambda: len(got) == 2)
    by_topic = {m.topic: m for m in got}
    kept = by_topic["st/kept"]
    assert kept.retain and kept.payload == b"hello" and kept.content_type == "text/plain"
    assert kept.user_properties == (("content-encoding", "deflate"), ("a", "b"))
    w = by_topic["st/agent"]
    assert w.retain and w.payload == b"offline" and w.content_type == "application/cbor"
    assert w.user_properties == (("k", "v"),)
    await sub.disconnect()
    await pub.disconnect()


async def test_subscription_identifiers_are_delivered(broker: Broker) -> None:
    got: list[Message] = []
    sub = MqttClient(host="127.0.0.1", port=broker.port, on_message=got.append)
    await sub.connect()
    await sub.subscribe([("s/#", 0), ("s/+", 0)], ids=[1, 2])
    pub = MqttClient(host="127.0.0.1", port=broker.port)
    await pub.connect()
    await pub.publish("s/x", b"1", 1)
    await _until(lambda: sum(len(m.subscription_ids) for m in got) >= 2)
    assert sorted(i for m in got for i in m.subscription_ids) == [1, 2]
    await sub.disconnect()
    await pub.disconnect()


async def test_refused_subscription_is_an_error_naming_the_filter() -> None:
    suback = bytes([0x90, 4, 0, 1, 0, 0x87])  # packet id 1, no properties, Not authorized
    async with _fake_broker(_CONNACK, 64, then=suback) as (port, _):
        c = MqttClient(host="127.0.0.1", port=port)
        await c.connect()
        with pytest.raises(MqttError, match="'secret/#' refused: not authorized"):
            await c.subscribe([("secret/#", 1)])
        c.close()


async def test_paused_reading_delivers_what_was_buffered_on_resume(broker: Broker) -> None:
    got: list[Message] = []
    sub: MqttClient

    def on_message(m: Message) -> None:
        got.append(m)
        if len(got) == 10:
            sub.pause_reading()  # mid-buffer: the rest waits in our buffer

    sub = MqttClient(
        host="127.0.0.1",
        port=broker.port,
        receive_maximum=5000,
        manual_ack=True,
        on_message=on_message,
    )
    await sub.connect()
    await sub.subscribe([("p", 1)])
    pub = MqttClient(host="127.0.0.1", port=broker.port, max_inflight=5000)
    await pub.connect()
    await asyncio.gather(*(pub.publish("p", b"", 1) for _ in range(2000)))
    await asyncio.sleep(0.2)
    assert len(got) == 10 and sub.reading_paused
    sub.resume_reading()
    await _until(lambda: len(got) == 2000)
    assert len(got) == 2000
    await sub.disconnect()
    await pub.disconnect()


# -- a fake broker: exact bytes, split anywhere ---------------------------------------

_CONNACK = bytes([0x20, 3, 0, 0, 0])


def _publish(
    topic: bytes, payload: bytes, qos: int = 0, mid: int = 0, props: bytes = b"\x00"
) -> bytes:
    body = (
        struct.pack(">H", len(topic))
        + topic
        + (struct.pack(">H", mid) if qos else b"")
        + props
        + payload
    )
    rl, n = b"", len(body)
    while True:
        b, n = n & 0x7F, n >> 7
        rl += bytes([b | (0x80 if n else 0)])
        if not n:
            break
    return bytes([0x30 | (qos << 1)]) + rl + body


@contextlib.asynccontextmanager
async def _fake_broker(
    script: bytes, chunk: int, then: bytes = b""
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """Answers a CONNECT with `script`, written `chunk` bytes at a time, and the client's
    next packet with `then`; records what the client sent."""
    seen: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await serve(r, w)
        finally:
            w.close()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(await r.read(65536))
        for i in range(0, len(script), chunk):
            w.write(script[i : i + chunk])
            await w.drain()
            await asyncio.sleep(0)
        with contextlib.suppress(Exception):
            while data := await r.read(65536):
                seen.append(data)
                if then and len(seen) == 2:
                    w.write(then)

    async with serving(handle) as port:
        yield port, seen


async def test_any_split_of_the_stream_gives_the_same_messages() -> None:
    # Random streams (seeded: the same every run) cut into random chunk sizes, 1 byte
    # upwards: packet boundaries, remaining-length bytes and headers fall anywhere.
    for seed in range(20):
        rng = random.Random(seed)
        msgs = [
            (
                rng.randbytes(rng.randint(1, 30)),
                rng.randbytes(rng.choice((0, 5, 130, 300))),
                rng.randint(0, 1),
            )
            for _ in range(rng.randint(1, 40))
        ]
        chunk = rng.choice((1, 2, 3, 7, 64, 1000))
        stream = _CONNACK + b"".join(_publish(t, p, q, i + 1) for i, (t, p, q) in enumerate(msgs))
        got: list[Message] = []
        async with _fake_broker(stream, chunk) as (port, _):
            c = MqttClient(host="127.0.0.1", port=port, manual_ack=True, on_message=got.append)
            await c.connect()
            await _until(lambda: len(got) == len(msgs))  # noqa: B023
            c.close()
        assert [(m.topic_bytes, m.payload, m.qos, m.mid) for m in got] == [
            (t, p, q, (i + 1) if q else 0) for i, (t, p, q) in enumerate(msgs)
        ], (seed, chunk)


@pytest.mark.parametrize(
    "garbage",
    [
        bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # remaining length of 5 bytes
        bytes([0x30, 2, 0, 9]),  # topic longer than the packet
        bytes([0xF0, 0]),  # packet type 15 (AUTH) was never asked for
        _publish(b"t", b"x", props=b"\x02\x7f\x00"),  # unknown property
        _publish(b"t", b"x", props=b"\x03\x23\x00\x01"),  # topic alias we never allowed
    ],
)
async def test_a_malformed_packet_closes_the_connection_with_a_reason(garbage: bytes) -> None:
    got: list[Message] = []
    async with _fake_broker(_CONNACK + _publish(b"ok", b"1") + garbage, 4096) as (port, _):
        c = MqttClient(host="127.0.0.1", port=port, on_message=got.append)
        await c.connect()
        why = await asyncio.wait_for(c.wait_disconnected(), 5)
        assert "protocol error" in why or "malformed" in why or "closed" in why, why
        assert not c.connected
        c.close()
    assert [m.payload for m in got] == [b"1"]


async def test_auto_ack_batches_pubacks_of_one_read() -> None:
    stream = _CONNACK + b"".join(_publish(b"t", b"v", 1, mid) for mid in range(1, 101))
    async with _fake_broker(stream, len(stream)) as (port, seen):
        c = MqttClient(host="127.0.0.1", port=port, on_message=lambda m: None)
        await c.connect()
        await _until(lambda: sum(len(s) for s in seen[1:]) >= 400)
        acks = b"".join(seen[1:])
        assert acks == b"".join(bytes([0x40, 2, 0, mid]) for mid in range(1, 101))
        c.close()


async def test_connack_refusal_is_described() -> None:
    async with _fake_broker(bytes([0x20, 3, 0, 0x86, 0]), 64) as (port, _):
        c = MqttClient(host="127.0.0.1", port=port, username="u", password="wrong")
        with pytest.raises(MqttError, match=r"(?i)bad user name or password"):
            await c.connect(timeout=5)
        c.close()


async def test_connect_packet_carries_credentials_will_and_limits() -> None:
    async with _fake_broker(_CONNACK, 64) as (port, seen):
        c = MqttClient(
            host="127.0.0.1",
            port=port,
            client_id="cid",
            clean_start=False,
            session_expiry=3600,
            receive_maximum=8192,
            username="user",
            password="pw",
            keepalive=20,
            will=Will("w/t", b"bye", qos=1, retain=True),
        )
        await c.connect()
        c.close()
    pkt = seen[0]
    assert pkt[0] == 0x10
    body = pkt[2:]
    assert body[:7] == b"\x00\x04MQTT\x05"
    flags = body[7]
    assert (
        flags == 0x80 | 0x40 | 0x20 | 0x08 | 0x04
    )  # user, password, will retain, will QoS 1, will
    assert body[8:10] == b"\x00\x14"  # keep alive 20
    assert (
        b"\x11\x00\x00\x0e\x10" in body and b"\x21\x20\x00" in body
    )  # session expiry, receive max
    assert b"\x00\x03cid" in body and b"\x00\x03w/t" in body and b"\x00\x03bye" in body
    assert body.endswith(b"\x00\x04user\x00\x02pw")

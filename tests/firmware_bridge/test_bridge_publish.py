"""The bridge's Publisher against a scripted broker: what a lost connection leaves
unacknowledged is sent again after the reconnect, first and in order, and only that."""

from __future__ import annotations

import asyncio

from firmware_bridge.config import PublishSection
from firmware_bridge.publish import JSON, Publisher
from tests.helpers.fake_broker import FakeBroker


async def _until(cond: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_unacknowledged_messages_are_resent_after_a_reconnect_and_only_they() -> None:
    first_connection = True

    def answer(mid: int, payload: bytes) -> int | None:
        # the first connection acknowledges messages 0-2 and 5, nothing else
        return 0 if not first_connection or payload in (b"0", b"1", b"2", b"5") else None

    async with FakeBroker(answer=answer) as fake:
        cfg = PublishSection(port=fake.port, reconnect_min=0.01, reconnect_max=0.05)
        async with Publisher(cfg) as pub:
            await _until(pub.connected.is_set)
            for i in range(8):
                pub.submit(f"sensors/b{i % 2}", b"%d" % i, JSON)
            await _until(lambda: len(fake.published) == 8)
            assert pub.outstanding == 8 and pub.queued == 0
            first_connection = False
            pub.submit("sensors/b0", b"8", JSON)  # queued behind the resent ones
            fake.close()  # after the acknowledgements of 0-2 and 5
            await _until(lambda: pub.published == 9)
            assert pub.connects == 2 and pub.outstanding == 0 and pub.queued == 0
    again = [p.payload for p in fake.published[8:]]
    assert again == [b"3", b"4", b"6", b"7", b"8"]
    assert [p.topic for p in fake.published[8:]] == [
        "sensors/b1",
        "sensors/b0",
        "sensors/b0",
        "sensors/b1",
        "sensors/b0",
    ]


async def test_a_refused_message_is_counted_and_dropped_not_sent_again() -> None:
    # the broker refuses one topic (0x87, not authorized, as an ACL denial answers) and
    # a topic over 65,535 bytes cannot be encoded at all: both are dropped and counted,
    # the others published; a marker sent last proves nothing was retried (retries
    # would go out before it: what is sent again goes to the front of the queue)
    async with FakeBroker(answer=lambda mid, payload: 0x87 if payload == b"bad" else 0) as fake:
        cfg = PublishSection(port=fake.port, reconnect_min=0.01, reconnect_max=0.05)
        async with Publisher(cfg) as pub:
            await _until(pub.connected.is_set)
            pub.submit("sensors/a", b"1", JSON)
            pub.submit("sensors/denied", b"bad", JSON)
            pub.submit("s" * 70_000, b"long", JSON)
            pub.submit("sensors/a", b"2", JSON)
            await _until(lambda: pub.published == 2 and pub.refused == 2)
            pub.submit("sensors/a", b"marker", JSON)
            await _until(lambda: pub.published == 3)
            assert pub.queued == 0 and pub.outstanding == 0 and pub.connects == 1
    assert [p.payload for p in fake.published] == [b"1", b"bad", b"2", b"marker"]

"""read_nap: after a small read the socket rests, so a trickle of messages comes in a
few large reads (the local subscription's CPU at live rates: bench/README.md). What
must hold whatever the timing: nothing is lost or reordered, the rest ends, and
backpressure's own pause is not undone by the end of a rest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from edge_agent.mqtt import Message, MqttClient
from tests.helpers.fake_broker import serving
from tests.test_mqtt import _CONNACK, _publish


class _Counting(MqttClient):
    """Counts the reads that reach the client (one per data_received)."""

    reads = 0

    def _data_received(self, data: bytes) -> None:
        self.reads += 1
        super()._data_received(data)


@contextlib.asynccontextmanager
async def _broker() -> AsyncIterator[tuple[int, asyncio.Queue[bytes]]]:
    """Answers CONNECT with CONNACK, then writes whatever the test puts in the queue,
    one write each."""
    out: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await r.read(65536)
            w.write(_CONNACK)
            while True:
                w.write(await out.get())
                await w.drain()
        finally:
            w.close()

    async with serving(handle) as port:
        yield port, out


async def _wait(cond: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_a_trickle_arrives_complete_and_in_order_in_few_reads() -> None:
    got: list[bytes] = []

    def on_message(m: Message) -> None:
        got.append(bytes(m.payload))

    async with _broker() as (port, out):
        c = _Counting(host="127.0.0.1", port=port, on_message=on_message, read_nap=0.5)
        await c.connect()
        reads_at_connect = c.reads
        out.put_nowait(_publish(b"t", b"0"))
        await _wait(lambda: got)
        for i in range(1, 40):  # 39 writes, 2 ms apart: all within the 0.5 s rest
            out.put_nowait(_publish(b"t", str(i).encode()))
            await asyncio.sleep(0.002)
        await _wait(lambda: len(got) == 40)
        assert got == [str(i).encode() for i in range(40)]
        # the first message, then the 39 that came during the rest (a slow machine may
        # split them once more); without the rest, ~39 reads
        assert c.reads - reads_at_connect <= 3, c.reads - reads_at_connect
        c.close()


async def test_without_a_nap_each_spaced_write_is_its_own_read() -> None:
    """The baseline the test above is measured against (read_nap=0 is the default)."""
    got: list[bytes] = []
    async with _broker() as (port, out):
        c = _Counting(host="127.0.0.1", port=port, on_message=lambda m: got.append(b""))
        await c.connect()
        before = c.reads
        for i in range(10):
            out.put_nowait(_publish(b"t", str(i).encode()))
            await _wait(lambda i=i: len(got) == i + 1)  # read before the next is written
        assert c.reads - before == 10
        c.close()


async def test_the_end_of_a_rest_does_not_undo_backpressure() -> None:
    got: list[bytes] = []
    async with _broker() as (port, out):
        c = MqttClient(
            host="127.0.0.1",
            port=port,
            on_message=lambda m: got.append(bytes(m.payload)),
            read_nap=0.05,
        )
        await c.connect()
        out.put_nowait(_publish(b"t", b"a"))
        await _wait(lambda: got == [b"a"])  # a small read: the socket rests 50 ms
        c.pause_reading()  # backpressure, during the rest
        out.put_nowait(_publish(b"t", b"b"))
        await asyncio.sleep(0.3)  # the rest ended long ago
        assert got == [b"a"]
        transport = c._transport  # the socket itself stays unread: the broker holds "b"
        assert transport is not None and not transport.is_reading()
        c.resume_reading()
        await _wait(lambda: got == [b"a", b"b"])
        c.close()

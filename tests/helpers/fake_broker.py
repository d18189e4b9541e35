"""A scripted MQTT 5 broker for the client's edge cases: it answers CONNECT with
CONNACK, records every packet the client sends (raw bytes too), and answers each
QoS 1 PUBLISH as `answer(mid, payload)` says: a PUBACK reason code, or None for
no answer. `drop()` cuts the current connection (as a broker restart would), `close()` closes
it after what was written (the answers so far arrive first)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handle: Handler) -> AsyncIterator[int]:
    """Serve `handle` on a free loopback port, which it yields; on exit, stop
    listening, cancel the handlers still running and wait for them."""
    tasks: list[asyncio.Task[None]] = []

    async def tracked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        await handle(r, w)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@dataclass
class Published:
    topic: str
    mid: int
    payload: bytes
    raw: bytes  # the whole packet, as the client wrote it


@dataclass
class FakeBroker:
    answer: Callable[[int, bytes], int | None] = lambda mid, payload: 0
    port: int = 0
    connects: int = 0
    published: list[Published] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def drop(self) -> None:
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    def close(self) -> None:
        for w in self._writers:
            w.close()
        self._writers.clear()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        self._writers.append(w)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                first = (await r.readexactly(1))[0]
                n = shift = 0
                header = bytes([first])
                while True:
                    b = (await r.readexactly(1))[0]
                    header += bytes([b])
                    n |= (b & 0x7F) << shift
                    shift += 7
                    if b < 0x80:
                        break
                body = await r.readexactly(n)
                kind = first >> 4
                if kind == 1:  # CONNECT
                    self.connects += 1
                    w.write(bytes([0x20, 3, 0, 0, 0]))
                elif kind == 3:  # PUBLISH
                    qos = (first >> 1) & 3
                    tl = int.from_bytes(body[:2], "big")
                    topic = body[2 : 2 + tl].decode()
                    i = 2 + tl
                    mid = int.from_bytes(body[i : i + 2], "big") if qos else 0
                    i += 2 if qos else 0
                    plen, k, shift = 0, i, 0
                    while True:  # the property length, a variable byte integer
                        b = body[k]
                        k += 1
                        plen |= (b & 0x7F) << shift
                        shift += 7
                        if b < 0x80:
                            break
                    payload = body[k + plen :]
                    self.published.append(Published(topic, mid, payload, header + body))
                    code = self.answer(mid, payload) if qos else None
                    if code is not None:
                        w.write(bytes([0x40, 3]) + mid.to_bytes(2, "big") + bytes([code]))
                elif kind == 12:  # PINGREQ
                    w.write(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    break
                elif kind == 10:  # UNSUBSCRIBE: UNSUBACK with one Success per filter
                    w.write(bytes([0xB0, 4]) + body[:2] + b"\x00\x00")
        w.close()

"""A small TCP proxy on loopback with a settable bandwidth limit and added latency.

    with TcpProxy(upstream_broker.port) as proxy:     # the agent connects to proxy.port
        proxy.set_rate(20 * 1024)                      # bytes/s, each direction
        proxy.set_latency(0.05)                        # seconds added to each chunk
        proxy.set_rate(None)                           # released

It stands in for a congested uplink (a GSM modem, a saturated Wi-Fi). It runs its
own asyncio loop in a daemon thread, so synchronous tests and benches use it
directly; the setters are safe from any thread and act on open connections at once.

How it limits: each direction reads at most one small chunk, pays for it from a
token bucket (burst: 50 ms worth, so the rate holds on short intervals too), and
only then reads the next one. What the proxy has not read stays in the kernel's
socket buffers and, once they fill, in the sender's: exactly where a real slow
link makes data queue, so the sender sees its acknowledgements come late. Latency
delays each chunk by a fixed time after it was paid for (a delay line), so it adds
to the round trip without reducing the bandwidth.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque

__all__ = ["TcpProxy"]

_CHUNK = 16384  # bytes read at once when unlimited
_BURST_S = 0.05  # a limited direction may run ahead of its rate by this much time
_LINE_CHUNKS = 256  # chunks held in a delay line at most


class TcpProxy:
    """Listens on 127.0.0.1:`port` (free by default) and forwards to `target_host:target_port`."""

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        *,
        port: int = 0,
        rate: float | None = None,
        latency: float = 0.0,
    ) -> None:
        self.target = (target_host, target_port)
        self._rate = rate  # bytes/s per direction; None = unlimited
        self._latency = latency
        self._port = port
        self.port = 0
        self.bytes_up = 0  # client -> target, forwarded
        self.bytes_down = 0  # target -> client, forwarded
        self.connections = 0  # accepted so far
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._changed: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # -- control (any thread) -------------------------------------------------

    def set_rate(self, bytes_per_s: float | None) -> None:
        """Bandwidth per direction in bytes/s; None removes the limit."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("rate must be positive (None for unlimited)")
        self._rate = bytes_per_s
        self._poke()

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = seconds
        self._poke()

    @property
    def rate(self) -> float | None:
        return self._rate

    def _poke(self) -> None:
        loop, ev = self._loop, self._changed
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(ev.set)

    def drop_connections(self) -> None:
        """Close every open connection (both sides), as a link that goes away would."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._close_all(), loop)
            fut.result(5.0)

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(5.0):
            raise RuntimeError("tcp proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"tcp proxy failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._stop_event.set)
        thread.join(5.0)
        self._thread = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        self._changed = asyncio.Event()
        self._stop_event = asyncio.Event()
        try:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)
        except OSError as exc:
            self._error = exc
            self._started.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        await self._stop_event.wait()
        self._server.close()
        await self._close_all()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _close_all(self) -> None:
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    # -- one connection ----------------------------------------------------------

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        for w in (c_writer, t_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._writers.add(w)
        up = asyncio.ensure_future(self._pump(c_reader, t_writer, True))
        down = asyncio.ensure_future(self._pump(t_reader, c_writer, False))
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # One side closed: close both, as a real connection would end.
            for task in (up, down):
                task.cancel()
            for w in (c_writer, t_writer):
                self._writers.discard(w)
                w.close()
            for task in (up, down):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upward: bool
    ) -> None:
        tokens, at = 0.0, time.monotonic()
        line: deque[tuple[float, bytes]] = deque()  # the delay line: (due, data)
        drainer: asyncio.Task[None] | None = None
        assert self._changed is not None
        try:
            while True:
                rate = self._rate
                # Limited: small reads, so one read never buys more than the burst.
                size = _CHUNK if rate is None else max(64, min(_CHUNK, int(rate * _BURST_S)))
                data = await reader.read(size)
                if not data:
                    break
                n = len(data)
                while (rate := self._rate) is not None:
                    now = time.monotonic()
                    tokens = min(rate * _BURST_S, tokens + (now - at) * rate)
                    at = now
                    if tokens >= n or tokens >= rate * _BURST_S:
                        tokens -= n  # a chunk larger than the burst drives the bucket negative
                        break
                    wait = (min(n, rate * _BURST_S) - tokens) / rate
                    self._changed.clear()
                    # A new rate (set_rate) ends the wait early and is applied at once.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                else:
                    tokens, at = 0.0, time.monotonic()
                if upward:
                    self.bytes_up += n
                else:
                    self.bytes_down += n
                if self._latency <= 0 and not line:
                    writer.write(data)
                    await writer.drain()
                    continue
                line.append((time.monotonic() + self._latency, data))
                if drainer is None or drainer.done():
                    drainer = asyncio.ensure_future(self._deliver(line, writer))
                while len(line) > _LINE_CHUNKS and not drainer.done():
                    await asyncio.sleep(
                        0.002
                    )  # the delay line is bounded too: back-pressure the reader
            if drainer is not None:
                await drainer
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            if drainer is not None:
                drainer.cancel()

    @staticmethod
    async def _deliver(line: deque[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        while line:
            due, data = line[0]
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            line.popleft()
            writer.write(data)
            await writer.drain()

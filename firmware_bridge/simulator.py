"""A simulated microcontroller that writes frames into a pseudo-terminal.

    board = SimulatedBoard(id="sim1", rate=20, noise=0.02, dropout=0.01)
    path = board.open()              # the slave device, e.g. /dev/pts/7
    task = asyncio.create_task(board.run(duration=60))   # or board.start_thread()
    ...
    board.close()                    # "unplug"; board.open() again to "replug"

It behaves like a real board on a USB cable: readings random-walk, the uptime
clock drifts by drift_ppm, frames are occasionally lost on the wire (dropout: a seq
gap the bridge must count), and line noise (noise: a burst of binary garbage or a
flipped byte that breaks the checksum) hits some frames. When nobody reads the pty,
writes that do not fit are lost (counted in `overflow`), as a UART would lose them,
unless blocking=True (benchmarks), where the writer waits for the reader.

With `link`, a symlink at that path follows the current pty across replugs, like a
udev /dev/serial/by-id/ link, so a bridge config can name a stable path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import threading
import time
from typing import Any

from firmware_bridge.frames import encode_binary_frame, encode_text_frame
from firmware_bridge.transports import configure_tty

__all__ = ["SimulatedBoard"]


class SimulatedBoard:
    """One board; frames go to a pty pair it owns (or to any fd/UDP address given)."""

    def __init__(
        self,
        id: str = "sim1",
        *,
        rate: float = 10.0,
        format: str = "json",  # "json", "kv" or "cobs_cbor"
        checksum: bool = True,
        clock: str = "uptime_ms",  # "uptime_ms", "board" (epoch ts) or "none"
        noise: float = 0.0,  # chance per frame of line noise
        dropout: float = 0.0,  # chance per frame of being lost on the wire
        drift_ppm: float = 0.0,  # board crystal error
        seed: int | None = None,
        blocking: bool = False,
        link: str | None = None,
        fields: tuple[str, ...] = ("temp", "hum"),
    ) -> None:
        if format not in ("json", "kv", "cobs_cbor"):
            raise ValueError(f"unknown frame format {format!r}")
        if clock not in ("uptime_ms", "board", "none"):
            raise ValueError(f"unknown clock {clock!r}")
        self.id = id
        self.rate = rate
        self.format = format
        self.checksum = checksum
        self.clock = clock
        self.noise = noise
        self.dropout = dropout
        self.drift = 1.0 + drift_ppm * 1e-6
        self.blocking = blocking
        self.link = link
        self.fields = fields
        self.rng = random.Random(seed)
        self.values = {f: 20.0 + 5 * i for i, f in enumerate(fields)}
        self.seq = 0
        self.sent = 0  # frames written whole
        self.lost = 0  # frames dropped on purpose (dropout)
        self.noisy = 0  # frames or bursts of noise written
        self.overflow = 0  # writes that did not fit the pty buffer
        self.master: int | None = None
        self.slave: int | None = None
        self.path: str | None = None
        self._booted = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- the device --------------------------------------------------------------

    def open(self) -> str:
        """Plug in: open a fresh pty pair (raw mode) and return the slave's path.

        The board reboots: its seq restarts at 0 and its uptime at 0.
        """
        self.close()
        master, slave = os.openpty()
        configure_tty(slave, None)
        os.set_blocking(master, self.blocking)
        self.master, self.slave = master, slave
        self.path = os.ttyname(slave)
        self.seq = 0
        self._booted = time.monotonic()
        if self.link:
            tmp = f"{self.link}.tmp{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.path, tmp)
            os.replace(tmp, self.link)  # atomic: a reader never sees no link
        return self.path

    def close(self) -> None:
        """Unplug: the reader's next read fails with EIO."""
        with self._lock:
            for fd in (self.master, self.slave):
                if fd is not None:
                    os.close(fd)
            self.master = self.slave = None

    def __enter__(self) -> SimulatedBoard:
        if self.master is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)

    # ---- frames ------------------------------------------------------------------

    def reading(self) -> dict[str, Any]:
        """The next reading as the board's firmware would build it (advances seq)."""
        obj: dict[str, Any] = {"id": self.id, "seq": self.seq}
        self.seq += 1
        if self.clock == "uptime_ms":
            obj["uptime_ms"] = int((time.monotonic() - self._booted) * self.drift * 1000)
        elif self.clock == "board":
            obj["ts"] = round(time.time(), 3)
        for f, v in self.values.items():
            v += self.rng.gauss(0.0, 0.05)
            self.values[f] = v
            obj[f] = round(v, 2)
        return obj

    def encode(self, obj: dict[str, Any]) -> bytes:
        if self.format == "cobs_cbor":
            return encode_binary_frame(obj)
        if self.format == "json":
            body = json.dumps(obj, separators=(",", ":"))
        else:
            body = " ".join(f"{k}={v}" for k, v in obj.items())
        return encode_text_frame(body, self.checksum)

    def next_bytes(self) -> bytes:
        """Bytes for the next frame slot, with dropout and noise applied (may be b"")."""
        frame = self.encode(self.reading())
        rng = self.rng
        if self.dropout and rng.random() < self.dropout:
            self.lost += 1
            return b""
        if self.noise and rng.random() < self.noise:
            self.noisy += 1
            if rng.random() < 0.5:  # a burst of garbage on the line, then the frame
                junk = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(4, 40)))
                delim = b"\x00" if self.format == "cobs_cbor" else b"\n"
                return junk.replace(delim, b"\x7f") + delim + frame
            i = rng.randrange(0, len(frame) - 1)  # a flipped bit inside the frame
            return frame[:i] + bytes([frame[i] ^ 0x10]) + frame[i + 1 :]
        return frame

    def write(self, data: bytes) -> int:
        """Write to the master side; return bytes written (short when the buffer is full)."""
        with self._lock:
            if self.master is None or not data:
                return 0
            view = memoryview(data)
            done = 0
            while done < len(data):
                try:
                    done += os.write(self.master, view[done:])
                except BlockingIOError:
                    self.overflow += 1
                    break
            return done

    def send(self, n: int = 1) -> None:
        """Write n frame slots now."""
        for _ in range(n):
            data = self.next_bytes()
            if data and self.write(data) == len(data):
                self.sent += 1

    # ---- pacing ------------------------------------------------------------------

    async def run(self, count: int | None = None, duration: float | None = None) -> None:
        """Write frames at `rate` from an asyncio task until count/duration or cancel."""
        start = time.monotonic()
        i = 0
        while (count is None or i < count) and (
            duration is None or time.monotonic() - start < duration
        ):
            due = start + i / self.rate if self.rate > 0 else 0.0
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.send()
            i += 1

    def start_thread(
        self, count: int | None = None, duration: float | None = None
    ) -> threading.Thread:
        """Write frames at `rate` from a daemon thread; stop() ends it."""
        self._stop.clear()

        def loop() -> None:
            start = time.monotonic()
            i = 0
            while not self._stop.is_set() and (count is None or i < count):
                if duration is not None and time.monotonic() - start >= duration:
                    break
                if self.rate > 0:
                    delay = start + i / self.rate - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                self.send()
                i += 1

        self._thread = threading.Thread(target=loop, name=f"sim-{self.id}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def send_udp(self, address: tuple[str, int], n: int = 1) -> None:
        """Send n frame slots as datagrams (a board on Wi-Fi)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(n):
                data = self.next_bytes()
                if data:
                    s.sendto(data, address)
                    self.sent += 1

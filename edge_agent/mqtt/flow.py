"""The read side's flow control of a Connection: backpressure pauses, and naps.

Backpressure: the caller stops reading (`pause_reading`) while it cannot take more;
the broker holds what we do not read. A nap: after a small read the socket rests
for `read_nap` seconds, so a trickle of messages comes in a few large reads instead
of one read, one select() and one loop turn every couple of messages. At 5,000
readings/s that cut the local socket's reads from ~2,000/s to ~200/s and the agent's
CPU by ~40 % (bench/README.md, "Read naps"). Large reads (a backlog, an overload)
never nap: the socket is read as fast as the loop turns.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["NAP_BELOW", "ReadFlow"]

# A read below this many bytes is small: at ~70 bytes a reading, that is below
# ~45,000 readings/s read in 5 ms naps, far above what a trickle brings.
NAP_BELOW = 16 * 1024


class ReadFlow:
    """Mixed into Connection, which owns these attributes."""

    _transport: asyncio.Transport | None
    _loop: asyncio.AbstractEventLoop | None
    _buf: bytes
    _parse_handle: asyncio.Handle | None
    _paused: bool  # by backpressure
    _napping: bool
    _read_nap: float

    def _parse_later(self) -> None:
        raise NotImplementedError  # Connection's

    def pause_reading(self) -> None:
        """Stop reading the socket (backpressure): the broker holds what we do not read."""
        if self._transport is not None and not self._paused:
            self._paused = True
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()
            if self._buf and self._parse_handle is None and self._loop is not None:
                # Bytes read before the pause wait in our buffer; select() cannot see them.
                self._parse_handle = self._loop.call_soon(self._parse_later)

    @property
    def reading_paused(self) -> bool:
        return self._paused

    def _nap(self) -> None:
        """After a small read: rest; the kernel buffers what comes meanwhile."""
        t = self._transport
        if t is not None and self._loop is not None:
            self._napping = True
            with contextlib.suppress(RuntimeError):
                t.pause_reading()
            self._loop.call_later(self._read_nap, self._wake)

    def _wake(self) -> None:
        self._napping = False
        t = self._transport
        if t is not None and not self._paused:  # backpressure keeps its own pause
            with contextlib.suppress(RuntimeError):
                t.resume_reading()

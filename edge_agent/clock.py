"""Clocks on devices without a real-time clock (#11.6).

A Raspberry Pi boots with a wrong wall clock (1970, or the time of the last
shutdown saved by fake-hwclock) until NTP steps it. So:

- Intervals run on the monotonic clock: idle timeouts (the ingest clock below),
  retries, rate limits, checkpoints, batch ages for ttl and `oldest_age_s`.
- `max_future_skew` guards against devices whose clocks run ahead; it must not
  throw away good readings only because *our* clock is behind. `WallClock.behind`
  says when the local clock is known to be behind: the kernel reports it
  unsynchronised (adjtimex: TIME_ERROR) *and* it reads earlier than a time this
  agent already saw (its state database's last write, or this release's floor).
  While that holds, the future-skew check is not applied (readings are taken, not
  acknowledged and then lost); a clock that is merely unsynchronised but plausible
  keeps the check, as SPEC 2 says.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["RELEASE_FLOOR", "IngestClock", "WallClock", "kernel_clock_unsynchronised"]

log = logging.getLogger("edge_agent")

RELEASE_FLOOR = 1_767_225_600.0  # 2026-01-01T00:00:00Z: no correct clock reads earlier
_TIME_ERROR = 5  # adjtimex(2): "the clock is not synchronized"
_libc: ctypes.CDLL | None = None


def kernel_clock_unsynchronised() -> bool:
    """adjtimex(2) with modes = 0 (read only, no privilege): TIME_ERROR = unsynchronised."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex (~208 bytes), modes = 0
        return int(_libc.adjtimex(buf)) == _TIME_ERROR
    except (OSError, AttributeError):
        return False  # no adjtimex here: nothing is known, keep the SPEC's check


class WallClock:
    """Whether the wall clock is known to be behind (see the module doc)."""

    def __init__(
        self,
        floor: float = RELEASE_FLOOR,
        *,
        wall: Callable[[], float] | None = None,
        unsynchronised: Callable[[], bool] | None = None,
        recheck: float = 5.0,
    ) -> None:
        self.floor = floor
        self._wall = wall or (lambda: time.time())
        self._unsynchronised = unsynchronised or kernel_clock_unsynchronised
        self._recheck = recheck
        self._checked = -1e18
        self._behind = False

    def note_seen(self, path: Path) -> None:
        """A file this agent wrote before: its mtime is a wall time already seen."""
        with contextlib.suppress(OSError):
            self.floor = max(self.floor, os.stat(path).st_mtime)

    def behind(self) -> bool:
        """Rechecked at most every `recheck` seconds (monotonic)."""
        now = time.monotonic()
        if now - self._checked >= self._recheck:
            self._checked = now
            behind = self._wall() < self.floor and self._unsynchronised()
            if behind != self._behind:
                if behind:
                    log.warning(
                        "the wall clock is unsynchronised and behind %s: max_future_skew is not "
                        "applied until it is set",
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.floor)),
                    )
                else:
                    log.info("the wall clock is set: max_future_skew applies again")
            self._behind = behind
        return self._behind


class IngestClock:
    """The clock idle timeouts run on: monotonic, in wall-clock units from the start,
    less the time ingest stood still (`stall`). A wall-clock step does not move it."""

    __slots__ = ("_offset", "stalled")

    def __init__(self, wall: float | None = None) -> None:
        self._offset = (time.time() if wall is None else wall) - time.monotonic()
        self.stalled = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self._offset - self.stalled

"""Idle firing: the windows of keys silent for `idle_timeout` fire on the ingest clock.

A timer over the ingest session, every 250 ms: while the session cannot hear from
the devices (local broker away, socket paused, loop overloaded) the time counts as
a stall of the ingest clock; otherwise the engines fire what went idle.
"""

from __future__ import annotations

import asyncio
import time

from edge_agent.ingest_session import IngestSession
from edge_agent.windows.engine import Emitted

__all__ = ["IdleTimer"]


class IdleTimer:
    """`run()` is the agent's "idle" task."""

    def __init__(self, session: IngestSession, tick: float = 0.25) -> None:
        self._session = session
        self._tick = tick
        self._emitted = Emitted()

    async def run(self) -> None:
        """Fire the windows of keys silent for idle_timeout, on the ingest clock: only
        while the agent could hear from them (while the local broker is away, the socket
        paused or the loop overloaded, readings wait at the broker, and firing their
        windows as idle would make them late drops). The ingest clock (IngestClock) is
        monotonic, in wall-clock units from the start, less every such stall. Each tick
        also decides whether max_future_skew applies (WallClock.behind)."""
        s, tick, emitted = self._session, self._tick, self._emitted
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            local = s.local
            stalled = not s.conn.connected or local is None or local.reading_paused or s.overloaded
            if stalled:
                s.ingest_clock.stalled += now - last
                last = now
                continue
            # A tick that comes late means the loop was busy (a big checkpoint, a burst):
            # no reading was processed meanwhile, so that time is a stall too.
            s.ingest_clock.stalled += max(0.0, now - last - 2 * tick)
            last = now
            relaxed = s.wall_clock.behind()
            for p in s.pipelines:
                p.decoder.relax_future_skew(relaxed)
            clock = s.ingest_clock()
            for p in s.pipelines:
                p.engine.advance_idle(clock, emitted)
            s.batcher.take(emitted)

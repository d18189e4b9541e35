"""Tumbling and sliding windows over panes (SPEC 3), exact about time.

Readings go into panes (grid.py), never into each of the size/slide windows that
cover them, so the per-reading cost does not depend on size/slide. Windows are
assembled from their panes' partials when they fire.

Per key state: newest event time, watermark, last wall time, ``kdone`` (highest
window index already scanned for firing), ``chk`` (the watermark at which a scan is next needed:
the next window end holding readings, or the next pane/revision to forget), a
cache of the current pane (bounds, partial, end of its first window), the live
panes ``{j: partial}`` and ``fires {k: firings}`` of fired windows still inside
allowed lateness.

Fast path per reading: the reading falls in the cached pane and every window of
that pane is still open -> one generated ``add`` call. Everything else (new pane,
late reading) takes `_slow`.

Memory per key: ~300 bytes of key state plus one partial (~190 bytes, see
aggregates.py) per live pane. Live panes: the panes of still-open windows plus
those within allowed lateness, i.e. about (size + max_out_of_orderness +
allowed_lateness) / pane width, and never more than the panes that got readings.
A pane is forgotten once every window covering it is past allowed lateness
(watermark >= end + allowed_lateness); a window's firing count is kept only until then.
"""

from __future__ import annotations

from math import floor, inf
from typing import Any

from edge_agent.windows.aggregates import Partial
from edge_agent.windows.base import Emitted, PipelineSettings, Reading, WindowEngine, _num
from edge_agent.windows.grid import Grid

__all__ = ["TimedEngine"]


class _Key:
    __slots__ = (
        "chk",
        "cur",
        "efirst",
        "fires",
        "hi",
        "kdone",
        "lo",
        "maxts",
        "panes",
        "queued",
        "tidy",
        "wall",
        "wm",
    )

    def __init__(self) -> None:
        self.maxts = -inf
        self.wm = -inf
        self.kdone: Any = -inf  # highest window index already scanned (an int; -inf: none yet)
        self.chk = inf
        self.wall = 0.0
        self.queued = False
        self.tidy = True  # no pane is past allowed lateness (see _scan); a restore may break it
        self.panes: dict[int, Partial] = {}
        self.fires: dict[int, int] = {}
        self._uncache()

    def _uncache(self) -> None:
        self.lo = inf
        self.hi = -inf
        self.cur: Partial | None = None
        self.efirst = -inf


class TimedEngine(WindowEngine):
    """Tumbling (slide = size) and sliding windows."""

    def __init__(self, cfg: PipelineSettings) -> None:
        super().__init__(cfg)
        spec = cfg.spec  # validated: 0 < slide <= size
        self.grid = Grid(spec.size, spec.slide)
        self._ooo = float(cfg.max_out_of_orderness)
        self._lateness = float(cfg.allowed_lateness)
        self._merged = self.aggs.merged
        self._new = self.aggs.fresh

    # -- per reading ---------------------------------------------------------------

    def process(self, readings: list[Reading], wall: float, out: Emitted) -> None:
        keys = self._keys
        dirty_add = self._dirty.add
        add = self.aggs.add
        ooo = self._ooo
        for key, ts, v in readings:
            k = keys.get(key)
            if k is None:
                k = keys[key] = _Key()
            k.wall = wall
            if not k.queued:
                self._queue(key, k, wall)
            if k.lo <= ts < k.hi and k.wm < k.efirst:
                add(k.cur, ts, v)  # type: ignore[arg-type]  # set while lo <= ts < hi
            else:
                self._slow(key, k, ts, v, out)
            if ts > k.maxts:
                k.maxts = ts
                w = ts - ooo
                if w > k.wm:
                    k.wm = w
                    if w >= k.chk:
                        self._scan(key, k, out)
            dirty_add(key)
        self.readings_in += len(readings)

    def _slow(self, key: str, k: _Key, ts: float, v: float, out: Emitted) -> None:
        g = self.grid
        m, np_, pw, d = g.m, g.np, g.pw, g.d
        if d == 1:  # g.pane_of(ts), inlined for integral grids
            j = floor(ts / pw)
            while j * pw > ts:
                j -= 1
            while (j + 1) * pw <= ts:
                j += 1
        else:
            j = g.pane_of(ts)
        klo = -((np_ - 1 - j) // m)  # g.first_window(j), inlined: once per pane
        wm = k.wm
        efirst: float = (klo * m + np_) * pw  # g.end(klo)
        if d != 1:
            efirst /= d
        panes = k.panes
        if efirst > wm:  # on time for all its windows
            p = panes.get(j)
            if p is None:
                p = panes[j] = self._new()
                if efirst < k.chk:
                    k.chk = efirst
            self.aggs.add(p, ts, v)
            lo = j * pw  # g.bound(j), g.bound(j + 1)
            if d == 1:
                k.lo, k.hi = lo, lo + pw
            else:
                k.lo, k.hi = lo / d, (lo + pw) / d
            k.cur, k.efirst = p, efirst
            return
        # Some windows of this pane are closed. Nothing with readings has an end in
        # (kdone, wm] (wm < chk), so marking them scanned keeps late firings from repeating.
        lateness = self._lateness
        khi = j // g.m
        kc: Any = g.last_closed(wm)  # not -inf: wm is past a reading
        k.kdone = kc
        takers = [kk for kk in range(klo, min(khi, kc) + 1) if wm < g.end(kk) + lateness]
        open_end = g.end(kc + 1) if kc < khi else None  # first open window of this pane
        if not takers and open_end is None:
            self._late(out, key, ts, v)
            return
        p = panes.get(j)
        if p is None:
            p = panes[j] = self.aggs.new()
            nxt = open_end if open_end is not None else g.end(khi) + lateness
            if nxt < k.chk:
                k.chk = nxt
        self.aggs.add(p, ts, v)
        k.lo, k.hi, k.cur, k.efirst = g.bound(j), g.bound(j + 1), p, efirst
        fires = k.fires
        for kk in takers:  # each accepted late reading re-fires its window at once
            rev = fires.get(kk, 0)
            fires[kk] = rev + 1
            self._fire(out, key, k, kk, rev)

    def _fire(self, out: Emitted, key: str, k: _Key, kk: int, rev: int) -> None:
        g = self.grid
        np_ = g.np
        first = kk * g.m
        start: float = first * g.pw
        end: float = (first + np_) * g.pw
        if g.d != 1:
            start, end = _num(start / g.d), _num(end / g.d)
        panes = k.panes
        if np_ == 1:
            rec = self._record(self.name, key, start, end, rev, panes[first])
        else:
            if np_ <= len(panes):  # dense: look the window's panes up (None: no readings)
                parts: Any = map(panes.get, range(first, first + np_))
            else:  # few live panes in a long window: look from the panes
                parts = [panes[j] for j in sorted(panes) if first <= j < first + np_]
            rec = self._record(self.name, key, start, end, rev, self._merged(parts))
        out.windows.append(rec)
        self.windows_emitted += 1

    # -- watermark moves -----------------------------------------------------------

    def _scan(self, key: str, k: _Key, out: Emitted) -> None:
        """Fire windows with readings whose end passed the watermark; forget old state."""
        g = self.grid
        wm = k.wm
        if k.tidy and not self._lateness:
            # The steady step, without allowed lateness: the watermark passed the end of
            # exactly one more window (kdone + 1). Same outcome as the general path below,
            # which it relies on for: every live pane j has j // m > kdone ("tidy", true
            # after any scan with this lateness), and fires only holds restored counts.
            kb = k.kdone + 1
            m, np_, pw, d = g.m, g.np, g.pw, g.d
            x = (kb * m + np_) * pw
            x2 = x + m * pw
            if d != 1:
                x, x2 = x / d, x2 / d
            if x <= wm < x2:  # end(kb) <= wm < end(kb + 1): last_closed(wm) == kb
                k.kdone = kb
                panes = k.panes
                fires = k.fires
                first = kb * m
                stop = first + np_
                if np_ == 1:
                    p = panes.pop(first, None)  # window kb was its last; past lateness 0
                    if p is not None:
                        start, end = first * pw, stop * pw
                        if d != 1:
                            start, end = _num(start / d), _num(end / d)
                        rev = fires.get(kb, 0) if fires else 0
                        out.windows.append(self._record(self.name, key, start, end, rev, p))
                        self.windows_emitted += 1
                        if fires:
                            self._forget_fires(k)
                else:
                    # the window holds readings: usually its first pane does, else look on
                    for j in (first,) if first in panes else range(first + 1, stop):
                        if j in panes:
                            rev = fires.get(kb, 0) if fires else 0
                            if np_ <= len(panes):  # as _fire
                                start, end = first * pw, stop * pw
                                if d != 1:
                                    start, end = _num(start / d), _num(end / d)
                                p = self._merged(map(panes.get, range(first, stop)))
                                rec = self._record(self.name, key, start, end, rev, p)
                                out.windows.append(rec)
                                self.windows_emitted += 1
                            else:
                                self._fire(out, key, k, kb, rev)
                            break
                    # panes whose last window is kb are past lateness 0; no lower one lives
                    if m == 1:
                        dropped = panes.pop(first, None) is not None
                    else:
                        dropped = False
                        for j in range(first, first + m):
                            if j in panes:
                                del panes[j]
                                dropped = True
                    if dropped and fires:
                        self._forget_fires(k)
                # next check: end(kb + 1) if that window holds readings (then it is
                # also <= every pane's forget time), else the general rule
                first += m
                for j in (first,) if first in panes else range(first + 1, first + np_):
                    if j in panes:
                        # as the general path: the lowest pane's forget time (a float,
                        # end + lateness) when it equals x2, else x2 itself
                        k.chk = x2 + 0.0 if j < first + m else x2
                        break
                else:
                    k.chk = self._next_check(k, kb, wm)
                if k.efirst <= wm:
                    k._uncache()
                return
        k.tidy = True
        panes, fires = k.panes, k.fires
        lateness = self._lateness
        m, np_ = g.m, g.np
        ka = k.kdone  # windows <= ka were handled by earlier scans
        kb = g.last_closed(wm)
        k.kdone = kb
        if kb > ka:
            due: list[int] = []
            if kb - ka <= 4:  # the usual step: the watermark passed one or two window ends
                for kk in range(ka + 1, kb + 1):  # type: ignore[arg-type]  # kb > ka: an int
                    for j in range(kk * m, kk * m + np_):
                        if j in panes:
                            due.append(kk)
                            break
            else:  # a jump: look from the panes instead of every window in between
                found: set[int] = set()
                for j in panes:
                    lo = -((np_ - 1 - j) // m)
                    hi = j // m
                    if lo <= ka:
                        lo = ka + 1
                    if hi > kb:
                        hi = kb  # type: ignore[assignment]
                    if lo <= hi:
                        found.update(range(lo, hi + 1))
                due = sorted(found)
            for kk in due:
                rev = fires.get(kk, 0)
                if lateness and g.end(kk) + lateness > wm:
                    fires[kk] = rev + 1  # kept for revisions while within allowed lateness
                self._fire(out, key, k, kk, rev)
        # Forget panes whose every window is past allowed lateness (end + lateness <= wm,
        # the very test a late reading faces). That holds for a prefix of the panes in
        # index order, so pop the lowest while it does.
        dropped = False
        while panes:
            jmin = min(panes)
            gc_at = g.end(jmin // m) + lateness
            if gc_at > wm:
                break
            del panes[jmin]
            dropped = True
        else:
            gc_at = inf
        if dropped and fires:
            self._forget_fires(k)
        k.chk = self._next_check(k, kb, wm, gc_at)  # type: ignore[arg-type]  # an int once a window closed
        if k.efirst <= wm:
            k._uncache()

    def _forget_fires(self, k: _Key) -> None:
        # A window that fired had readings in a pane it covers; once all its panes
        # are gone it is past allowed lateness, and its firing count can go too.
        fires, panes = k.fires, k.panes
        if panes:
            limit = -((self.grid.np - 1 - min(panes)) // self.grid.m)
            for kk in [kk for kk in fires if kk < limit]:
                del fires[kk]
        else:
            fires.clear()

    def _next_check(self, k: _Key, kb: int, wm: float, gc_at: float | None = None) -> float:
        """The watermark of the next scan: the first window after kb holding readings
        (usually kb + 1) or the lowest pane's forget time (gc_at; None: work it out)."""
        g = self.grid
        panes = k.panes
        m, np_ = g.m, g.np
        if gc_at is None:
            gc_at = g.end(min(panes) // m) + self._lateness if panes else inf
        nxt = None
        if panes:
            first = (kb + 1) * m
            for j in range(first, first + np_):
                if j in panes:
                    nxt = kb + 1
                    break
            else:
                for j in panes:
                    if j // m > kb:
                        lo = -((np_ - 1 - j) // m)
                        c = lo if lo > kb else kb + 1
                        if nxt is None or c < nxt:
                            nxt = c
        if nxt is not None:
            e = g.end(nxt)
            if e < gc_at:
                gc_at = e
        return gc_at

    def _go_idle(self, key: str, k: _Key, out: Emitted) -> None:
        if not k.panes:
            return
        target = self.grid.end(self.grid.last_window(max(k.panes)))
        if target > k.wm:
            k.wm = target
            self._scan(key, k, out)

    # -- checkpoints and figures ---------------------------------------------------

    def _dump_key(self, k: _Key) -> list[Any]:
        dump = self.aggs.dump
        return [
            k.maxts,
            k.wm,
            k.kdone,
            k.chk,
            k.wall,
            [[j, dump(p)] for j, p in k.panes.items()],
            [[kk, n] for kk, n in k.fires.items()],
        ]

    def _load_key(self, data: list[Any]) -> _Key:
        load = self.aggs.load
        k = _Key()
        k.maxts, k.wm, k.kdone, k.chk, k.wall = data[:5]
        k.panes = {j: load(p) for j, p in data[5]}
        k.fires = {kk: n for kk, n in data[6]}
        k.tidy = False  # written under another allowed_lateness, maybe
        return k

    def open_windows(self) -> int:
        return sum(len(k.panes) for k in self._keys.values())

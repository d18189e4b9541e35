"""Session windows (SPEC 3): readings less than `gap` apart form one session.

Per key: newest event time, watermark, last wall time, ``chk`` (watermark of the
next scan) and the sessions sorted by start, each a list::

    [start, newest ts, end = newest + gap, partial, next rev, pending, fired, replaces]

``fired`` says a record with exactly these bounds went out (so a later merge must
list them in ``replaces``); ``next rev`` is 1 + the highest rev emitted for this
session or anything it absorbed; ``replaces`` accumulates the bounds of every fired
session absorbed, directly or through an earlier merge.

Fast path: the reading extends the newest session, which is still open. A reading
that bridges or extends sessions merges them first, then faces the lateness check
with the merged bounds; a late reading past allowed lateness changes nothing.

Forgetting (the memory bound, and the one place this is a rule of ours rather
than SPEC's letter): read literally, a fired session is never safe to forget,
because late readings can chain backwards from a live session (each extends it
without moving its end) until one bridges to any old session. So the oldest
session is forgotten, once it has fired with nothing pending, as soon as

    watermark >= its end + gap + allowed_lateness       (any reading that touches
                                                         it is itself past lateness)
    and, when its right neighbour starts < 2 * gap after its newest reading
    (one reading could bridge the two), watermark >= neighbour's end + allowed_lateness.

A later reading that touches a forgotten session does not merge it. Everything a
device does within allowed lateness (a late reading extending, filling or
bridging recent sessions, also into the open one) is exact. Memory per key:
~250 bytes plus ~250 bytes and one partial per session kept (normally the open
one and those within gap + allowed lateness behind the watermark).
"""

from __future__ import annotations

from bisect import bisect_right
from math import inf
from typing import Any

from edge_agent.windows.base import Emitted, PipelineSettings, Reading, WindowEngine

__all__ = ["SessionEngine"]

MN, MX, END, P, REV, PEND, FIRED, REPL = range(8)


class _Key:
    __slots__ = ("chk", "maxts", "queued", "ss", "wall", "wm")

    def __init__(self) -> None:
        self.maxts = -inf
        self.wm = -inf
        self.chk = inf
        self.wall = 0.0
        self.queued = False
        self.ss: list[list[Any]] = []


class SessionEngine(WindowEngine):
    def __init__(self, cfg: PipelineSettings) -> None:
        super().__init__(cfg)
        self._gap = cfg.spec.gap  # validated: > 0
        self._ooo = float(cfg.max_out_of_orderness)
        self._lateness = float(cfg.allowed_lateness)

    def process(self, readings: list[Reading], wall: float, out: Emitted) -> None:
        keys = self._keys
        dirty_add = self._dirty.add
        add = self.aggs.add
        ooo = self._ooo
        gap = self._gap
        for key, ts, v in readings:
            k = keys.get(key)
            if k is None:
                k = keys[key] = _Key()
            k.wall = wall
            if not k.queued:
                self._queue(key, k, wall)
            ss = k.ss
            if ss and ts >= (s := ss[-1])[0] and ts - s[1] < gap and s[2] > k.wm:
                add(s[3], ts, v)
                if ts > s[1]:
                    s[1] = ts
                    s[2] = ts + gap
                s[5] = True
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
        gap = self._gap
        ss = k.ss
        conn = [i for i, s in enumerate(ss) if ts - s[MX] < gap and s[MN] - ts < gap]
        if conn:
            i0, i1 = conn[0], conn[-1]
            mn = min(ts, ss[i0][MN])
            mx = max(ts, ss[i1][MX])
        else:
            i0 = i1 = -1
            mn = mx = ts
        end = mx + gap
        wm = k.wm
        late = end <= wm
        if late and not wm < end + self._lateness:
            self._late(out, key, ts, v)
            return
        if conn:
            absorbed = ss[i0 : i1 + 1]
            first = absorbed[0]
            if len(absorbed) == 1 and first[MN] == mn and first[END] == end:
                s = first  # the same window (bounds unchanged) takes one more reading
            else:
                p = first[P]
                repl: list[list[float]] = []
                for a in absorbed:
                    if a is not first:
                        self.aggs.combine(p, a[P])
                    if a[REPL]:
                        repl.extend(a[REPL])
                    if a[FIRED]:
                        repl.append([a[MN], a[END]])
                repl = sorted({(a, b): [a, b] for a, b in repl}.values())
                rev = max(a[REV] for a in absorbed)
                s = [mn, mx, end, p, rev, True, False, repl]
                ss[i0 : i1 + 1] = [s]
        else:
            s = [mn, mx, end, self.aggs.new(), 0, True, False, []]
            ss.insert(bisect_right([x[MN] for x in ss], ts), s)
        self.aggs.add(s[P], ts, v)
        s[PEND] = True
        if late:  # accepted within allowed lateness: fires again at once
            self._fire(out, key, s)
            end += gap + self._lateness  # when it can be forgotten
        if end < k.chk:
            k.chk = end

    def _fire(self, out: Emitted, key: str, s: list[Any]) -> None:
        self._emit(out, key, s[MN], s[END], s[REV], s[P], s[REPL])
        s[REV] += 1
        s[PEND] = False
        s[FIRED] = True

    def _scan(self, key: str, k: _Key, out: Emitted) -> None:
        wm = k.wm
        ss = k.ss
        for s in ss:
            if s[PEND] and s[END] <= wm:
                self._fire(out, key, s)
        lateness, gap = self._lateness, self._gap
        chk = inf
        while ss:  # forget from the oldest end (see the module docstring)
            x = ss[0]
            if x[PEND]:
                break
            at = x[END] + gap + lateness
            if len(ss) > 1:
                r = ss[1]
                if r[MN] - x[MX] < 2 * gap:
                    at = max(at, r[END] + lateness)  # a reading could still bridge x to r
            if wm < at:
                chk = at
                break
            del ss[0]
        for s in ss:
            if s[PEND] and s[END] < chk:
                chk = s[END]
        k.chk = chk

    def _go_idle(self, key: str, k: _Key, out: Emitted) -> None:
        target = max((s[END] for s in k.ss if s[PEND]), default=-inf)
        if target > k.wm:
            k.wm = target
            self._scan(key, k, out)

    def _dump_key(self, k: _Key) -> list[Any]:
        dump = self.aggs.dump
        return [
            k.maxts,
            k.wm,
            k.chk,
            k.wall,
            [[s[MN], s[MX], s[END], dump(s[P]), s[REV], s[PEND], s[FIRED], s[REPL]] for s in k.ss],
        ]

    def _load_key(self, data: list[Any]) -> _Key:
        load = self.aggs.load
        k = _Key()
        k.maxts, k.wm, k.chk, k.wall = data[:4]
        k.ss = [[*s[:3], load(s[3]), *s[4:]] for s in data[4]]
        return k

    def open_windows(self) -> int:
        return sum(len(k.ss) for k in self._keys.values())

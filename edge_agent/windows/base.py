"""The window engine's base: SPEC 3 for one pipeline, per key, in arrival order.

``WindowEngine(cfg)`` returns the implementation for ``cfg.spec``, the pipeline's
validated window spec (spec.py: tumbling/sliding -> timed.py, session -> session.py,
count and none -> counting.py). All share this base: counters, idle tracking,
dirty-key checkpointing. This module imports no implementation and no config: the
spec names the engine type, so the implementations can build on this base.

Idle tracking costs one attribute store per reading: a key is pushed on a heap
(deadline = last wall + idle_timeout) only when it is not already queued; stale
heap entries are re-pushed when they surface. Keys found idle in one
`advance_idle` call are handled in (last wall, key) order so the output order does
not depend on the heap's history (a restored engine behaves identically).
Wall times are expected to be epoch seconds (they are checkpointed with the key).

Checkpoints: `take_dirty` serialises (marshal, format version 4, of plain lists
of numbers and bytes) every key touched since the last call; `None` means the
key's state is gone (after `flush_all`). With many keys a checkpoint rewrites
most of them, so this is per-key work several times a second: marshal costs
~0.6 us a key state here against ~3-15 us for cbor2 6 (whose cost is per nested
list). `restore` still reads the CBOR states written before (an array's first
byte, 0x80-0x9f, is never the first byte of a marshalled list).
"""

from __future__ import annotations

import hashlib
import heapq
import marshal
from collections.abc import Iterable
from typing import Any, Protocol

import cbor2

from edge_agent.windows.aggregates import Aggregates, Partial

__all__ = ["Emitted", "PipelineSettings", "Reading", "WindowEngine", "WindowKind"]

Reading = tuple[str, float, float]  # (key, event time, value)


class Emitted:
    """Reusable output buffer of one `process`/`advance_idle`/`flush_all` call."""

    __slots__ = ("late", "readings", "windows")

    def __init__(self) -> None:
        self.windows: list[dict[str, Any]] = []
        self.readings: list[dict[str, Any]] = []
        self.late: list[dict[str, Any]] = []

    def clear(self) -> None:
        self.windows.clear()
        self.readings.clear()
        self.late.clear()


def _num(x: float | int) -> float | int:
    """Integral times go out as ints (smaller CBOR; SPEC 4 allows either)."""
    if x.__class__ is float and x.is_integer():
        return int(x)
    return x


class WindowKind(Protocol):
    """A validated window spec (spec.py), as far as an engine needs it."""

    @property
    def engine_type(self) -> type[WindowEngine]: ...


class PipelineSettings(Protocol):
    """What an engine reads of its pipeline's config (config.PipelineConfig)."""

    @property
    def name(self) -> str: ...
    @property
    def window(self) -> str: ...
    @property
    def size(self) -> float: ...
    @property
    def slide(self) -> float | None: ...
    @property
    def gap(self) -> float | None: ...
    @property
    def max_out_of_orderness(self) -> float: ...
    @property
    def allowed_lateness(self) -> float: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def aggregates(self) -> tuple[str, ...]: ...
    @property
    def spec(self) -> Any: ...


class WindowEngine:
    """Base and factory: `WindowEngine(cfg)` builds the engine `cfg.spec` names."""

    readings_in: int
    readings_late: int
    windows_emitted: int

    def __new__(cls, cfg: PipelineSettings) -> WindowEngine:
        if cls is WindowEngine:
            cls = cfg.spec.engine_type
        return object.__new__(cls)

    def __init__(self, cfg: PipelineSettings) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.readings_in = 0
        self.readings_late = 0
        self.windows_emitted = 0
        self.aggs = Aggregates(cfg.aggregates)
        self._record = self.aggs.record
        # what a checkpointed state depends on; lateness and timeouts may change freely
        shape = f"{cfg.window}|{cfg.size!r}|{cfg.slide!r}|{cfg.gap!r}|{','.join(cfg.aggregates)}"
        self._shape = hashlib.sha256(shape.encode()).hexdigest()[:8]
        self._idle = float(cfg.idle_timeout)
        self._keys: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self._gone: set[str] = set()
        self._heap: list[tuple[float, str]] = []

    # -- the runtime's interface -------------------------------------------------

    def process(self, readings: list[Reading], wall: float, out: Emitted) -> None:
        raise NotImplementedError

    def advance_idle(self, wall: float, out: Emitted) -> None:
        """Fire the open windows of every key without a reading for idle_timeout."""
        heap, keys, idle = self._heap, self._keys, self._idle
        due = []
        while heap and heap[0][0] <= wall:
            _, key = heapq.heappop(heap)
            k = keys.get(key)
            if k is None or not k.queued:
                continue
            if k.wall + idle <= wall:
                k.queued = False
                due.append((k.wall, key, k))
            else:
                heapq.heappush(heap, (k.wall + idle, key))
        if due:
            due.sort(key=lambda e: (e[0], e[1]))
            for _, key, k in due:
                self._go_idle(key, k, out)
                self._dirty.add(key)

    def next_idle_deadline(self) -> float | None:
        """Earliest wall time at which a key becomes idle (None: no key is waiting)."""
        heap, keys, idle = self._heap, self._keys, self._idle
        while heap:
            d, key = heap[0]
            k = keys.get(key)
            if k is None or not k.queued:
                heapq.heappop(heap)
                continue
            real = k.wall + idle
            if real != d:
                heapq.heapreplace(heap, (real, key))
                continue
            return d
        return None

    def flush_all(self, out: Emitted) -> None:
        """Fire every open window now and forget all state (pipeline changed or removed)."""
        for key in sorted(self._keys):
            self._go_idle(key, self._keys[key], out)
        self._gone.update(self._keys)
        self._dirty.clear()
        self._keys.clear()
        self._heap.clear()

    def take_dirty(self) -> dict[str, bytes | None]:
        """Serialised state of every key changed since the last call (None: deleted)."""
        res: dict[str, bytes | None] = dict.fromkeys(self._gone)
        self._gone.clear()
        keys = self._keys
        dumps = marshal.dumps
        for key in self._dirty:
            k = keys.get(key)
            res[key] = None if k is None else dumps([self._shape, *self._dump_key(k)], 4)
        self._dirty.clear()
        return res

    def restore(self, states: Iterable[tuple[str, bytes]], wall: float | None = None) -> int:
        """Load checkpointed keys (as produced by take_dirty); returns how many were used.

        A state written for another window shape (kind, size, slide, gap or
        aggregates changed while the agent was down) cannot be read as this one's
        and is skipped: those windows are lost, which beats misreading them.

        `wall` is the restart time: a key's idle clock starts again from it, so time
        the agent was down does not count as the device being silent (its readings
        from that time are waiting at the broker and come next).
        """
        used = 0
        for key, raw in states:
            data = _load_state(raw)
            if not data or data[0] != self._shape:
                continue
            k = self._load_key(data[1:])
            if wall is not None and k.wall < wall:
                k.wall = wall
            used += 1
            self._keys[key] = k
            k.queued = True
            heapq.heappush(self._heap, (k.wall + self._idle, key))
        return used

    def open_windows(self) -> int:
        raise NotImplementedError

    def keys(self) -> int:
        return len(self._keys)

    def key_bytes(self) -> int:
        """Characters in the names of the keys held (the runtime's byte bound asks)."""
        return sum(map(len, self._keys))

    def has_key(self, key: str) -> bool:
        """Whether the engine holds state for this key (the runtime's key cap asks)."""
        return key in self._keys

    # -- for the implementations -------------------------------------------------

    def _queue(self, key: str, k: Any, wall: float) -> None:
        k.queued = True
        heapq.heappush(self._heap, (wall + self._idle, key))

    def _go_idle(self, key: str, k: Any, out: Emitted) -> None:
        raise NotImplementedError

    def _dump_key(self, k: Any) -> list[Any]:
        raise NotImplementedError

    def _load_key(self, data: list[Any]) -> Any:
        raise NotImplementedError

    def _emit(
        self,
        out: Emitted,
        key: str,
        start: float,
        end: float,
        rev: int,
        p: Partial,
        replaces: list[list[float]] | None = None,
    ) -> None:
        rec = self._record(self.name, key, _num(start), _num(end), rev, p)
        if replaces:
            rec["replaces"] = [[_num(a), _num(b)] for a, b in replaces]
        out.windows.append(rec)
        self.windows_emitted += 1

    def _late(self, out: Emitted, key: str, ts: float, v: float) -> None:
        self.readings_late += 1
        out.late.append({"pipeline": self.name, "key": key, "ts": ts, "value": v})


def _load_state(raw: bytes) -> list[Any] | None:
    """A key state as `take_dirty` wrote it (marshal), or as earlier versions did (CBOR);
    None when it is neither (then it is skipped like a state of another shape)."""
    try:
        # a CBOR array (first byte 0x80-0x9f) was written before marshal
        data = cbor2.loads(raw) if raw and 0x80 <= raw[0] <= 0x9F else marshal.loads(raw)
    except (ValueError, EOFError, TypeError, cbor2.CBORDecodeError):
        return None
    return data if isinstance(data, list) else None

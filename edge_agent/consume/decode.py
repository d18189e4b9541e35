"""Upstream messages in (SPEC 4), rows out: batches, late batches and device status.

One function, `decode_message`, turns a payload (zlib-deflated or not) into a
`Decoded` holding plain tuples in the column order of the tables, so a backend
passes them to `executemany` as they are. Anything that is not a well-formed
edge-agent message raises `BadMessage` naming why; the consumer logs, counts and
acknowledges it (a poison message must not block the subscription).
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import cbor2

__all__ = [
    "BATCH_SCHEMA",
    "LATE_SCHEMA",
    "MAX_INFLATED",
    "STATUS_SCHEMA",
    "BadMessage",
    "Decoded",
    "decode_message",
    "inflate",
]

BATCH_SCHEMA = "edge-agent/batch/1"
LATE_SCHEMA = "edge-agent/late/1"
STATUS_SCHEMA = "edge-agent/status/1"
# A deflated payload inflates to at most this: a 64 KiB zlib bomb could otherwise
# become 64 MiB (zlib's ratio is ~1000:1). MQTT's own bound on a packet is 256 MiB.
MAX_INFLATED = 256 * 1024 * 1024

_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_INF = (math.inf, -math.inf)
# Entries of a window record that have their own columns; the rest are aggregates.
_WINDOW_FIELDS = frozenset(("pipeline", "key", "start", "end", "rev", "count", "replaces"))
_Layout = tuple[str, tuple[Any, ...]]
_FORMATS: dict[tuple[Any, ...], _Layout] = {}  # a record's keys -> (JSON format, aggregate names)
_MAX_FORMATS = 256
_FREPR = float.__repr__

WindowRow = tuple[str, str, str, float, float, int, int, str, int]
# agent, pipeline, key, window_start, window_end, rev, count, aggregates JSON, seq
ReadingRow = tuple[str, str, str, float, float, bool, int]
# agent, pipeline, key, ts, value, late, seq
Replaced = tuple[str, str, str, float, float]
# agent, pipeline, key, window_start, window_end of a session window a newer record absorbed
DeviceRow = tuple[str, str, str, str, str, float, str]
# agent, state, health, version, config, time, reasons JSON


class BadMessage(ValueError):
    """Not an edge-agent message this consumer can store; the text says why."""


@dataclass(slots=True)
class Decoded:
    schema: str
    agent: str
    seq: int = -1  # -1 for status messages, which have none
    windows: list[WindowRow] = field(default_factory=list)
    replaced: list[Replaced] = field(default_factory=list)
    readings: list[ReadingRow] = field(default_factory=list)
    device: DeviceRow | None = None
    pipelines: set[str] = field(default_factory=set)  # of the windows (the storage's lock keys)

    @property
    def records(self) -> int:
        return len(self.windows) + len(self.readings)


def inflate(payload: bytes) -> bytes:
    """The CBOR inside a zlib stream (RFC 1950), bounded by MAX_INFLATED."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, MAX_INFLATED)
    except zlib.error as exc:
        raise BadMessage(f"content-encoding deflate, but not a zlib stream: {exc}") from None
    if d.unconsumed_tail:
        raise BadMessage(f"deflated payload inflates past {MAX_INFLATED} bytes")
    if not d.eof:
        raise BadMessage("content-encoding deflate, but the zlib stream is truncated")
    return out


def _is_deflated(payload: bytes, encoding: str | None) -> bool:
    if encoding is not None:
        enc = encoding.strip().lower()
        if enc == "deflate":
            return True
        if enc not in ("", "identity"):
            raise BadMessage(f"unknown content-encoding {encoding!r}")
        return False
    # Without the user property (a bridge that strips properties, an MQTT 3 hop):
    # a zlib header's first byte (CMF) is 0x08-0x78 (method 8, window <= 7) with
    # CMF*256+FLG divisible by 31 (RFC 1950 2.2), never a CBOR map head (0xa0-0xbf),
    # so the payload says which it is.
    b = payload
    return len(b) >= 2 and b[0] & 0x0F == 8 and b[0] >> 4 <= 7 and (b[0] << 8 | b[1]) % 31 == 0


def _num(v: Any, what: str) -> float:
    if type(v) is float:
        if math.isfinite(v):
            return v
    elif type(v) is int:
        return float(v)
    raise BadMessage(f"{what}: expected a finite number, got {v!r:.40}")


def _uint(v: Any, what: str) -> int:
    if type(v) is int and v >= 0:
        return v
    raise BadMessage(f"{what}: expected an unsigned integer, got {v!r:.40}")


def _str(v: Any, what: str) -> str:
    if type(v) is str and v:
        return v
    raise BadMessage(f"{what}: expected a non-empty string, got {v!r:.40}")


def _json_value(v: Any) -> Any:
    if type(v) is float and not math.isfinite(v):
        return None  # JSON has no NaN; PostgreSQL's jsonb refuses the token
    return v


def _layout(r: dict[Any, Any], formats: dict[tuple[Any, ...], _Layout]) -> _Layout:
    """The format string and aggregate names for records with the keys of `r` (cached)."""
    names = tuple(k for k in r if k not in _WINDOW_FIELDS)
    if all(type(k) is str for k in names):
        fmt = "{" + ",".join(_ENCODE(k).replace("%", "%%") + ":%s" for k in names) + "}"
    else:
        fmt = ""  # a non-string key: never the fast path (the general way converts or refuses it)
        names = (object(),)  # a key no record has: the lookup raises, the general way runs
    if len(formats) >= _MAX_FORMATS:  # a producer inventing key layouts: stay bounded
        formats.clear()
    formats[tuple(r)] = layout = (fmt, names)
    return layout


def _aggregates_json(r: dict[Any, Any], i: int) -> str:
    aggs = {k: v for k, v in r.items() if k not in _WINDOW_FIELDS}
    try:
        try:
            return _ENCODE(aggs)
        except ValueError:  # NaN or infinity: JSON has none (and jsonb refuses the tokens)
            return _ENCODE({k: _json_value(v) for k, v in aggs.items()})
    except TypeError:
        raise BadMessage(
            f"windows[{i}]: an aggregate that JSON cannot hold (not a number)"
        ) from None


def decode_message(payload: bytes, encoding: str | None = None) -> Decoded:
    """Decode one message's payload; `encoding` is its MQTT 5 `content-encoding` user property."""
    if _is_deflated(payload, encoding):
        payload = inflate(payload)
    if payload[:1] == b"\xff":  # cbor2 5 (armv7l) returns its break marker for this
        raise BadMessage("not CBOR: a break code where a data item starts")
    try:
        doc = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types, ValueError among them
        raise BadMessage(f"not CBOR: {exc}") from None
    if not isinstance(doc, dict):
        raise BadMessage(f"expected a CBOR map, got {type(doc).__name__}")
    schema = doc.get("schema")
    agent = _str(doc.get("agent"), "agent")
    if schema == STATUS_SCHEMA:
        return _status(doc, agent)
    if schema not in (BATCH_SCHEMA, LATE_SCHEMA):
        raise BadMessage(f"unknown schema {schema!r:.60}")
    seq = _uint(doc.get("seq"), "seq")
    out = Decoded(schema, agent, seq)
    windows = doc.get("windows", ())
    readings = doc.get("readings", ())
    if not isinstance(windows, list | tuple) or not isinstance(readings, list | tuple):
        raise BadMessage("windows and readings must be lists")
    formats = _FORMATS
    frepr = _FREPR
    append = out.windows.append
    pipelines = out.pipelines
    last_pipeline: str | None = None
    for i, r in enumerate(windows):
        try:
            pipeline, key = r["pipeline"], r["key"]
            start, end, rev, count = r["start"], r["end"], r["rev"], r["count"]
        except KeyError as exc:
            raise BadMessage(f"windows[{i}]: missing {exc.args[0]}") from None
        except TypeError:
            raise BadMessage(f"windows[{i}]: expected a map") from None
        if type(pipeline) is not str or type(key) is not str:
            raise BadMessage(f"windows[{i}]: pipeline and key must be strings")
        # Fast path: the agent sends floats for bounds and ints for rev/count.
        if type(start) is not float or start != start or start in _INF:
            start = _num(start, f"windows[{i}].start")
        if type(end) is not float or end != end or end in _INF:
            end = _num(end, f"windows[{i}].end")
        if type(rev) is not int or rev < 0:
            rev = _uint(rev, f"windows[{i}].rev")
        if type(count) is not int or count < 0:
            count = _uint(count, f"windows[{i}].count")
        # The aggregates as JSON text. Fast path: a format string per key layout
        # (one per pipeline), filled with float reprs (what json writes for a float);
        # it takes only finite floats: anything else goes the general way below.
        layout = formats.get(tuple(r))
        if layout is None:
            layout = _layout(r, formats)
        fmt, names = layout
        try:
            vals = tuple(map(r.__getitem__, names))
            total = sum(vals)
            if total - total != 0.0:  # NaN or infinity among them (or an overflow)
                raise TypeError
            text = fmt % tuple(map(frepr, vals))
        except (TypeError, KeyError):
            text = _aggregates_json(r, i)
        append((agent, pipeline, key, start, end, rev, count, text, seq))
        if pipeline != last_pipeline:
            pipelines.add(pipeline)
            last_pipeline = pipeline
        rep = r.get("replaces")
        if rep:
            if not isinstance(rep, list | tuple):
                raise BadMessage(f"windows[{i}].replaces: expected a list")
            for b in rep:
                if not isinstance(b, list | tuple) or len(b) != 2:
                    raise BadMessage(f"windows[{i}].replaces: expected [start, end] pairs")
                out.replaced.append(
                    (agent, pipeline, key, _num(b[0], "replaces"), _num(b[1], "replaces"))
                )
    late = schema == LATE_SCHEMA
    for i, r in enumerate(readings):
        if not isinstance(r, dict):
            raise BadMessage(f"readings[{i}]: expected a map")
        pipeline, key = r.get("pipeline"), r.get("key")
        if type(pipeline) is not str or type(key) is not str:
            raise BadMessage(f"readings[{i}]: pipeline and key must be strings")
        out.readings.append(
            (
                agent,
                pipeline,
                key,
                _num(r.get("ts"), f"readings[{i}].ts"),
                _num(r.get("value"), f"readings[{i}].value"),
                late,
                seq,
            )
        )
    return out


def _status(doc: dict[str, Any], agent: str) -> Decoded:
    state = _str(doc.get("state"), "state")
    time_ = _num(doc.get("time"), "time")
    reasons = doc.get("reasons") or []
    if not isinstance(reasons, list | tuple) or not all(isinstance(r, str) for r in reasons):
        raise BadMessage("reasons: expected a list of strings")

    def text(k: str) -> str:
        v = doc.get(k, "")
        if not isinstance(v, str):
            raise BadMessage(f"{k}: expected a string")
        return v

    row = (
        agent,
        state,
        text("health"),
        text("version"),
        text("config"),
        time_,
        json.dumps(list(reasons)),
    )
    return Decoded(STATUS_SCHEMA, agent, device=row)

"""Payload decoding: one MQTT message's bytes -> readings (SPEC 2).

`PayloadDecoder.decode` runs once per message per pipeline, so it is written for
speed: JSON goes straight to the C scanner that `json.loads` itself uses (same
grammar, without the encoding sniffing and regex whitespace skipping around it),
CBOR through cbor2's C decoder, and the common shapes take the first branches.

Decisions where SPEC 2 is silent (also for the README):

- JSON text is UTF-8 (a UTF-8 BOM is skipped); payloads that look like UTF-16/32
  are handed to `json.loads`, so the accepted JSON language is exactly its own.
- A CBOR payload is exactly one data item: trailing bytes make it `bad_cbor`
  (otherwise, with format "auto", text like `5 x` would decode as the CBOR item in
  its first byte). Maps whose keys are not text or byte strings are rejected whole
  (cbor2 `strict_hashable_types`: integer/tuple keys allow hash-collision floods).
  A byte-string key in an object without `value` is a bad field. Nesting deeper
  than 64 levels is `bad_cbor` (JSON's limit is the recursion limit). CBOR bignums are
  integers; every other tagged or special value (decimal fraction, undefined, bytes,
  ...) is not a number, and tags readings do not need are never evaluated
  (NEUTRALIZED_TAGS: no regular expression compiled, no MIME parsed). CBOR date/time tags 0 and 1 are accepted as `ts`.
- In format "auto", a payload that is neither JSON nor CBOR counts as `bad_payload`.
- `ts` must be a number, an RFC 3339 string or (CBOR, custom decoders) an aware
  datetime; anything else, `null` and booleans included, is `bad_ts`. RFC 3339:
  `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)` with `T`/`t` and `Z`/`z`; any
  number of fraction digits; a leap second `:60` counts as the next second's start.
- A reading without `ts` takes the arrival time unchecked: a Pi has no RTC and may
  run on a 1970 clock until NTP syncs; its readings must not all be "too old".
- In an object without `value`, a string value is metadata whatever its key; a
  non-finite number counts as `non_finite`, other non-numbers as `bad_field`.
- The event time may be `max_future_skew` ahead of arrival, not more.
"""

from __future__ import annotations

import io
import json
import json.scanner
import numbers
import re
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

import cbor2

from edge_agent.custom_decoders import ENTRY_POINT_GROUP, CustomDecoder, resolve_custom_decoder

__all__ = [
    "DECODER_ERROR_PREFIX",
    "ENTRY_POINT_GROUP",
    "MAX_PAYLOAD",
    "MIN_EVENT_TIME",
    "REASON_BAD_CBOR",
    "REASON_BAD_FIELD",
    "REASON_BAD_JSON",
    "REASON_BAD_PAYLOAD",
    "REASON_BAD_READING",
    "REASON_BAD_TS",
    "REASON_NON_FINITE",
    "REASON_NOT_A_NUMBER",
    "REASON_NO_READING",
    "REASON_TOO_LARGE",
    "REASON_TS_IN_FUTURE",
    "REASON_TS_TOO_OLD",
    "CustomDecoder",
    "PayloadDecoder",
    "parse_rfc3339",
    "resolve_custom_decoder",
]

MAX_PAYLOAD: Final = 65536
MIN_EVENT_TIME: Final = 946684800.0  # 2000-01-01T00:00:00Z

REASON_TOO_LARGE: Final = "too_large"  # payload over MAX_PAYLOAD bytes (counts once)
REASON_BAD_JSON: Final = "bad_json"  # format "json": not JSON
REASON_BAD_CBOR: Final = "bad_cbor"  # format "cbor" or CBOR content type: not one CBOR item
REASON_BAD_PAYLOAD: Final = "bad_payload"  # format "auto": neither JSON nor CBOR
REASON_NOT_A_NUMBER: Final = "not_a_number"  # bare payload / `value` not a number
REASON_NON_FINITE: Final = "non_finite"  # NaN or +-Infinity (or an int beyond float range)
REASON_BAD_FIELD: Final = "bad_field"  # object without `value`: bool/null/array/map/... field
REASON_BAD_TS: Final = "bad_ts"  # `ts` neither a finite number nor an RFC 3339 string with offset
REASON_TS_TOO_OLD: Final = "ts_too_old"  # before 2000-01-01T00:00:00Z
REASON_TS_IN_FUTURE: Final = "ts_in_future"  # more than max_future_skew ahead of arrival
REASON_NO_READING: Final = "no_reading"  # the message yields no reading at all
REASON_BAD_READING: Final = "bad_reading"  # custom decoder yielded something that is not a reading
DECODER_ERROR_PREFIX: Final = "decoder_error:"  # + the custom decoder's exception class name

_ABSENT: Final = object()
_JSON_WS: Final = " \t\n\r"  # RFC 8259 whitespace, exactly what json.decoder.WHITESPACE allows
# The scanner json.loads runs underneath (the C one when available); calling it
# directly skips detect_encoding() and two regex matches: ~2.5x faster on small payloads.
_json_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_json_loads = json.loads


try:  # a hard dependency; the stdlib path alone still works without it
    import orjson

    _orjson_loads: Callable[[bytes], Any] | None = orjson.loads
    _OrjsonError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover
    _orjson_loads, _OrjsonError = None, ValueError


def _parse_json(payload: bytes) -> Any:
    """json.loads(payload), exactly, but faster; raises on anything json.loads refuses.

    orjson first (2-5x faster than the stdlib scanner on readings, bench/bench_json.py;
    wheels for aarch64 and armv7l). It is stricter than json.loads, never looser, so
    what it refuses goes to the stdlib path and the accepted language stays exactly
    json.loads's: NaN/Infinity tokens, lone surrogate escapes, a BOM, numbers beyond
    a double. One difference that does not change a reading: integers above 2**64
    come back as the float they convert to.
    """
    if _orjson_loads is not None:
        try:
            return _orjson_loads(payload)
        except _OrjsonError:
            pass
    return _parse_json_stdlib(payload)


def _parse_json_stdlib(payload: bytes) -> Any:
    b0 = payload[0]
    if b0 == 0 or b0 >= 0xEF or (len(payload) > 1 and payload[1] == 0):
        # A BOM or NUL bytes: json.detect_encoding may pick UTF-8-sig/16/32; let it.
        return _json_loads(payload)
    s = payload.decode("utf-8", "surrogatepass")  # json.loads(bytes) decodes so too
    idx = 0
    if s[0] in _JSON_WS:
        idx = len(s) - len(s.lstrip(_JSON_WS))
    obj, end = _json_scan(s, idx)  # StopIteration when nothing parses at idx
    if end != len(s) and len(s.rstrip(_JSON_WS)) != end:
        raise ValueError("extra data after the JSON value")
    return obj


class _UnsupportedTag:
    """What a CBOR tag readings never need decodes to: not a number, not a timestamp."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unsupported CBOR tag>"


UNSUPPORTED_TAG: Final = _UnsupportedTag()
# Tags cbor2 gives a meaning to, other than the ones readings use: 0/1 (date/time,
# for `ts`), 2/3 (bignums), 25/256 (string references) and 28/29 (shared values),
# 55799 (self-described CBOR). Their decoders can cost hundreds of milliseconds per
# 60 KB payload (a regular expression compiled, a MIME message parsed, a decimal or
# bigfloat with a huge exponent computed) and would stall the event loop; here they
# yield UNSUPPORTED_TAG without that work: the content is read as plain CBOR (linear
# in its size) and nothing is computed from it. Tags cbor2 does not know stay CBORTag
# objects (content read the same way). tests/ingest/test_decode.py checks this list against
# every tag cbor2 decodes itself, so a cbor2 release that adds one fails the test.
NEUTRALIZED_TAGS: Final = frozenset({4, 5, 30, 35, 36, 37, 52, 54, 100, 258, 260, 261, 1004})


def _unsupported_tag(_decoder: Any, _value: Any) -> _UnsupportedTag:
    return UNSUPPORTED_TAG


def _new_cbor_decoder() -> cbor2.CBORDecoder:
    if not hasattr(cbor2.CBORDecoder, "strict_hashable_types"):
        # cbor2 5 (armv7l, where PyPI has no cbor2 6 wheel): the same rules in Python.
        from edge_agent.ingest import _cbor5

        return _cbor5.new_decoder(64, UNSUPPORTED_TAG)  # type: ignore[no-any-return]
    # strict_hashable_types: integer/tuple map keys would allow hash-collision floods.
    return cbor2.CBORDecoder(
        io.BytesIO(b""),
        strict_hashable_types=True,
        max_depth=64,
        semantic_decoders=dict.fromkeys(NEUTRALIZED_TAGS, _unsupported_tag),
    )


def _parse_cbor(decoder: cbor2.CBORDecoder, payload: bytes) -> Any:
    """Exactly one CBOR data item; cbor2.loads would ignore trailing bytes.

    The decoder is reused (building one costs more than the decode): cbor2 resets
    its shared-value and string-reference tables on every decode(), also after an
    error, so nothing leaks from one message into the next (tested).
    """
    fp = io.BytesIO(payload)
    decoder.fp = fp
    obj = decoder.decode()
    if fp.tell() != len(payload):
        raise ValueError("extra data after the CBOR item")
    return obj


# RFC 3339 section 5.6 date-time; re.ASCII so that \d is 0-9 only.
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?(?:[Zz]|([+-])(\d\d):(\d\d))",
    re.ASCII,
)
_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@lru_cache(maxsize=4096)
def parse_rfc3339(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 date-time with offset, or None if it is not one.

    Cached: devices that stamp whole seconds repeat strings, and every pipeline
    taking a message parses the same `ts`.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not 1 <= month <= 12 or day < 1:
        return None
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day > _DAYS_IN_MONTH[month] + leap or hour > 23 or minute > 59 or second > 60:
        return None
    t = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    sign = m.group(8)
    if sign is not None:
        oh, om = int(m.group(9)), int(m.group(10))
        if oh > 23 or om > 59:
            return None
        offset = oh * 3600 + om * 60
        t = t - offset if sign == "+" else t + offset
    frac = m.group(7)
    return t + float(frac) if frac is not None else float(t)


@lru_cache(maxsize=256)
def _is_cbor_content_type(content_type: str) -> bool:
    # "application/cbor; foo=bar": media types are case-insensitive (RFC 9110 8.3.1)
    return content_type.partition(";")[0].strip().lower() == "application/cbor"


_JSON, _CBOR, _AUTO, _CUSTOM = range(4)
_MODES: Final = {"json": _JSON, "cbor": _CBOR, "auto": _AUTO}


class PayloadDecoder:
    """Turns one message into (key, event time, value) readings and counted rejects.

    One per pipeline, used from one thread (it reuses a CBOR decoder).
    """

    __slots__ = ("_cbor", "_custom", "_mode", "_skew", "fmt", "max_future_skew")

    def __init__(self, fmt: str, max_future_skew: float) -> None:
        self.fmt = fmt
        self.max_future_skew = float(max_future_skew)
        self._skew = self.max_future_skew
        self._mode = _MODES.get(fmt, _CUSTOM)
        self._custom = resolve_custom_decoder(fmt) if self._mode == _CUSTOM else None
        self._cbor = _new_cbor_decoder()

    def __repr__(self) -> str:
        return f"PayloadDecoder({self.fmt!r}, max_future_skew={self.max_future_skew!r})"

    def relax_future_skew(self, relaxed: bool) -> None:
        """No future-skew check while the local clock is known to be behind (edge_agent.clock)."""
        self._skew = float("inf") if relaxed else self.max_future_skew

    def decode(
        self,
        topic: str,
        payload: bytes,
        content_type: str | None,
        arrival: float,
        out: list[tuple[str, float, float]],
        rejects: Counter[str],
    ) -> int:
        """Append valid readings to `out`, count rejected ones in `rejects`; return that count.

        Never raises. A message that yields no reading at all counts once.
        """
        if len(payload) > MAX_PAYLOAD:
            rejects[REASON_TOO_LARGE] += 1
            return 1
        mode = self._mode
        if mode == _CUSTOM:
            return self._decode_custom(topic, payload, arrival, out, rejects)
        if (
            mode == _AUTO
            and content_type is not None
            and (content_type == "application/cbor" or _is_cbor_content_type(content_type))
        ):
            mode = _CBOR
        if mode != _CBOR:
            try:
                obj = _parse_json(payload)
            # JSONDecodeError, StopIteration, UnicodeDecodeError, RecursionError, IndexError...
            except Exception:
                if mode == _JSON:
                    rejects[REASON_BAD_JSON] += 1
                    return 1
                try:
                    obj = _parse_cbor(self._cbor, payload)
                except Exception:
                    rejects[REASON_BAD_PAYLOAD] += 1
                    return 1
        else:
            try:
                obj = _parse_cbor(self._cbor, payload)
            # cbor2 raises CBORDecodeError, but odd tags can raise other errors too
            except Exception:
                rejects[REASON_BAD_CBOR] += 1
                return 1

        # The shapes in order of frequency: {"ts", "value"}, a bare number, many fields.
        t = type(obj)
        if t is dict:
            return self._take_object(topic, obj, arrival, out, rejects)
        if t is float:
            if obj - obj == 0.0:  # finite: inf - inf and nan - nan are nan
                out.append((topic, arrival, obj))
                return 0
            rejects[REASON_NON_FINITE] += 1
            return 1
        if t is int:  # bool is not: type(True) is bool
            try:
                out.append((topic, arrival, float(obj)))
                return 0
            except OverflowError:
                rejects[REASON_NON_FINITE] += 1
                return 1
        rejects[REASON_NOT_A_NUMBER] += 1  # strings, arrays, true/false/null, tags, bytes...
        return 1

    def _take_object(
        self,
        topic: str,
        obj: dict[Any, Any],
        arrival: float,
        out: list[tuple[str, float, float]],
        rejects: Counter[str],
    ) -> int:
        ts = obj.get("ts", _ABSENT)
        when: float | str = arrival if ts is _ABSENT else self._event_time(ts, arrival)
        if "value" in obj:
            v = obj["value"]
            t = type(v)
            if t is float:
                if v - v != 0.0:
                    rejects[REASON_NON_FINITE] += 1
                    return 1
            elif t is int:
                try:
                    v = float(v)
                except OverflowError:
                    rejects[REASON_NON_FINITE] += 1
                    return 1
            else:
                rejects[REASON_NOT_A_NUMBER] += 1
                return 1
            if type(when) is str:
                rejects[when] += 1
                return 1
            out.append((topic, when, v))  # type: ignore[arg-type]
            return 0

        # One reading per number-valued field; strings are metadata.
        taken = rejected = 0
        bad_ts = type(when) is str
        for field, v in obj.items():
            t = type(v)
            if t is str or field == "ts":
                continue
            if type(field) is not str:  # a CBOR byte-string key
                reason = REASON_BAD_FIELD
            elif t is float:
                if v - v == 0.0:
                    if not bad_ts:
                        out.append((f"{topic}/{field}", when, v))  # type: ignore[arg-type]
                        taken += 1
                        continue
                    reason = when  # type: ignore[assignment]
                else:
                    reason = REASON_NON_FINITE
            elif t is int:
                try:
                    v = float(v)
                except OverflowError:
                    reason = REASON_NON_FINITE
                else:
                    if not bad_ts:
                        out.append((f"{topic}/{field}", when, v))  # type: ignore[arg-type]
                        taken += 1
                        continue
                    reason = when  # type: ignore[assignment]
            else:
                reason = REASON_BAD_FIELD
            rejects[reason] += 1
            rejected += 1
        if taken or rejected:
            return rejected
        rejects[REASON_NO_READING] += 1
        return 1

    def _event_time(self, ts: Any, arrival: float) -> float | str:
        """Event time in epoch seconds, or the reason string it is rejected for."""
        t = type(ts)
        if t is float or t is int:
            try:
                # Unit by magnitude (SPEC 2). int / int is correctly rounded in Python.
                if ts < 1e11:
                    s = float(ts)
                elif ts < 1e14:
                    s = ts / 1000
                elif ts < 1e17:
                    s = ts / 1_000_000
                else:
                    s = ts / 1_000_000_000
            except OverflowError:  # an int beyond float range
                return REASON_BAD_TS
            if s - s != 0.0:  # NaN or infinite
                return REASON_BAD_TS
        elif t is str:
            parsed = parse_rfc3339(ts)
            if parsed is None:
                return REASON_BAD_TS
            s = parsed
        elif isinstance(ts, datetime) and ts.tzinfo is not None:  # CBOR tags 0 and 1
            s = ts.timestamp()
        else:  # booleans, null, arrays, naive datetimes...
            return REASON_BAD_TS
        if s < MIN_EVENT_TIME:
            return REASON_TS_TOO_OLD
        if s > arrival + self._skew:
            return REASON_TS_IN_FUTURE
        return s

    def _decode_custom(
        self,
        topic: str,
        payload: bytes,
        arrival: float,
        out: list[tuple[str, float, float]],
        rejects: Counter[str],
    ) -> int:
        assert self._custom is not None
        try:
            # Materialised first, so a decoder that fails half-way rejects the whole
            # message rather than leaving half of it in `out`.
            items = list(self._custom(topic, payload))
        except Exception as exc:
            rejects[DECODER_ERROR_PREFIX + type(exc).__name__] += 1
            return 1
        if not items:
            rejects[REASON_NO_READING] += 1
            return 1
        rejected = 0
        for item in items:
            try:
                reading = self._custom_reading(item, arrival)
            except Exception:  # a user's Mapping or sequence that misbehaves
                reading = REASON_BAD_READING
            if type(reading) is str:
                rejects[reading] += 1
                rejected += 1
            else:
                out.append(reading)  # type: ignore[arg-type]
        return rejected

    def _custom_reading(self, item: Any, arrival: float) -> tuple[str, float, float] | str:
        if isinstance(item, Mapping):
            if "key" not in item or "value" not in item:
                return REASON_BAD_READING
            key, ts, value = item["key"], item.get("ts"), item["value"]
        elif isinstance(item, tuple | list) and len(item) == 3:
            key, ts, value = item
        else:
            return REASON_BAD_READING
        if not isinstance(key, str) or not key:
            return REASON_BAD_READING
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return REASON_NOT_A_NUMBER
        try:
            v = float(value)
        except (OverflowError, ValueError):
            return REASON_NON_FINITE
        if v - v != 0.0:
            return REASON_NON_FINITE
        if ts is None:
            return (key, arrival, v)
        if type(ts) not in (int, float, str) and not isinstance(ts, datetime):
            # numpy scalars and the like: a real number that is not a bool
            if isinstance(ts, bool) or not isinstance(ts, numbers.Real):
                return REASON_BAD_TS
            ts = float(ts)
        when = self._event_time(ts, arrival)
        if type(when) is str:
            return when
        return (key, when, v)  # type: ignore[return-value]

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

import numbers
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

from edge_agent.custom_decoders import ENTRY_POINT_GROUP, CustomDecoder, resolve_custom_decoder
from edge_agent.ingest.formats import (
    NEUTRALIZED_TAGS,
    UNSUPPORTED_TAG,
    _new_cbor_decoder,
    _parse_cbor,
    _parse_json,
)
from edge_agent.ingest.reasons import (
    DECODER_ERROR_PREFIX,
    MAX_PAYLOAD,
    MIN_EVENT_TIME,
    REASON_BAD_CBOR,
    REASON_BAD_FIELD,
    REASON_BAD_JSON,
    REASON_BAD_PAYLOAD,
    REASON_BAD_READING,
    REASON_BAD_TS,
    REASON_NO_READING,
    REASON_NON_FINITE,
    REASON_NOT_A_NUMBER,
    REASON_TOO_LARGE,
    REASON_TS_IN_FUTURE,
    REASON_TS_TOO_OLD,
)
from edge_agent.ingest.timestamps import parse_rfc3339

__all__ = [
    "DECODER_ERROR_PREFIX",
    "ENTRY_POINT_GROUP",
    "MAX_PAYLOAD",
    "MIN_EVENT_TIME",
    "NEUTRALIZED_TAGS",
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
    "UNSUPPORTED_TAG",
    "CustomDecoder",
    "PayloadDecoder",
    "parse_rfc3339",
    "resolve_custom_decoder",
]

_ABSENT: Final = object()


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

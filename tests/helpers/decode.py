"""Shared by test_decode.py, test_decode_custom_and_props.py (split from test_decode.py)."""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from datetime import datetime
from fractions import Fraction
from typing import Any

import cbor2

from edge_agent.ingest.decode import NEUTRALIZED_TAGS, PayloadDecoder
from tests.helpers.decoders import ARRIVAL  # 2023-11-14T22:13:20.5Z

SKEW = 300.0
T2000 = 946_684_800.0


def run(
    fmt: str,
    payload: bytes,
    *,
    topic: str = "s/dev1",
    content_type: str | None = None,
    arrival: float = ARRIVAL,
    skew: float = SKEW,
) -> tuple[list[tuple[str, float, float]], dict[str, int]]:
    """Decode one message; also check the return value against the counter."""
    out: list[tuple[str, float, float]] = [("sentinel", 0.0, 0.0)]
    rejects: Counter[str] = Counter({"earlier": 3})
    n = PayloadDecoder(fmt, skew).decode(topic, payload, content_type, arrival, out, rejects)
    assert out[0] == ("sentinel", 0.0, 0.0)  # appends, never replaces
    rejects["earlier"] -= 3
    counts = {k: v for k, v in rejects.items() if v}
    assert n == sum(counts.values())
    assert len(out) - 1 + n >= 1, "every message is either a reading or a counted reject"
    return out[1:], counts


RFC3339_OK = [
    ("2023-11-14T22:13:20Z", 1_700_000_000.0),
    ("2023-11-14t22:13:20z", 1_700_000_000.0),
    ("2023-11-14T22:13:20z", 1_700_000_000.0),
    ("2023-11-14t22:13:20Z", 1_700_000_000.0),
    ("2023-11-14T22:13:20.25Z", 1_700_000_000.25),
    ("2023-11-14T22:13:20.5+00:00", 1_700_000_000.5),
    ("2023-11-14T22:13:20-00:00", 1_700_000_000.0),
    ("2023-11-14T23:43:20+01:30", 1_700_000_000.0),
    ("2023-11-14T17:13:20.1-05:00", 1_700_000_000.1),
    ("2023-11-14T22:13:20.1234567891234Z", 1_700_000_000.1234567891234),
    ("2023-11-14T22:13:20.123456789Z", 1_700_000_000.123456789),
    ("2016-12-31T23:59:60Z", 1_483_228_800.0),  # leap second: the next second's start
    ("2024-02-29T00:00:00Z", 1_709_164_800.0),
    ("2000-02-29T00:00:00Z", 951_782_400.0),
]

RFC3339_BAD = [
    "2023-11-14T22:13:20",  # no offset
    "2023-11-14T22:13:20.25",
    "2023-11-14",  # date only
    "2023-11-14T22:13Z",  # no seconds
    "2023-11-14T22Z",
    "2023-11-14 22:13:20Z",  # RFC 3339's ABNF wants T
    "2023-11-14_22:13:20Z",
    "20231114T221320Z",  # ISO 8601 basic format
    "2023-W46-2T22:13:20Z",
    "2023-11-14T22:13:20+0100",
    "2023-11-14T22:13:20+01",
    "2023-11-14T22:13:20.Z",
    "2023-11-14T22:13:20,5Z",
    "2023-11-14T22:13:20ZZ",
    " 2023-11-14T22:13:20Z",
    "2023-11-14T22:13:20Z ",
    "2023-13-14T22:13:20Z",
    "2023-00-14T22:13:20Z",
    "2023-02-29T22:13:20Z",
    "1900-02-29T00:00:00Z",
    "2023-04-31T00:00:00Z",
    "2023-11-00T00:00:00Z",
    "2023-11-14T24:00:00Z",
    "2023-11-14T22:60:00Z",
    "2023-11-14T22:13:61Z",
    "2023-11-14T22:13:20+24:00",
    "2023-11-14T22:13:20+00:60",
    "\uff12\uff10\uff12\uff13-11-14T22:13:20Z",  # non-ASCII digits
    "2023-11-14T22:13:20.\u0661Z",
]


# ---------------------------------------------------------------- properties


def reference(
    fmt: str, topic: str, payload: bytes, content_type: str | None
) -> tuple[list[Any], Counter[str]]:
    """SPEC 2 restated plainly and slowly, on top of json.loads and cbor2."""
    out: list[Any] = []
    rej: Counter[str] = Counter()
    if len(payload) > 65536:
        rej["too_large"] += 1
        return out, rej

    def cbor() -> Any:
        fp = io.BytesIO(payload)
        if CBOR2_STRICT:
            obj = cbor2.CBORDecoder(
                fp,
                strict_hashable_types=True,
                max_depth=64,
                semantic_decoders=dict.fromkeys(NEUTRALIZED_TAGS, _not_evaluated),
            ).decode()
        else:  # cbor2 5 (armv7l): the same rules, keys checked after decoding
            obj = _cbor5_decode(fp)
            _only_string_keys(obj)
        if fp.tell() != len(payload):
            raise ValueError("trailing")
        return obj

    cbor_ct = content_type is not None and (
        content_type.split(";")[0].strip().lower() == "application/cbor"
    )
    try:
        obj = cbor() if fmt == "cbor" or (fmt == "auto" and cbor_ct) else json.loads(payload)
    except Exception:
        if fmt == "auto" and not cbor_ct:
            try:
                obj = cbor()
            except Exception:
                rej["bad_payload"] += 1
                return out, rej
        else:
            rej["bad_cbor" if fmt != "json" else "bad_json"] += 1
            return out, rej

    def number(v: Any) -> float | str:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return "not_a_number"
        if isinstance(v, int) and abs(v) >= 2**1024 - 2**970:  # rounds to infinity
            return "non_finite"
        return float(v) if math.isfinite(float(v)) else "non_finite"

    if not isinstance(obj, dict):
        r = number(obj)
        if isinstance(r, str):
            rej[r] += 1
        else:
            out.append((topic, ARRIVAL, r))
        return out, rej
    when: float | str = ARRIVAL
    if "ts" in obj:
        when = ref_ts(obj["ts"])
    if "value" in obj:
        r = number(obj["value"])
        if isinstance(r, str) or isinstance(when, str):
            rej[r if isinstance(r, str) else str(when)] += 1
        else:
            out.append((topic, when, r))
        return out, rej
    for k, v in obj.items():
        if k == "ts" or isinstance(v, str):
            continue
        r = number(v) if isinstance(k, str) else "not_a_number"
        if isinstance(r, str):
            rej["non_finite" if r == "non_finite" else "bad_field"] += 1
        elif isinstance(when, str):
            rej[when] += 1
        else:
            out.append((f"{topic}/{k}", when, r))
    if not out and not rej:
        rej["no_reading"] += 1
    return out, rej


# SPEC 2 via docs/configuration.md: a tag readings do not use is "not a number" and its
# content is never evaluated, so a decimal fraction (tag 4) whose content is no
# [exponent, mantissa] pair is not a number either, not bad CBOR (on cbor2 6 and 5). The tag list itself
# is checked against every tag cbor2 knows in tests/ingest/test_cbor_tags.py.
class _NotEvaluated:
    pass


def _not_evaluated(_decoder: Any, _value: Any) -> _NotEvaluated:
    return _NotEvaluated()


def _cbor5_decode(fp: io.BytesIO) -> Any:
    """cbor2 5's pure-Python decoder, with the tags above read but not evaluated
    (its tag table is module-global: swapped for this call, then put back)."""
    import importlib

    d5: Any = importlib.import_module("cbor2._decoder")
    table: dict[int, Any] = d5.semantic_decoders
    saved = dict(table)
    table.update(
        dict.fromkeys(NEUTRALIZED_TAGS, lambda dec: (dec.decode(unshared=True), _NotEvaluated())[1])
    )
    try:
        return d5.CBORDecoder(fp, max_depth=64).decode()
    finally:
        table.clear()
        table.update(saved)


# cbor2 >= 6.2 rejects maps with keys other than text/byte strings itself; on cbor2 5
# (armv7l without a cbor2 6 wheel, edge_agent/ingest/_cbor5.py) the reference checks.
CBOR2_STRICT = hasattr(cbor2.CBORDecoder, "strict_hashable_types")


def _only_string_keys(obj: Any) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) is not str and type(k) is not bytes:
                raise ValueError("map key that is not a text or byte string")
            _only_string_keys(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _only_string_keys(v)
    elif isinstance(obj, cbor2.CBORTag):
        _only_string_keys(obj.value)


_REF_SHAPE = re.compile(
    r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:(\d\d))", re.ASCII
)


def ref_ts(ts: Any) -> float | str:
    if isinstance(ts, bool):
        return "bad_ts"
    if isinstance(ts, int | float):
        if isinstance(ts, float) and not math.isfinite(ts):
            return "bad_ts"
        exact = Fraction(ts)
        for limit, _unit in (
            (Fraction(10**11), 1),
            (Fraction(10**14), 1000),
            (Fraction(10**17), 10**6),
        ):
            if exact < limit:
                unit = _unit
                break
        else:
            unit = 10**9
        try:
            s = float(exact / unit)  # correctly rounded, as is the decoder's division
        except OverflowError:
            return "bad_ts"
    elif isinstance(ts, str):
        m = _REF_SHAPE.fullmatch(ts)
        if m is None or (m.group(3) and int(m.group(3)) > 59):
            return "bad_ts"
        base = ts[:10] + "T" + ts[11:19]
        leap = base.endswith(":60")
        if leap:
            base = base[:-2] + "59"
        zone = "+00:00" if m.group(2) in ("Z", "z") else m.group(2)
        try:
            whole = datetime.fromisoformat(base + zone).timestamp() + leap
        except ValueError:
            return "bad_ts"
        s = whole + float("0" + m.group(1)) if m.group(1) else whole
    elif isinstance(ts, datetime) and ts.tzinfo is not None:
        s = ts.timestamp()
    else:
        return "bad_ts"
    if s < T2000:
        return "ts_too_old"
    if s > ARRIVAL + SKEW:
        return "ts_in_future"
    return s

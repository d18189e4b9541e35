"""Payload decoder (SPEC 2): every accepted form, every rejection with exact counts,
and hypothesis checks of the fast paths against a plain json.loads/cbor2 reference."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.ingest import decode as d
from edge_agent.ingest.decode import MAX_PAYLOAD, PayloadDecoder, parse_rfc3339
from tests.helpers.decode import RFC3339_BAD, RFC3339_OK, SKEW, T2000, run
from tests.helpers.decoders import ARRIVAL  # 2023-11-14T22:13:20.5Z


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# ---------------------------------------------------------------- accepted forms


@pytest.mark.parametrize("fmt", ["json", "auto"])
@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"21.5", 21.5),
        (b"-3", -3.0),
        (b"0", 0.0),
        (b"1e3", 1000.0),
        (b"-0.5E-2", -0.005),
        (b" \t\r\n7 \n", 7.0),  # JSON allows whitespace around the value
        (b"\xef\xbb\xbf5", 5.0),  # UTF-8 BOM, as json.loads(bytes) allows
        (b"12345678901234567890123", 1.2345678901234568e22),
    ],
)
def test_bare_number(fmt: str, text: bytes, value: float) -> None:
    assert run(fmt, text) == ([("s/dev1", ARRIVAL, value)], {})


@pytest.mark.parametrize(
    "text",
    [
        b"1_0",
        b" 5x",
        b"inf",
        b"0x10",
        b"+1",
        b"01",
        b".5",
        b"5.",
        b"1e",
        b"--1",
        b"\x0b5",
        b"5\x0c",
    ],
)
def test_python_numbers_that_are_not_json(text: bytes) -> None:
    assert run("json", text) == ([], {"bad_json": 1})


def test_object_with_value_ignores_other_fields() -> None:
    payload = b'{"ts": 1700000000.25, "value": 21.5, "unit": "C", "x": [1], "y": true, "z": 4}'
    assert run("json", payload) == ([("s/dev1", 1700000000.25, 21.5)], {})


def test_object_with_value_without_ts_uses_arrival() -> None:
    assert run("json", b'{"value": 3}') == ([("s/dev1", ARRIVAL, 3.0)], {})


def test_object_without_value_one_reading_per_number_field() -> None:
    payload = b'{"ts": 1700000000.25, "id": "dev1", "temp": 21.5, "hum": 40}'
    assert run("json", payload) == (
        [("s/dev1/temp", 1700000000.25, 21.5), ("s/dev1/hum", 1700000000.25, 40.0)],
        {},
    )


def test_bad_fields_do_not_reject_their_siblings() -> None:
    payload = (
        b'{"a": 1, "b": true, "c": null, "d": [1], "e": {"f": 1}, "g": NaN,'
        b' "h": -Infinity, "i": "meta", "j": 2.5, "k": false}'
    )
    assert run("json", payload) == (
        [("s/dev1/a", ARRIVAL, 1.0), ("s/dev1/j", ARRIVAL, 2.5)],
        {"bad_field": 5, "non_finite": 2},
    )


def test_object_of_strings_only_yields_nothing() -> None:
    assert run("json", b'{"id": "dev1", "ts": 1700000000, "fw": "1.2"}') == ([], {"no_reading": 1})
    assert run("json", b"{}") == ([], {"no_reading": 1})
    assert run("json", b'{"ts": 1700000000}') == ([], {"no_reading": 1})


def test_numeric_string_field_is_metadata_but_numeric_string_value_is_rejected() -> None:
    assert run("json", b'{"a": "5", "b": 6}') == ([("s/dev1/b", ARRIVAL, 6.0)], {})
    assert run("json", b'{"value": "5"}') == ([], {"not_a_number": 1})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"true", "not_a_number"),
        (b"false", "not_a_number"),
        (b"null", "not_a_number"),
        (b'"21.5"', "not_a_number"),
        (b"[21.5]", "not_a_number"),
        (b'{"x": 1}', "not_a_number"),
        (b"NaN", "non_finite"),
        (b"Infinity", "non_finite"),
        (b"-Infinity", "non_finite"),
        (b"1e400", "non_finite"),
        (b"1" + b"0" * 400, "non_finite"),  # an int beyond float range
    ],
)
def test_value_must_be_a_finite_number(value: bytes, reason: str) -> None:
    assert run("json", b'{"ts": 1700000000, "value": ' + value + b"}") == ([], {reason: 1})
    if not value.startswith(b"{"):  # the same as a bare payload
        assert run("json", value) == ([], {reason: 1})


@pytest.mark.parametrize(
    "payload", [b'"x"', b"[]", b"[1, 2]", b"true", b"false", b"null", b'"21.5"']
)
def test_top_level_non_numbers_are_rejected_once(payload: bytes) -> None:
    assert run("auto", payload) == ([], {"not_a_number": 1})


@pytest.mark.parametrize(
    ("fmt", "payload", "reason"),
    [
        ("json", b"", "bad_json"),
        ("json", b"{", "bad_json"),
        ("json", b'{"value": 1} 2', "bad_json"),
        ("json", b"\xff\xfe", "bad_json"),
        ("json", b"\x80abc", "bad_json"),  # not UTF-8
        ("json", b"[" * 100_00, "bad_json"),  # deep nesting: RecursionError inside json
        ("cbor", b"", "bad_cbor"),
        ("cbor", b"\xa1", "bad_cbor"),
        ("cbor", b"\x01\x02", "bad_cbor"),  # trailing bytes after one item
        ("cbor", b"\x9a\xff\xff\xff\xff", "bad_cbor"),  # a huge array header, no data
        ("cbor", b"\xa1\x01\x02", "bad_cbor"),  # integer map key
        ("cbor", b"21.5", "bad_cbor"),
        ("auto", b"", "bad_payload"),
        ("auto", b"{", "bad_payload"),
        ("auto", b"5 x", "bad_payload"),  # CBOR would be -22 and trailing bytes
    ],
)
def test_undecodable_payloads(fmt: str, payload: bytes, reason: str) -> None:
    assert run(fmt, payload) == ([], {reason: 1})


# ---------------------------------------------------------------- size limit


def _padded_number(size: int) -> bytes:
    return b"21.5" + b" " * (size - 4)


@pytest.mark.parametrize("fmt", ["json", "auto"])
def test_max_payload_boundary(fmt: str) -> None:
    assert d.MAX_PAYLOAD == 65536
    assert run(fmt, _padded_number(MAX_PAYLOAD)) == ([("s/dev1", ARRIVAL, 21.5)], {})
    assert run(fmt, _padded_number(MAX_PAYLOAD + 1)) == ([], {"too_large": 1})


def test_too_large_counts_once_however_many_readings() -> None:
    fields = {f"f{i}": i for i in range(10_000)}
    payload = js(fields)
    assert len(payload) > MAX_PAYLOAD
    assert run("json", payload) == ([], {"too_large": 1})
    cbor = cbor2.dumps({"value": 1, "pad": "x" * MAX_PAYLOAD})
    assert run("cbor", cbor) == ([], {"too_large": 1})
    assert run("tests.helpers.decoders:triple_decoder", b"x" * (MAX_PAYLOAD + 1)) == (
        [],
        {"too_large": 1},
    )


# ---------------------------------------------------------------- timestamps


def value_at(ts: Any) -> bytes:
    return js({"ts": ts, "value": 1})


@pytest.mark.parametrize(
    ("ts", "seconds"),
    [
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000.25, 1_700_000_000.25),
        (1_700_000_000_250, 1_700_000_000.25),  # ms
        (1_700_000_000_250_000, 1_700_000_000.25),  # µs
        (1_700_000_000_250_000_000, 1_700_000_000.25),  # ns
        (1_700_000_000_123_456_789, 1_700_000_000.123456789),
        (1.7000000002505e12, 1_700_000_000.2505),
    ],
)
def test_numeric_ts_units(ts: float, seconds: float) -> None:
    assert run("json", value_at(ts)) == ([("s/dev1", seconds, 1.0)], {})


@pytest.mark.parametrize(
    ("ts", "seconds"),
    [
        (99_999_999_999, 99_999_999_999.0),  # just below 1e11: seconds (year 5138)
        (1e11 - 0.5, 1e11 - 0.5),
        (100_000_000_000, 100_000_000.0),  # 1e11: milliseconds
        (1e11, 1e8),
        (99_999_999_999_999, 99_999_999_999.999),  # below 1e14: ms
        (100_000_000_000_000, 100_000_000.0),  # 1e14: µs
        (99_999_999_999_999_999, 99_999_999_999.999999),  # below 1e17: µs
        (100_000_000_000_000_000, 100_000_000.0),  # 1e17: ns
        (1e17, 1e8),
    ],
)
def test_numeric_ts_unit_boundaries(ts: float, seconds: float) -> None:
    # Huge arrival and skew so that the range checks do not get in the way;
    # seconds below 2000 are then checked to be "too old" with the right unit.
    out, rejects = run("json", value_at(ts), arrival=2e11, skew=1e12)
    if seconds < T2000:
        assert (out, rejects) == ([], {"ts_too_old": 1})
        out, rejects = run("json", js({"ts": ts, "x": 1, "y": 2}), arrival=2e11, skew=1e12)
        assert (out, rejects) == ([], {"ts_too_old": 2})
    else:
        assert (out, rejects) == ([("s/dev1", seconds, 1.0)], {})


def test_ts_range() -> None:
    assert run("json", value_at(T2000)) == ([("s/dev1", T2000, 1.0)], {})
    assert run("json", value_at(T2000 - 0.001)) == ([], {"ts_too_old": 1})
    assert run("json", value_at(0)) == ([], {"ts_too_old": 1})
    assert run("json", value_at(-5)) == ([], {"ts_too_old": 1})
    edge = ARRIVAL + SKEW
    assert run("json", value_at(edge)) == ([("s/dev1", edge, 1.0)], {})
    assert run("json", value_at(edge + 0.001)) == ([], {"ts_in_future": 1})
    assert run("json", value_at("2000-01-01T00:00:00Z")) == ([("s/dev1", T2000, 1.0)], {})
    assert run("json", value_at("1999-12-31T23:59:59.999Z")) == ([], {"ts_too_old": 1})
    assert run("json", value_at("2000-01-01T00:30:00+01:00")) == ([], {"ts_too_old": 1})


def test_ts_rejections_count_each_reading() -> None:
    many = {"a": 1, "b": 2.5, "c": 3, "id": "x", "bad": True}
    assert run("json", js({"ts": 9e8, **many})) == ([], {"ts_too_old": 3, "bad_field": 1})
    assert run("json", js({"ts": ARRIVAL + 1e4, **many})) == (
        [],
        {"ts_in_future": 3, "bad_field": 1},
    )
    assert run("json", js({"ts": "yesterday", **many})) == ([], {"bad_ts": 3, "bad_field": 1})
    assert run("json", js({"ts": True, **many})) == ([], {"bad_ts": 3, "bad_field": 1})
    assert run("json", js({"ts": "yesterday", "value": 1, "a": 2})) == ([], {"bad_ts": 1})


@pytest.mark.parametrize(
    "ts",
    [True, False, None, [1700000000], {"s": 1}, "", "1700000000", "NaN"],
)
def test_bad_ts_values(ts: Any) -> None:
    assert run("json", value_at(ts)) == ([], {"bad_ts": 1})
    assert run("cbor", cbor2.dumps({"ts": ts, "value": 1})) == ([], {"bad_ts": 1})


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_ts_is_bad(token: bytes) -> None:
    assert run("json", b'{"ts": ' + token + b', "value": 1, "a": 2}') == ([], {"bad_ts": 1})
    assert run("json", b'{"ts": ' + token + b', "a": 1, "b": 2}') == ([], {"bad_ts": 2})


def test_ts_int_beyond_float_range() -> None:
    assert run("json", b'{"ts": 1' + b"0" * 400 + b', "value": 1}') == ([], {"bad_ts": 1})
    assert run("json", b'{"ts": -1' + b"0" * 400 + b', "value": 1}') == ([], {"bad_ts": 1})


@pytest.mark.parametrize(("text", "seconds"), RFC3339_OK)
def test_rfc3339_accepted(text: str, seconds: float) -> None:
    # exact: the fraction is not cut to microseconds (a float at 1.7e9 resolves ~0.24 µs)
    assert parse_rfc3339(text) == seconds
    assert run("json", value_at(text), arrival=seconds, skew=0) == ([("s/dev1", seconds, 1.0)], {})


@pytest.mark.parametrize("text", RFC3339_BAD)
def test_rfc3339_rejected(text: str) -> None:
    assert parse_rfc3339(text) is None
    assert run("json", value_at(text)) == ([], {"bad_ts": 1})


@settings(max_examples=300)
@given(
    moment=st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    offset_minutes=st.integers(-23 * 60 - 59, 23 * 60 + 59),
    digits=st.integers(0, 12),
    t=st.sampled_from("Tt"),
    z=st.sampled_from(["Z", "z", "offset"]),
)
def test_rfc3339_matches_datetime(
    moment: datetime, offset_minutes: int, digits: int, t: str, z: str
) -> None:
    if z == "offset":
        tz = timezone(timedelta(minutes=offset_minutes))
        local = moment.astimezone(tz)
        sign = "-" if offset_minutes < 0 else "+"
        suffix = f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    else:
        local, suffix = moment, z
    fraction = f".{local.microsecond:06d}{'7' * max(0, digits - 6)}"[: digits + 1] if digits else ""
    text = local.strftime("%Y-%m-%d") + t + local.strftime("%H:%M:%S") + fraction + suffix
    if local.year < 1000:
        text = f"{local.year:04d}" + text[text.index("-") :]
    expected = Fraction(int(moment.replace(microsecond=0).timestamp())) + (
        Fraction("0" + fraction) if fraction else 0
    )
    got = parse_rfc3339(text)
    assert got is not None, text
    assert abs(Fraction(got) - expected) <= Fraction(1, 10**6) * max(1, abs(expected) / 1e9)


# ---------------------------------------------------------------- CBOR and dispatch


def test_cbor_forms() -> None:
    assert run("cbor", cbor2.dumps(21.5)) == ([("s/dev1", ARRIVAL, 21.5)], {})
    assert run("cbor", cbor2.dumps(-7)) == ([("s/dev1", ARRIVAL, -7.0)], {})
    assert run("cbor", cbor2.dumps({"ts": 1700000000.25, "value": 21.5})) == (
        [("s/dev1", 1700000000.25, 21.5)],
        {},
    )
    assert run("cbor", cbor2.dumps({"ts": 1700000000250, "id": "d", "t": 1, "h": 2.5})) == (
        [("s/dev1/t", 1700000000.25, 1.0), ("s/dev1/h", 1700000000.25, 2.5)],
        {},
    )
    # half-precision float, as a small encoder would send it
    assert run("cbor", b"\xf9\x3e\x00") == ([("s/dev1", ARRIVAL, 1.5)], {})
    # a bignum (tag 2) is an integer in CBOR's data model
    assert run("cbor", b"\xc2\x41\x05") == ([("s/dev1", ARRIVAL, 5.0)], {})
    # indefinite-length map
    assert run("cbor", b"\xbf\x61a\x01\xff") == ([("s/dev1/a", ARRIVAL, 1.0)], {})


def test_cbor_ts_forms() -> None:
    when = datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)
    assert run("cbor", cbor2.dumps({"ts": when, "value": 1})) == (
        [("s/dev1", 1700000000.25, 1.0)],
        {},
    )
    tag1 = cbor2.dumps({"ts": cbor2.CBORTag(1, 1700000000), "value": 1})
    assert run("cbor", tag1) == ([("s/dev1", 1700000000.0, 1.0)], {})
    assert run("cbor", cbor2.dumps({"ts": "2023-11-14T22:13:20Z", "value": 1})) == (
        [("s/dev1", 1700000000.0, 1.0)],
        {},
    )
    assert run("cbor", cbor2.dumps({"ts": b"\x01", "value": 1})) == ([], {"bad_ts": 1})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xf7", "not_a_number"),  # undefined
        (b"\xf6", "not_a_number"),  # null
        (b"\xf5", "not_a_number"),  # true
        (b"\x43abc", "not_a_number"),  # byte string
        (b"\xe0", "not_a_number"),  # simple value 0
        (b"\xd9\x03\xe8\x01", "not_a_number"),  # unknown tag 1000 around 1
        (cbor2.dumps(cbor2.CBORTag(4, [-1, 215])), "not_a_number"),  # decimal fraction
        (b"\xf9\x7c\x00", "non_finite"),  # half-precision infinity
        (b"\xfb" + struct.pack(">d", math.nan), "non_finite"),
    ],
)
def test_cbor_odd_values(payload: bytes, reason: str) -> None:
    assert run("cbor", payload) == ([], {reason: 1})
    value = cbor2.dumps({"value": 0})[:-1] + payload
    assert run("cbor", value) == ([], {reason: 1})


def test_cbor_odd_fields_are_bad_fields() -> None:
    payload = cbor2.dumps(
        {"a": 1, "u": cbor2.undefined, "b": b"raw", "n": None, "tag": cbor2.CBORTag(1000, 1)}
    )
    assert run("cbor", payload) == ([("s/dev1/a", ARRIVAL, 1.0)], {"bad_field": 4})
    # a byte-string key is a bad field whatever its value, except string metadata
    assert run("cbor", cbor2.dumps({b"k": 1, b"m": "meta", "a": 2})) == (
        [("s/dev1/a", ARRIVAL, 2.0)],
        {"bad_field": 1},
    )


def test_cbor_shared_references_do_not_leak_between_messages() -> None:
    decoder = PayloadDecoder("cbor", SKEW)
    out: list[tuple[str, float, float]] = []
    rejects: Counter[str] = Counter()
    shared = b"\xd8\x1c\x05"  # tag 28: mark shareable, value 5
    assert decoder.decode("t", shared, None, ARRIVAL, out, rejects) == 0
    assert decoder.decode("t", b"\xd8\x1d\x00", None, ARRIVAL, out, rejects) == 1  # tag 29: ref 0
    assert out == [("t", ARRIVAL, 5.0)]
    assert rejects == Counter({"bad_cbor": 1})
    # nor after a message that failed half-way through a shared value or a namespace
    for broken, reference in [
        (b"\xd8\x1c\x82\x01", b"\xd8\x1d\x00"),
        (b"\xd9\x01\x00\x82\x63abc", b"\xd8\x19\x00"),
    ]:
        assert decoder.decode("t", broken, None, ARRIVAL, out, rejects) == 1
        assert decoder.decode("t", reference, None, ARRIVAL, out, rejects) == 1
    assert decoder.decode("t", b"\x07", None, ARRIVAL, out, rejects) == 0
    assert out == [("t", ARRIVAL, 5.0), ("t", ARRIVAL, 7.0)]
    assert rejects == Counter({"bad_cbor": 5})


@pytest.mark.parametrize(
    ("content_type", "is_cbor"),
    [
        (None, False),
        ("application/json", False),
        ("text/plain", False),
        ("application/cbor", True),
        ("APPLICATION/CBOR", True),
        ("application/cbor; charset=binary", True),
        ("Application/Cbor;x=y", True),
        ("  application/cbor  ", True),
        ("application/cbor-seq", False),
        ("application/cbor+x", False),
    ],
)
def test_auto_content_type_dispatch(content_type: str | None, is_cbor: bool) -> None:
    cbor = cbor2.dumps({"value": 2})
    assert run("auto", cbor, content_type=content_type) == ([("s/dev1", ARRIVAL, 2.0)], {})
    # JSON text under a CBOR content type is decoded as CBOR, and fails
    expected: tuple[list[Any], dict[str, int]] = (
        ([], {"bad_cbor": 1}) if is_cbor else ([("s/dev1", ARRIVAL, 3.0)], {})
    )
    assert run("auto", b'{"value": 3}', content_type=content_type) == expected


def test_fixed_formats_ignore_content_type() -> None:
    assert run("json", b'{"value": 3}', content_type="application/cbor") == (
        [("s/dev1", ARRIVAL, 3.0)],
        {},
    )
    assert run("json", cbor2.dumps({"value": 2})) == ([], {"bad_json": 1})
    assert run("cbor", b'{"value": 3}', content_type="application/json") == ([], {"bad_cbor": 1})


def test_auto_falls_back_to_cbor_when_not_json() -> None:
    assert run("auto", cbor2.dumps({"ts": 1700000000, "value": 2.5})) == (
        [("s/dev1", 1700000000.0, 2.5)],
        {},
    )
    # valid JSON wins even when it would also be valid CBOR ("1" is CBOR -18)
    assert run("auto", b"1") == ([("s/dev1", ARRIVAL, 1.0)], {})
    assert run("auto", b"NaN") == ([], {"non_finite": 1})

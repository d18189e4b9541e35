"""Payload decoder (SPEC 2): every accepted form, every rejection with exact counts,
and hypothesis checks of the fast paths against a plain json.loads/cbor2 reference."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_agent.errors import ConfigError
from edge_agent.ingest.decode import PayloadDecoder
from tests.helpers.decode import RFC3339_BAD, RFC3339_OK, SKEW, reference, run
from tests.helpers.decoders import ARRIVAL  # 2023-11-14T22:13:20.5Z

# ---------------------------------------------------------------- custom decoders


def test_custom_decoder_module_function() -> None:
    payload = b"tuple a 1700000000.5 1\nmap b 1700000000250 2\ntuple c - 3\nmap d - 4\n"
    assert run("tests.helpers.decoders:triple_decoder", payload) == (
        [
            ("a", 1700000000.5, 1.0),
            ("b", 1700000000.25, 2.0),
            ("c", ARRIVAL, 3.0),
            ("d", ARRIVAL, 4.0),
        ],
        {},
    )


def test_custom_decoder_validation() -> None:
    assert run("tests.helpers.decoders:odd_decoder", b"") == (
        [("m", 1_700_000_000.0, 0.25), ("l", 1_700_000_000.0, 2.0)],
        {
            "not_a_number": 2,
            "non_finite": 1,
            "bad_ts": 2,
            "bad_reading": 5,
            "ts_too_old": 1,
            "ts_in_future": 1,
        },
    )


def test_custom_decoder_errors_count_once_and_go_on() -> None:
    decoder = PayloadDecoder("tests.helpers.decoders:broken_decoder", SKEW)
    out: list[tuple[str, float, float]] = []
    rejects: Counter[str] = Counter()
    for _ in range(3):
        assert decoder.decode("t", b"x", None, ARRIVAL, out, rejects) == 1
    assert out == []
    assert rejects == Counter({"decoder_error:ValueError": 3})
    # a decoder that fails half-way rejects its whole message
    assert run("tests.helpers.decoders:half_broken_decoder", b"x") == (
        [],
        {"decoder_error:KeyError": 1},
    )
    assert run("tests.helpers.decoders:empty_decoder", b"x") == ([], {"no_reading": 1})


@pytest.mark.parametrize(
    "spec",
    [
        "tests.helpers.decoders:no_such_function",
        "tests.no_such_module:f",
        "tests.helpers.decoders:not_callable",
        "tests.helpers.decoders:",
        ":f",
        "xml",
        "JSON",
    ],
)
def test_custom_decoder_that_cannot_load(spec: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(spec))):
        PayloadDecoder(spec, SKEW)


def test_custom_decoder_from_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "site" / "fake_decoders-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-decoders\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[edge_agent.decoders]\ntriples = tests.helpers.decoders:triple_decoder\n"
        "broken = tests.no_such_module:f\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert run("triples", b"tuple a 1700000000 1") == ([("a", 1700000000.0, 1.0)], {})
    with pytest.raises(ConfigError, match="no_such_module"):
        PayloadDecoder("broken", SKEW)


def check_against_reference(fmt: str, payload: bytes, content_type: str | None = None) -> None:
    out: list[tuple[str, float, float]] = []
    rejects: Counter[str] = Counter()
    n = PayloadDecoder(fmt, SKEW).decode("top/ic", payload, content_type, ARRIVAL, out, rejects)
    ref_out, ref_rejects = reference(fmt, "top/ic", payload, content_type)
    assert out == ref_out
    assert rejects == ref_rejects
    assert n == sum(ref_rejects.values())
    for _key, ts, value in out:
        assert type(ts) is float and type(value) is float


NUMBERISH = st.text(alphabet="0123456789-+.eE_ xinfaNIty\t\n\r\x0b", max_size=12)
TS_STRINGS = st.sampled_from([t for t, _ in RFC3339_OK] + RFC3339_BAD)
TS_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
    st.floats(min_value=9e8, max_value=2e18),
    st.integers(min_value=900_000_000, max_value=1_700_001_000_000_000_000),
    TS_STRINGS,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**1100), max_value=2**1100),
    st.floats(),
    st.text(max_size=5),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELD_NAMES = st.sampled_from(["value", "ts", "a", "b", "id", "t/x", "Value", ""]) | st.text(
    max_size=4
)
OBJECTS = st.dictionaries(FIELD_NAMES, st.one_of(JSON_VALUES, TS_VALUES), max_size=6)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(text=NUMBERISH)
@example(text="-0")
@example(text="1_0")
@example(text=" 5 ")
@example(text="\x0b5")
def test_bare_number_text_matches_json_loads(text: str) -> None:
    for fmt in ("json", "auto"):
        check_against_reference(fmt, text.encode())


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    obj=st.one_of(OBJECTS, JSON_VALUES),
    indent=st.sampled_from([None, 0, 2]),
    pad=st.sampled_from(["", " ", "\n\t ", "\r\n"]),
)
def test_json_objects_match_reference(obj: Any, indent: int | None, pad: str) -> None:
    payload = (pad + json.dumps(obj, indent=indent) + pad).encode()
    for fmt in ("json", "auto"):
        check_against_reference(fmt, payload)
    # the same document in UTF-16 goes through json.loads' own encoding detection
    check_against_reference("json", json.dumps(obj).encode("utf-16"))


CBOR_EXTRA = st.sampled_from(
    [
        cbor2.undefined,
        b"bytes",
        datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        cbor2.CBORTag(1000, 1),
    ]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    obj=st.one_of(
        st.dictionaries(
            FIELD_NAMES | st.binary(max_size=2),
            st.one_of(JSON_VALUES, TS_VALUES, CBOR_EXTRA),
            max_size=5,
        ),
        JSON_VALUES,
        CBOR_EXTRA,
    ),
    content_type=st.sampled_from([None, "application/cbor", "application/json"]),
)
def test_cbor_objects_match_reference(obj: Any, content_type: str | None) -> None:
    payload = cbor2.dumps(obj)
    for fmt in ("cbor", "auto"):
        check_against_reference(fmt, payload, content_type)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=64), content_type=st.sampled_from([None, "application/cbor"]))
@example(payload=b"\xc4\x00", content_type=None)  # tag 4 around 0: not a number, not bad CBOR
def test_arbitrary_bytes_never_raise(payload: bytes, content_type: str | None) -> None:
    for fmt in ("json", "cbor", "auto"):
        check_against_reference(fmt, payload, content_type)


@pytest.mark.parametrize(
    "text",
    [
        b"NaN",
        b"-Infinity",
        b'{"value": NaN}',
        b'"\\ud800"',
        b"\xef\xbb\xbf5",
        b"1" + b"0" * 400,
        b"1e400",
        b'{"a": 1, "a": 2}',
        b" 21.5 ",
        b"-0",
        b"5e-324",
        b"[1, 2]",
        b"123456789012345678901234567890",
    ],
)
def test_json_parse_is_json_loads_whichever_parser_answers(text: bytes) -> None:
    # orjson answers first and is stricter; what it refuses goes to the stdlib path.
    from edge_agent.ingest.decode import _parse_json

    got, want = _parse_json(text), json.loads(text)
    assert repr(got) == repr(want) or (
        isinstance(want, int) and want > 2**64 and got == float(want)
    )

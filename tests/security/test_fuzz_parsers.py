"""Issue 13: property-based fuzzing of every parser that takes bytes from outside.

Readings (JSON, CBOR), firmware-bridge frames (lines, NMEA *HH, COBS + CRC-16 + CBOR,
datagrams), and config files (agent and bridge, environment overrides). The property
each time: nothing escapes as an unhandled exception, and everything is counted or
answered with the parser's own clear error. HTTP requests to both servers are fuzzed
over real sockets in test_fuzz_http.py.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
from collections import Counter
from typing import Any

import cbor2
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from edge_agent.config import _PIPELINE, _SCHEMA, config_from_text
from edge_agent.errors import ConfigError
from edge_agent.ingest.decode import PayloadDecoder
from firmware_bridge.bridge import FramePath
from firmware_bridge.codec import cobs_encode, crc16, xor8
from firmware_bridge.config import parse_config as bridge_config
from firmware_bridge.frames import FrameDecoder, encode_binary_frame

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- values from outside -----------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
keys = st.sampled_from(["ts", "value", "id", "seq", "up", "temp", "", "\x00"]) | st.text(max_size=8)
json_like = st.recursive(
    scalars.filter(lambda v: not isinstance(v, bytes)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)
SPECIALS = [
    cbor2.CBORTag(0, "2020-01-01T00:00:00"),
    cbor2.CBORTag(1, 1e300),
    cbor2.CBORTag(1, "x"),
    cbor2.CBORTag(2, b"\xff" * 40),
    cbor2.CBORTag(4, [1, 2]),
    cbor2.CBORTag(30, [1, 0]),
    cbor2.CBORTag(258, [1, 1]),
    cbor2.CBORTag(9999, None),
    cbor2.CBORSimpleValue(99),
    cbor2.undefined,
    datetime.datetime(2020, 1, 1),
    10**5000,
]


def _special(i: int) -> Any:
    return SPECIALS[i]


# by index: hypothesis cannot repr an int of 5,000 digits
cbor_leaf = scalars | st.integers(0, len(SPECIALS) - 1).map(_special)
cbor_like = st.recursive(
    cbor_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=5)
        | st.builds(cbor2.CBORTag, st.integers(0, 2**16), inner)
    ),
    max_leaves=20,
)


def _cbor_bytes(obj: Any) -> bytes:
    try:
        return cbor2.dumps(obj, timezone=datetime.UTC)
    except Exception:
        return b"\xa0"  # not encodable at all: an empty map instead


# -- readings: JSON and CBOR payloads ----------------------------------------------------


def _decode_all(payload: bytes, content_type: str | None) -> None:
    for fmt in ("json", "cbor", "auto"):
        dec = PayloadDecoder(fmt, 300.0)
        out: list[tuple[str, float, float]] = []
        rejects: Counter[str] = Counter()
        n = dec.decode("s/a", payload, content_type, 1.7e9, out, rejects)
        assert n == sum(rejects.values()) or n >= 0
        assert out or rejects, "a message that yields nothing must be counted"
        for key, ts, value in out:
            assert isinstance(key, str) and math.isfinite(ts) and math.isfinite(value)


@FUZZ
@given(st.binary(max_size=300), st.none() | st.sampled_from(["application/cbor", "x", ""]))
@example(b'{"value": 1' + b"0" * 5000 + b"}", None)  # an int past the 4300-digit limit
@example(b"[" * 100_000, None)
@example(b"\x81" * 100_000, "application/cbor")
def test_readings_arbitrary_bytes(payload: bytes, content_type: str | None) -> None:
    _decode_all(payload, content_type)


@FUZZ
@given(json_like)
def test_readings_json_shapes(obj: Any) -> None:
    try:
        payload = json.dumps(obj).encode()
    except (ValueError, TypeError):
        assume(False)
    _decode_all(payload, None)


@FUZZ
@given(cbor_like)
def test_readings_cbor_shapes(obj: Any) -> None:
    _decode_all(_cbor_bytes(obj), "application/cbor")


# -- firmware-bridge frames ---------------------------------------------------------------


def _frame_path(fmt: str, clock: str) -> tuple[FramePath, list[tuple[str, bytes, Any]]]:
    cfg = bridge_config(f'[frames]\nformat = "{fmt}"\n[clock]\nmode = "{clock}"\nfield = "up"\n')
    out: list[tuple[str, bytes, Any]] = []
    return FramePath(cfg, lambda t, p, props: out.append((t, p, props)), wall=lambda: 1.7e9), out


def _all_counted(fp: FramePath, out: list[Any]) -> None:
    assert fp.frames_in == len(out) + sum(fp.dropped.values()), (fp.frames_in, fp.dropped)


CLOCKS = st.sampled_from(["arrival", "board", "uptime_ms"])


@FUZZ
@given(
    st.lists(st.binary(max_size=200), max_size=8),
    st.sampled_from(["auto", "json", "kv"]),
    CLOCKS,
    st.sampled_from(["optional", "required"]),
)
@example([b"a=\xc2\xb2\n"], "auto", "arrival", "optional")  # "²".isdigit(), int("²") raises
@example([b'{"id": 1' + b"0" * 5000 + b"}\n"], "auto", "arrival", "optional")
@example([b'{"id": "a", "up": 1' + b"0" * 400 + b"}\n"], "auto", "uptime_ms", "optional")
def test_bridge_text_stream(chunks: list[bytes], fmt: str, clock: str, checksum: str) -> None:
    dec = FrameDecoder(fmt, checksum, 1024)
    for c in chunks:
        for line in c.split(b"\n"):
            assert dec.text(line) is None or isinstance(dec.text(line), dict | str)
    fp, out = _frame_path(fmt, clock)
    fp.opened()
    for c in chunks:
        fp.stream(c, "ttyACM0")
    _all_counted(fp, out)


@FUZZ
@given(json_like, CLOCKS, st.booleans())
def test_bridge_json_lines_with_valid_checksums(obj: Any, clock: str, nmea: bool) -> None:
    """Well-framed lines around arbitrary JSON: the checksum passes, the content is fuzzed."""
    body = json.dumps(obj).encode()
    line = b"%s*%02X\n" % (body, xor8(body)) if nmea else body + b"\n"
    fp, out = _frame_path("auto", clock)
    fp.stream(line, "ttyACM0")
    fp.datagram(line, "10.0.0.7")
    _all_counted(fp, out)
    for _, payload, _ in out:
        json.loads(payload)  # what goes on is valid JSON


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=8), CLOCKS)
def test_bridge_binary_stream(chunks: list[bytes], clock: str) -> None:
    dec = FrameDecoder("cobs_cbor", "optional", 1024)
    for c in chunks:
        assert dec.binary(c) is None or isinstance(dec.binary(c), dict | str)
    fp, out = _frame_path("cobs_cbor", clock)
    for c in chunks:
        fp.stream(c, "ttyACM0")
        fp.datagram(c, "10.0.0.7")
    _all_counted(fp, out)


@FUZZ
@given(cbor_like | st.dictionaries(keys, cbor_like, max_size=6), CLOCKS)
@example({"id": "a", "t": datetime.datetime(2020, 1, 1)}, "arrival")  # naive: no CBOR encoding
@example({"id": "a", "up": 10**400}, "uptime_ms")  # too large for a float
def test_bridge_cobs_crc_frames_around_arbitrary_cbor(obj: Any, clock: str) -> None:
    """Valid COBS and CRC around arbitrary CBOR: the decoder sees the fuzzed content."""
    raw = _cbor_bytes(obj) if not isinstance(obj, dict) else None
    if raw is None:
        try:
            frame = encode_binary_frame(obj)
        except Exception:
            raw = _cbor_bytes(obj)
    if raw is not None:
        frame = cobs_encode(raw + crc16(raw).to_bytes(2, "big")) + b"\x00"
    fp, out = _frame_path("cobs_cbor", clock)
    fp.stream(frame, "ttyACM0")
    fp.datagram(frame, "10.0.0.7")
    _all_counted(fp, out)
    for _, payload, _ in out:
        cbor2.loads(payload)


def test_naive_datetime_in_a_cbor_frame_is_dropped_not_raised() -> None:
    """A tag-0 date without an offset decodes to a naive datetime that cbor2 cannot
    encode again: before the fix, CBOREncodeValueError escaped the frame path."""
    raw = cbor2.dumps({"id": "a", "t": cbor2.CBORTag(0, "2020-01-01T00:00:00")})
    frame = cobs_encode(raw + crc16(raw).to_bytes(2, "big")) + b"\x00"
    fp, out = _frame_path("cobs_cbor", "arrival")
    fp.stream(frame, "ttyACM0")
    _all_counted(fp, out)


def test_unicode_digit_in_a_kv_line_is_not_a_value_error() -> None:
    fp, out = _frame_path("kv", "arrival")
    fp.stream("a=\u00b2 b=1\n".encode(), "ttyACM0")
    _all_counted(fp, out)
    assert len(out) == 1 and json.loads(out[0][1])["a"] == "\u00b2"


# -- config files ---------------------------------------------------------------------------

toml_scalar = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "10s",
            "0s",
            "-1s",
            "1KiB",
            "0",
            "127.0.0.1:9100",
            "sensors/#",
            "tumbling",
            "session",
            "count",
            "p50",
            "",
            "20/s, 1MiB/s",
            "x/s",
        ]
    )
)
toml_value = st.recursive(toml_scalar, lambda v: st.lists(v, max_size=3), max_leaves=6)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "inf"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(_toml(x) for x in v) + "]"


@st.composite
def agent_configs(draw: st.DrawFn) -> str:
    lines = []
    for section in draw(st.lists(st.sampled_from([*_SCHEMA, "nope"]), max_size=5, unique=True)):
        lines.append(f"[{section}]")
        names = [*list(_SCHEMA.get(section, {"x": None})), "bogus"]
        for key in draw(st.lists(st.sampled_from(names), max_size=6, unique=True)):
            lines.append(f"{key} = {_toml(draw(toml_value))}")
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[pipeline]]")
        for key in draw(st.lists(st.sampled_from([*_PIPELINE, "bogus"]), max_size=8, unique=True)):
            lines.append(f"{key} = {_toml(draw(toml_value))}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(
    agent_configs(),
    st.dictionaries(
        st.sampled_from(
            [
                "EDGE_AGENT_UPSTREAM_HOST",
                "EDGE_AGENT_LOCAL_PORT",
                "EDGE_AGENT_AGENT_ID",
                "EDGE_AGENT_HEALTH_LISTEN",
                "EDGE_AGENT_BUFFER_MAX_BYTES",
                "EDGE_AGENT_X",
                "EDGE_AGENT_PIPELINE_NAME",
                "EDGE_AGENT_LOCAL_PASSWORD_FILE",
            ]
        ),
        st.text(max_size=12),
        max_size=3,
    ),
)
def test_agent_config_only_ever_raises_config_error(text: str, env: dict[str, str]) -> None:
    try:
        cfg = config_from_text(text, "/nonexistent/agent.toml", env)
    except ConfigError as e:
        assert str(e).startswith("/nonexistent/agent.toml"), str(e)
    else:
        assert cfg.pipelines and len(cfg.hash) == 12


@FUZZ
@given(st.text(max_size=400))
@example('[agent]\nid = "a"\n[[pipeline]]\nname = "\\ud800"\n')
def test_agent_config_arbitrary_text(text: str) -> None:
    with contextlib.suppress(ConfigError):
        config_from_text(text, "a.toml", {})


@FUZZ
@given(
    st.text(max_size=400)
    | st.builds(
        lambda sec, key, v: f"[{sec}]\n{key} = {_toml(v)}\n",
        st.sampled_from(["bridge", "source", "frames", "clock", "publish", "health", "x"]),
        st.sampled_from(
            [
                "kind",
                "path",
                "baud",
                "listen",
                "format",
                "checksum",
                "max_line",
                "mode",
                "field",
                "tolerance",
                "topic_template",
                "host",
                "port",
                "reopen_min",
                "y",
            ]
        ),
        toml_value,
    )
)
def test_bridge_config_only_ever_raises_config_error(text: str) -> None:
    from firmware_bridge.config import ConfigError as BridgeConfigError

    with contextlib.suppress(BridgeConfigError):
        bridge_config(text, "b.toml")

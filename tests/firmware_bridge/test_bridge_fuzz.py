"""Fuzzing what the bridge reads from an untrusted cable and from its config file.

Frames: every encoder/decoder pair round-trips; a stream of valid frames with noise
frames between them, cut into arbitrary chunks, gives back exactly the valid frames
in order, and every noise frame a counted drop reason (never an exception, never a
made-up reading). The expected values come from the frames the test built, and noise
is checked against an independent decoder written here.

Config: any text is either a BridgeConfig or a ConfigError that names the file and
a line, never another exception.
"""

from __future__ import annotations

import json
import math
import re
import string
from typing import Any

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import ConfigError
from firmware_bridge.codec import cobs_decode, crc16, xor8
from firmware_bridge.config import BridgeConfig, parse_config
from firmware_bridge.frames import (
    DROP_REASONS,
    FrameDecoder,
    Splitter,
    encode_binary_frame,
    encode_text_frame,
)

NAMES = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=8)
KV_TEXT = st.text(string.ascii_letters + "_-.:", min_size=1, max_size=10).filter(
    lambda s: not _looks_numeric(s)
)
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# -- round trips ----------------------------------------------------------------------


@given(
    st.dictionaries(
        NAMES, st.one_of(st.integers(-(10**12), 10**12), KV_TEXT), min_size=1, max_size=6
    ),
    st.booleans(),
)
def test_kv_frames_round_trip(obj: dict[str, Any], checksum: bool) -> None:
    line = encode_text_frame(" ".join(f"{k}={v}" for k, v in obj.items()), checksum)
    assert line.endswith(b"\n")
    assert FrameDecoder("kv").text(line[:-1]) == obj
    assert FrameDecoder("auto").text(line[:-1]) == obj


@given(st.floats(allow_nan=False, allow_infinity=False), NAMES)
def test_kv_float_values_round_trip(x: float, key: str) -> None:
    got = FrameDecoder("kv").text(encode_text_frame(f"{key}={x!r}")[:-1])
    assert isinstance(got, dict)
    assert got[key] == x or (x == int(x) and got[key] == int(x))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | FINITE | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6), st.booleans(), st.booleans())
def test_json_frames_round_trip(obj: dict[str, Any], checksum: bool, crlf: bool) -> None:
    line = encode_text_frame(json.dumps(obj, ensure_ascii=False), checksum)[:-1]
    if crlf:
        line += b"\r"  # Arduino's println
    dec = FrameDecoder("json", max_len=1 << 20)
    assert dec.text(line) == obj


CBOR_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64) + 1, 2**64 - 1)
    | FINITE
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=8), CBOR_VALUES, max_size=6))
def test_binary_frames_round_trip(obj: dict[str, Any]) -> None:
    frame = encode_binary_frame(obj)
    assert frame.endswith(b"\x00") and b"\x00" not in frame[:-1]  # COBS: one delimiter
    assert FrameDecoder("cobs_cbor", max_len=1 << 20).binary(frame[:-1]) == obj


# -- an independent view of noise -------------------------------------------------------------


def text_oracle(line: bytes) -> dict[str, Any] | None:
    """What a valid text frame decodes to, by the module's documented rules; None if it is not one."""
    line = line.removesuffix(b"\r")
    m = re.fullmatch(rb"(.*)\*([0-9A-Fa-f]{2})", line, re.S)
    if m:
        if xor8(m.group(1)) != int(m.group(2), 16):
            return None
        line = m.group(1)
    if not line:
        return None
    if line.startswith(b"{"):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return None
        return obj if isinstance(obj, dict) else None
    try:
        s = line.decode()
    except UnicodeDecodeError:
        return None
    if not s.isprintable() or "=" not in s:
        return None
    out: dict[str, Any] = {}
    for tok in s.split():
        k, eq, v = tok.partition("=")
        if not eq or not k:
            return None
        out[k] = v
    return out


def binary_oracle(frame: bytes) -> dict[str, Any] | None:
    raw = cobs_decode(frame)
    if raw is None or len(raw) < 3 or crc16(raw[:-2]) != int.from_bytes(raw[-2:], "big"):
        return None
    try:
        obj = cbor2.loads(raw[:-2])
    except Exception:
        return None
    return obj if isinstance(obj, dict) else None


@given(st.binary(max_size=300), st.sampled_from(["auto", "json", "kv"]), st.booleans())
def test_text_noise_is_a_drop_reason_or_what_the_oracle_reads(
    data: bytes, fmt: str, required: bool
) -> None:
    line = data.replace(b"\n", b"")
    got = FrameDecoder(fmt, checksum="required" if required else "optional").text(line)
    want = text_oracle(line)
    if got is None:
        assert line in (b"", b"\r")
    elif isinstance(got, str):
        assert got in DROP_REASONS, got
    else:
        assert want is not None, (line, got)  # never a reading out of noise
        assert got.keys() == want.keys()


@given(st.binary(max_size=300))
def test_binary_noise_is_a_drop_reason_or_a_valid_frame(data: bytes) -> None:
    frame = data.replace(b"\x00", b"")
    got = FrameDecoder("cobs_cbor").binary(frame)
    if got is None:
        assert frame == b""
    elif isinstance(got, str):
        assert got in DROP_REASONS, got
        assert binary_oracle(frame) is None or got == "malformed"
    else:
        assert got == binary_oracle(frame)


# -- a stream: frames, noise, arbitrary chunking ----------------------------------------------


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


TEXT_NOISE = st.binary(max_size=60).map(
    lambda b: b.replace(b"\n", b"").replace(b"=", b"").replace(b"{", b"")
)


@given(
    st.lists(
        st.one_of(
            st.dictionaries(NAMES, st.integers(-1000, 1000), min_size=1, max_size=4).map(
                lambda d: ("frame", d)
            ),
            TEXT_NOISE.map(lambda b: ("noise", b)),
        ),
        max_size=25,
    ),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_text_stream_with_noise_in_any_chunking(
    items: list[tuple[str, Any]], cuts: list[int]
) -> None:
    stream = b""
    want: list[dict[str, Any]] = []
    for kind, x in items:
        if kind == "frame":
            stream += encode_text_frame(" ".join(f"{k}={v}" for k, v in x.items()))
            want.append(x)
        else:
            stream += x + b"\n"  # no '=' and no '{': can never be a reading
    splitter, dec = Splitter(b"\n", 1024), FrameDecoder("auto")
    got: list[dict[str, Any]] = []
    drops: list[str] = []
    for chunk in _chunks(stream, cuts):
        for line in splitter.feed(chunk):
            r = dec.text(line)
            if isinstance(r, dict):
                got.append(r)
            elif isinstance(r, str):
                drops.append(r)
    assert got == want
    assert set(drops) <= set(DROP_REASONS)
    assert len(drops) <= sum(kind == "noise" for kind, _ in items)


@given(
    st.lists(
        st.one_of(
            st.dictionaries(NAMES, st.integers(), min_size=1, max_size=4).map(
                lambda d: ("frame", d)
            ),
            st.binary(min_size=1, max_size=60).map(
                lambda b: ("noise", b.replace(b"\x00", b"\x01"))
            ),
        ),
        max_size=25,
    ),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_binary_stream_with_noise_in_any_chunking(
    items: list[tuple[str, Any]], cuts: list[int]
) -> None:
    stream = b""
    want: list[dict[str, Any]] = []
    for kind, x in items:
        if kind == "frame":
            stream += encode_binary_frame(x)
            want.append(x)
        else:
            stream += x + b"\x00"
            if binary_oracle(x) is not None:  # noise that happens to be a valid frame
                want.append(binary_oracle(x))
    splitter, dec = Splitter(b"\x00", 1024), FrameDecoder("cobs_cbor")
    got: list[dict[str, Any]] = []
    for chunk in _chunks(stream, cuts):
        for frame in splitter.feed(chunk):
            r = dec.binary(frame)
            if isinstance(r, dict):
                got.append(r)
            else:
                assert r is None or r in DROP_REASONS, r
    assert got == want


@given(st.lists(st.binary(max_size=400), max_size=20), st.integers(8, 64))
def test_splitter_memory_is_bounded_by_max_len(chunks: list[bytes], max_len: int) -> None:
    s = Splitter(b"\n", max_len)
    for c in chunks:
        for frame in s.feed(c):
            assert b"\n" not in frame
        assert len(s._tail) <= max_len  # what it holds between chunks


# -- config ---------------------------------------------------------------------------------

SECTIONS = {
    "bridge": ["log_level", "name"],
    "source": [
        "kind",
        "path",
        "baud",
        "data_bits",
        "parity",
        "stop_bits",
        "listen",
        "reopen_min",
        "reopen_max",
    ],
    "frames": [
        "format",
        "checksum",
        "max_line",
        "default_id",
        "seq_field",
        "seq_modulus",
        "max_boards",
    ],
    "clock": ["mode", "field", "tolerance"],
    "publish": [
        "host",
        "port",
        "topic_template",
        "qos",
        "client_id",
        "queue_size",
        "when_full",
        "max_inflight",
        "reconnect_min",
        "reconnect_max",
        "keepalive",
    ],
    "health": ["listen"],
    "nope": ["x"],
}


def _toml_float(f: float) -> str:
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return repr(f)


TOML_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=True).map(_toml_float),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=20).map(json.dumps),
    st.sampled_from(
        [
            '"1s"',
            '"250ms"',
            '"-1s"',
            '"0s"',
            '"auto"',
            '"json"',
            '"kv"',
            '"cobs_cbor"',
            '"udp"',
            '"serial"',
            '"stdin"',
            '"127.0.0.1:0"',
            '":9101"',
            '"uptime_ms"',
            '"board"',
            '"required"',
            '"drop_newest"',
            "[]",
            "{}",
            '"sensors/{id}"',
            '"{nope}"',
            '"none"',
            '"even"',
            "7",
            "9600",
        ]
    ),
)


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(SECTIONS[section]), max_size=4, unique=True)):
            lines.append(f"{key} = {draw(TOML_VALUES)}")
    return "\n".join(lines) + "\n"


@given(st.one_of(config_texts(), st.text(max_size=200)))
def test_any_config_text_is_a_config_or_a_config_error_with_a_line(text: str) -> None:
    try:
        cfg = parse_config(text, "fuzz.toml")
    except ConfigError as e:
        assert re.match(r"fuzz\.toml:\d+: ", str(e)), str(e)
        line = int(str(e).split(":")[1])
        assert 0 <= line <= text.count("\n") + 1, (str(e), text)
    else:
        assert isinstance(cfg, BridgeConfig)
        assert cfg.source.reopen_min <= cfg.source.reopen_max
        assert cfg.publish.reconnect_min <= cfg.publish.reconnect_max

"""firmware_bridge without I/O: codecs, frame decoding, splitting, seq and clock logic, config."""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import ConfigError
from firmware_bridge.boards import BoardState, SeqResult, learn_offset, track_seq
from firmware_bridge.bridge import FramePath
from firmware_bridge.codec import cobs_decode, cobs_encode, crc16, xor8
from firmware_bridge.config import load_config, parse_config
from firmware_bridge.frames import (
    DROP_REASONS,
    FrameDecoder,
    Splitter,
    encode_binary_frame,
    encode_text_frame,
)

ROOT = Path(__file__).resolve().parents[2]

# ---- codecs ---------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_xor8_matches_bytewise_reference(data: bytes) -> None:
    assert xor8(data) == functools.reduce(operator.xor, data, 0)


def test_nmea_reference_sentence() -> None:
    # a real GPS sentence: NMEA XORs between '$' and '*'; we XOR the whole prefix
    assert xor8(b"GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,") == 0x76


def test_crc16_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1  # the catalogue's check value
    assert crc16(b"") == 0xFFFF


def _crc_reference(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


@given(st.binary(max_size=300))
def test_crc16_matches_bitwise_reference(data: bytes) -> None:
    assert crc16(data) == _crc_reference(data)


@given(st.binary(max_size=1200))
def test_cobs_round_trip_and_no_zero(data: bytes) -> None:
    enc = cobs_encode(data)
    assert b"\x00" not in enc
    assert cobs_decode(enc) == data


def test_cobs_golden_bytes() -> None:
    # examples from the COBS paper / Wikipedia
    assert cobs_encode(b"\x00") == b"\x01\x01"
    assert cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert cobs_encode(b"\x11\x00\x00\x00") == b"\x02\x11\x01\x01\x01"
    assert cobs_decode(b"\x05\x11") is None  # block claims more bytes than there are


def test_binary_frame_golden_bytes() -> None:
    frame = encode_binary_frame({"id": "a", "t": 1})
    cbor = bytes.fromhex("a2626964616161740" + "1")  # {"id": "a", "t": 1}
    crc = _crc_reference(cbor)
    assert cobs_decode(frame[:-1]) == cbor + bytes([crc >> 8, crc & 0xFF])  # CRC big-endian
    assert frame[-1:] == b"\x00" and b"\x00" not in frame[:-1]


# ---- decoding --------------------------------------------------------------------------

dec = FrameDecoder()


def test_json_kv_and_checksum_forms() -> None:
    assert dec.text(b'{"id":"dev1","ts":1700000000,"temp":21.5}') == {
        "id": "dev1",
        "ts": 1700000000,
        "temp": 21.5,
    }
    assert dec.text(b"id=dev1 temp=21.5 hum=40 state=ok t=-3\r") == {
        "id": "dev1",
        "temp": 21.5,
        "hum": 40,
        "state": "ok",
        "t": -3,
    }
    line = encode_text_frame("id=dev1 temp=21.5")
    assert line.endswith(b"*%02X\n" % xor8(b"id=dev1 temp=21.5"))
    assert dec.text(line[:-1]) == {"id": "dev1", "temp": 21.5}
    assert dec.text(encode_text_frame('{"id":"x","v":1}')[:-1]) == {"id": "x", "v": 1}
    assert dec.text(b"") is None and dec.text(b"\r") is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"id=dev1 temp=21.5*00", "checksum"),
        (b'{"id":"x","v":1}*7F', "checksum"),
        (b"\xff\xfe\x01garbage=\x00", "noise"),
        (b"\x1b[2Jhello", "noise"),
        (b"just words", "noise"),
        (b'{"id":"x", "v":', "malformed"),
        (b"[1,2,3]", "noise"),
        (b'{"\xff": 1}', "noise"),
        (b"{1: 2}", "malformed"),
        (b"id=dev1 broken", "malformed"),
        (b"=5", "malformed"),
        (b"x" * 1025, "too_long"),
    ],
)
def test_text_drop_reasons(line: bytes, reason: str) -> None:
    assert dec.text(line) == reason


def test_checksum_required_and_format_restrictions() -> None:
    assert FrameDecoder(checksum="required").text(b"id=a v=1") == "checksum"
    assert FrameDecoder(checksum="required").text(encode_text_frame("id=a v=1")[:-1]) == {
        "id": "a",
        "v": 1,
    }
    assert FrameDecoder("json").text(b"id=a v=1") == "malformed"
    assert FrameDecoder("kv").text(b'{"id":"a"}') == "malformed"


def test_binary_decoding_and_reasons() -> None:
    d = FrameDecoder("cobs_cbor")
    frame = encode_binary_frame({"id": "b1", "temp": 21.5, "seq": 3})[:-1]
    assert d.binary(frame) == {"id": "b1", "temp": 21.5, "seq": 3}
    flipped = frame[:4] + bytes([frame[4] ^ 0x01]) + frame[5:]
    assert d.binary(flipped) == "crc"
    assert d.binary(frame[:-3]) in ("crc",)
    raw = cbor2.dumps([1, 2])
    assert d.binary(cobs_encode(raw + crc16(raw).to_bytes(2, "big"))) == "malformed"
    assert d.binary(b"") is None


@given(st.binary(max_size=200))
def test_decoders_never_raise_on_noise(data: bytes) -> None:
    # None only for a blank line, a drop only for a counted reason, and a reading only
    # when the line really is one (test_bridge_fuzz checks readings against an oracle).
    line = data.replace(b"\n", b"")
    for fmt in ("auto", "json", "kv"):
        r = FrameDecoder(fmt).text(line)
        if r is None:
            assert line in (b"", b"\r")
        elif isinstance(r, str):
            assert r in DROP_REASONS, r
        else:
            assert b"=" in line or line.lstrip().startswith(b"{"), (line, r)
    frame = data.replace(b"\x00", b"")
    r = FrameDecoder("cobs_cbor").binary(frame)
    if r is None:
        assert frame == b""
    elif isinstance(r, str):
        assert r in DROP_REASONS, r
    else:
        raw = cobs_decode(frame)
        assert raw is not None and crc16(raw[:-2]) == int.from_bytes(raw[-2:], "big")


def test_splitter_bounds_over_long_lines() -> None:
    s = Splitter(b"\n", 10)
    assert s.feed(b"abc") == []
    assert s.feed(b"def\nxy") == [b"abcdef"]
    assert s.feed(b"z" * 50) == [] and s.too_long == 1  # given up while still arriving
    assert s.feed(b"z" * 50) == [] and s.too_long == 1  # counted once, nothing kept
    assert s.feed(b"zz\nok\n") == [b"ok"]


@given(
    st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    st.integers(1, 17),
)
def test_splitter_reassembles_any_chunking(lines: list[bytes], step: int) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    s = Splitter(b"\n", 1000)
    out: list[bytes] = []
    for i in range(0, len(stream), step):
        out += s.feed(stream[i : i + step])
    assert out == lines


# ---- sequence numbers and clocks --------------------------------------------------------


def _seq_reference(seqs: list[int]) -> tuple[int, int, int]:
    """lost, resets, duplicates, the slow obvious way (unbounded counter)."""
    lost = resets = dups = 0
    for prev, cur in itertools.pairwise(seqs):
        if cur == prev:
            dups += 1
        elif cur > prev:
            lost += cur - prev - 1
        else:
            resets += 1
            lost += cur  # frames 0..cur-1 of the rebooted board never arrived
    return lost, resets, dups


@given(st.lists(st.integers(0, 50), min_size=1, max_size=40))
def test_seq_tracking_matches_reference(seqs: list[int]) -> None:
    b = BoardState("x", "t")
    dups = sum(track_seq(b, s, 0) == SeqResult.DUPLICATE for s in seqs)
    assert (b.lost, b.resets, dups) == _seq_reference(seqs)


def test_seq_wraps_with_modulus() -> None:
    b = BoardState("x", "t")
    for s in (65533, 65534, 65535, 0, 1, 3):
        track_seq(b, s, 65536)
    assert (b.lost, b.resets) == (1, 0)
    track_seq(b, 10, 65536)  # small forward gap
    track_seq(b, 2, 65536)  # far backwards: a reset
    assert (b.lost, b.resets) == (1 + 6 + 2, 1)


def test_uptime_offset_learnt_kept_and_relearnt() -> None:
    b = BoardState("x", "t")
    assert learn_offset(b, 10.0, 1000.0, 2.0) == 1000.0  # first frame: offset 990
    assert learn_offset(b, 11.0, 1001.3, 2.0) == 1001.0  # latency jitter does not move it
    assert learn_offset(b, 20.0, 1012.5, 2.0) == 1012.5  # drift > 2 s: re-learnt
    assert b.relearns == 1
    assert learn_offset(b, 1.0, 1013.0, 2.0) == 1013.0  # uptime went back: board reset
    assert b.relearns == 2


def _path(**toml: str) -> tuple[FramePath, list[tuple[str, bytes, object]]]:
    out: list[tuple[str, bytes, object]] = []
    text = "".join(f"[{k}]\n{v}\n" for k, v in toml.items())
    fp = FramePath(parse_config(text), lambda *m: out.append(m), wall=lambda: 1000.0)
    return fp, out


def test_frame_path_stamps_and_strips() -> None:
    fp, out = _path(clock='mode = "uptime_ms"\nfield = "up"')
    fp.stream(b'{"id":"a","seq":0,"up":5000,"t":1}\n{"id":"a","seq":2,"up":6000,"t":2}\n', "tty")
    assert [json.loads(p) for _, p, _ in out] == [
        {"id": "a", "t": 1, "ts": 1000.0},
        {"id": "a", "t": 2, "ts": 1001.0},
    ]
    assert out[0][0] == "sensors/a"
    assert fp.boards["a"].lost == 1
    fp.stream(b'{"id":"a","up":"x"}\n{"id":"a","seq":2,"up":7000}\n', "tty")
    assert fp.dropped["malformed"] == 1 and fp.dropped["duplicate"] == 1


def test_frame_path_ids_and_clock_modes() -> None:
    fp, out = _path(clock='mode = "board"', publish='topic_template = "fw/{id}/data"')
    fp.stream(b"temp=1\n", "ttyACM0")  # no id: the device name
    fp.stream(b'{"id":7,"ts":1700000000.5,"v":1}\n{"id":"a/b","v":1}\n{"id":"+","v":1}\n', "t")
    assert [(t, json.loads(p)) for t, p, _ in out] == [
        ("fw/ttyACM0/data", {"temp": 1, "id": "ttyACM0", "ts": 1000.0}),
        ("fw/7/data", {"id": "7", "ts": 1700000000.5, "v": 1}),
    ]
    assert fp.dropped["malformed"] == 2


def test_first_line_after_open_may_be_torn() -> None:
    fp, out = _path()
    fp.opened()
    fp.stream(b"mp=21.5 hum=40\nid=a temp=1\n", "t")  # a bare kv first line cannot be trusted
    assert fp.dropped["partial"] == 1 and len(out) == 1
    fp.opened()
    fp.stream(b'{"id":"a","v":2}\n', "t")  # JSON cannot be a torn tail
    assert fp.dropped["partial"] == 1 and len(out) == 2
    fp.opened()
    fp.stream(b'","v":2}\n', "t")
    assert fp.dropped["partial"] == 2 and fp.frames_in == 4


def test_too_many_boards_bounded() -> None:
    fp, out = _path(frames="max_boards = 2")
    fp.stream(b"id=a v=1\nid=b v=1\nid=c v=1\nid=a v=2\n", "t")
    assert len(out) == 3 and fp.dropped["too_many_boards"] == 1 and len(fp.boards) == 2


def test_nan_passes_through_for_the_agent_to_reject() -> None:
    fp, out = _path()
    fp.stream(b"id=a v=nan w=1\n", "t")
    obj = json.loads(out[0][1])
    assert math.isnan(obj["v"]) and obj["w"] == 1


# ---- config ------------------------------------------------------------------------------


def test_example_config_loads_with_defaults() -> None:
    cfg = load_config(ROOT / "config" / "firmware-bridge.toml")
    assert cfg.source.path == "/dev/ttyACM0" and cfg.source.reopen_min == 0.1
    assert cfg.publish.topic_template == "sensors/{id}" and cfg.clock.tolerance == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[source]\nkind = "serial"\nbaud = "fast"\n',
            'x.toml:3: source.baud: expected an integer, got "fast"',
        ),
        ("[source]\nbaud = 12345\n", "x.toml:2: source.baud: unsupported baud rate 12345"),
        ("\n[frames]\nfoo = 1\n", "x.toml:3: frames.foo: unknown key"),
        ("[nope]\nx = 1\n", "x.toml:1: nope: unknown section"),
        (
            '[clock]\nmode = "gps"\n',
            'x.toml:2: clock.mode: expected one of arrival, board, uptime_ms, got "gps"',
        ),
        (
            '[clock]\ntolerance = "2 parsecs"\n',
            'x.toml:2: clock.tolerance: expected a duration such as "2s", got "2 parsecs"',
        ),
        ("[publish]\nqos = true\n", "x.toml:2: publish.qos: expected an integer, got True"),
        (
            '[publish]\ntopic_template = "sensors/#"\n',
            "x.toml:2: publish.topic_template: must contain {id} and no wildcards",
        ),
        (
            '[source]\nreopen_min = "10s"\nreopen_max = "1s"\n',
            "x.toml:3: source.reopen_max: smaller than reopen_min",
        ),
        (
            '[health]\nlisten = "nowhere"\n',
            'x.toml:2: health.listen: expected HOST:PORT, got "nowhere"',
        ),
        ("[source\n", "x.toml:1:"),
    ],
)
def test_config_errors_name_file_line_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "x.toml")
    assert str(e.value).startswith(message)

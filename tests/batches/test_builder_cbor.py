"""batches/builder.py's hand-written CBOR heads against cbor2 (RFC 8949 3.1).

encode_batch splices pre-encoded records behind heads it writes itself; the result
must be byte-for-byte what cbor2 makes of the same map, at every head-size boundary
(23/24 records: 1 -> 2 bytes; 255/256: 2 -> 3; 65535/65536: 3 -> 5).
"""

from __future__ import annotations

import functools
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.batches.builder import BATCH_SCHEMA, Stream, encode_batch, envelope_size

BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536]


@functools.cache
def records(n: int, kind: str) -> tuple[list[dict[str, Any]], list[bytes]]:
    recs = [
        {"pipeline": kind, "key": f"k{i % 7}", "start": float(i), "end": i + 1.0, "count": i}
        for i in range(n)
    ]
    return recs, [cbor2.dumps(r) for r in recs]


def reference(agent: str, seq: int, sent: float, cfg: str, windows: list, readings: list) -> bytes:
    doc: dict[str, Any] = {
        "schema": BATCH_SCHEMA,
        "agent": agent,
        "seq": seq,
        "sent": sent,
        "config": cfg,
    }
    if windows:
        doc["windows"] = windows
    if readings:
        doc["readings"] = readings
    return cbor2.dumps(doc)


@pytest.mark.parametrize("n_windows", BOUNDARIES)
@pytest.mark.parametrize("n_readings", [0, 24, 256])
def test_list_heads_at_every_size_boundary(n_windows: int, n_readings: int) -> None:
    w, w_enc = records(n_windows, "w")
    r, r_enc = records(n_readings, "r")
    got = encode_batch(BATCH_SCHEMA, "dev-1", 7, 1.5, "0123456789ab", w_enc, r_enc)
    assert got == reference("dev-1", 7, 1.5, "0123456789ab", w, r)
    doc = cbor2.loads(got)
    assert len(doc.get("windows", [])) == n_windows and len(doc.get("readings", [])) == n_readings


SEQS = st.one_of(
    st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)


@given(
    agent=st.text(max_size=300),
    seq=SEQS,
    sent=st.floats(allow_nan=False),
    cfg=st.text(max_size=30),
    n_windows=st.sampled_from(BOUNDARIES[:-2]) | st.integers(0, 300),
    n_readings=st.sampled_from(BOUNDARIES[:-2]) | st.integers(0, 300),
)
def test_encode_batch_is_what_cbor2_makes_of_the_map(
    agent: str, seq: int, sent: float, cfg: str, n_windows: int, n_readings: int
) -> None:
    w, w_enc = records(n_windows, "w")
    r, r_enc = records(n_readings, "r")
    got = encode_batch(BATCH_SCHEMA, agent, seq, sent, cfg, w_enc, r_enc)
    assert got == reference(agent, seq, sent, cfg, w, r)


@settings(max_examples=25)
@given(
    agent=st.text(max_size=100), cfg=st.text(max_size=20), seq=SEQS, sent=st.floats(allow_nan=False)
)
def test_envelope_size_bounds_every_batch_envelope(
    agent: str, cfg: str, seq: int, sent: float
) -> None:
    # The envelope is the batch minus its records: never larger than envelope_size says
    # (the byte limit of a batch counts on that).
    w_enc, r_enc = records(300, "w")[1], records(65_536, "r")[1]
    got = encode_batch(BATCH_SCHEMA, agent, seq, sent, cfg, w_enc, r_enc)
    assert len(got) - sum(map(len, w_enc)) - sum(map(len, r_enc)) <= envelope_size(
        BATCH_SCHEMA, agent, cfg
    )


@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 400)), min_size=1, max_size=60),
    st.integers(1, 30),
    st.integers(200, 3000),
)
def test_stream_cuts_respect_count_and_bytes_and_keep_order(
    adds: list[tuple[bool, int]], max_records: int, max_bytes: int
) -> None:
    s = Stream(BATCH_SCHEMA, "a", "c" * 12, max_records, max_bytes, max_delay=1e9)
    sent: list[bytes] = []
    for i, (is_window, pad) in enumerate(adds):
        enc = s.add([{"i": i, "pad": "x" * pad}], is_window, now=0.0)
        sent += enc
    batches = s.cut(0.0, force=True)
    assert len(s) == 0 and s.first_n == len(adds)
    got: list[bytes] = []
    for b in batches:
        payload = encode_batch(BATCH_SCHEMA, "a", 0, 0.0, "c" * 12, b.windows, b.readings)
        assert b.records <= max_records
        # Over the byte limit only as a single record that is larger on its own.
        assert len(payload) <= max_bytes or b.records == 1, (len(payload), b.records)
        got += b.windows + b.readings
    # Every record exactly once; within a batch windows come first, so compare as sets per
    # batch and as a whole multiset.
    assert sorted(got) == sorted(sent)

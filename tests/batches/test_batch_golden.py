"""Golden bytes for the wire format (docs/batch-format.md): a known batch encodes to
the bytes under tests/data/, and those bytes decode to the known batch.

The records come from the window engine, so the pins cover the record layout too
(entry order, integral times as CBOR integers). To change these bytes on purpose is
to change the wire format: that needs a new schema version, not a new file.
"""

from __future__ import annotations

from pathlib import Path

import cbor2

from edge_agent.batches.builder import BATCH_SCHEMA, LATE_SCHEMA, Stream, encode_batch
from edge_agent.config import PipelineConfig
from edge_agent.windows import Emitted, WindowEngine

DATA = Path(__file__).resolve().parents[1] / "data"

AGENT, SEQ, SENT, CONFIG = "greenhouse-7", 41, 1700000012.5, "3f9c0a1b22de"

BATCH = {
    "schema": "edge-agent/batch/1",
    "agent": "greenhouse-7",
    "seq": 41,
    "sent": 1700000012.5,
    "config": "3f9c0a1b22de",
    "windows": [
        {
            "pipeline": "climate",
            "key": "sensors/a/temp",
            "start": 1700000000,
            "end": 1700000010,
            "rev": 0,
            "count": 3,
            "min": 20.5,
            "max": 22.0,
            "mean": 21.25,
            "p50": 21.25,
            "stddev": 0.75,
        },
        {
            "pipeline": "climate",
            "key": "sensors/b/temp",
            "start": 1700000000,
            "end": 1700000010,
            "rev": 0,
            "count": 1,
            "min": -3.0,
            "max": -3.0,
            "mean": -3.0,
            "p50": -3.0,
            "stddev": 0.0,
        },
    ],
    "readings": [
        {"pipeline": "raw", "key": "sensors/c/level", "ts": 1700000001.5, "value": 3.0},
    ],
}

LATE = {
    "schema": "edge-agent/late/1",
    "agent": "greenhouse-7",
    "seq": 7,
    "sent": 1700000012.5,
    "config": "3f9c0a1b22de",
    "readings": [
        {"pipeline": "climate", "key": "sensors/a/temp", "ts": 1699999990.25, "value": 19.0},
    ],
}


def _records() -> tuple[list[dict[str, object]], list[dict[str, object]], list[dict[str, object]]]:
    """Window records, raw readings and late readings, made by the engines."""
    climate = WindowEngine(
        PipelineConfig(
            name="climate",
            size=10.0,
            max_out_of_orderness=0.0,
            aggregates=("count", "min", "max", "mean", "p50", "stddev"),
        )
    )
    out = Emitted()
    t0 = 1700000000.0
    climate.process(
        [
            ("sensors/a/temp", t0 + 1, 21.25),
            ("sensors/a/temp", t0 + 2, 20.5),
            ("sensors/b/temp", t0 + 3, -3.0),
            ("sensors/a/temp", t0 + 4, 22.0),
            ("sensors/a/temp", t0 + 10, 30.0),
            ("sensors/b/temp", t0 + 10, 30.0),
            ("sensors/a/temp", t0 - 9.75, 19.0),
        ],
        0.0,
        out,
    )
    raw = WindowEngine(PipelineConfig(name="raw", window="none"))
    raw.process([("sensors/c/level", t0 + 1.5, 3.0)], 0.0, out)
    return out.windows, out.readings, out.late


def _batch(
    schema: str, seq: int, windows: list[dict[str, object]], readings: list[dict[str, object]]
) -> bytes:
    stream = Stream(schema, AGENT, CONFIG, max_records=500, max_bytes=65536, max_delay=1.0)
    stream.add(windows, True, 0.0)
    stream.add(readings, False, 0.0)
    (cut,) = stream.cut(0.0, force=True)
    return encode_batch(schema, AGENT, seq, SENT, CONFIG, cut.windows, cut.readings)


def test_a_known_batch_encodes_to_known_bytes() -> None:
    windows, readings, _ = _records()
    assert _batch(BATCH_SCHEMA, SEQ, windows, readings) == (DATA / "batch-1.cbor").read_bytes()


def test_a_known_late_batch_encodes_to_known_bytes() -> None:
    _, _, late = _records()
    assert _batch(LATE_SCHEMA, 7, [], late) == (DATA / "late-1.cbor").read_bytes()


def test_known_bytes_decode_to_the_known_batch() -> None:
    batch = cbor2.loads((DATA / "batch-1.cbor").read_bytes())
    assert batch == BATCH
    # entry order is part of the pin: the envelope first, aggregates as configured
    assert list(batch) == ["schema", "agent", "seq", "sent", "config", "windows", "readings"]
    assert list(batch["windows"][0]) == list(BATCH["windows"][0])  # type: ignore[index]
    # integral window bounds travel as CBOR integers (smaller; SPEC 4 allows either)
    assert type(batch["windows"][0]["start"]) is int
    assert cbor2.loads((DATA / "late-1.cbor").read_bytes()) == LATE


def test_the_encoder_splices_records_exactly_as_cbor2_would_encode_the_map() -> None:
    # one CBOR map, definite lengths, no tags: what any CBOR library writes for it
    assert (DATA / "batch-1.cbor").read_bytes() == cbor2.dumps(BATCH)
    assert (DATA / "late-1.cbor").read_bytes() == cbor2.dumps(LATE)

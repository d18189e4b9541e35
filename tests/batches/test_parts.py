"""Unit tests of parts the runtime is built from, imported directly: the batcher, the
delivery log and the window spec's engine, without brokers or processes."""

from __future__ import annotations

import random
import zlib

import cbor2

from edge_agent.batches.batcher import STREAM_BATCHES, STREAM_LATE, STREAM_PRIORITY, Batcher
from edge_agent.buffer.store import Checkpoint
from edge_agent.config import config_from_text
from edge_agent.ingest.delivery import BLOCK, DeliveryLog
from edge_agent.windows import Emitted

CFG = config_from_text(
    '[agent]\nid = "a1"\n[upstream]\nlate_topic = "edge/{agent}/late"\nmax_batch_windows = 2\n'
    '[[pipeline]]\nname = "normal"\ntopics = ["s/#"]\n'
    '[[pipeline]]\nname = "alarms"\ntopics = ["alarm/#"]\npriority = "high"\n',
    environ={},
)


def _window(pipeline: str, start: int) -> dict[str, object]:
    return {
        "pipeline": pipeline,
        "key": "k",
        "start": start,
        "end": start + 10,
        "rev": 0,
        "count": 1,
    }


def test_batcher_numbers_priority_batches_first_and_keeps_late_apart() -> None:
    b = Batcher(CFG)
    e = Emitted()
    e.windows += [_window("normal", 0), _window("alarms", 0), _window("normal", 10)]
    e.late.append({"pipeline": "normal", "key": "k", "ts": 1.0, "value": 2.0})
    b.take(e)
    assert not (e.windows or e.late)  # taken
    cp = Checkpoint()
    b.cut(cp, force=True, durable=True)
    got = [(nb.stream, nb.seq, cbor2.loads(nb.payload)["schema"]) for nb in cp.batches]
    assert got == [
        (STREAM_PRIORITY, 0, "edge-agent/batch/1"),  # high priority: cut and numbered first
        (STREAM_BATCHES, 1, "edge-agent/batch/1"),  # same counter as the priority stream
        (STREAM_LATE, 0, "edge-agent/late/1"),  # its own counter
    ]
    assert cp.seqs == {STREAM_BATCHES: 2, STREAM_LATE: 1}
    assert [nb.topic for nb in cp.batches] == ["edge/a1/batches", "edge/a1/batches", "edge/a1/late"]
    assert b.records_waiting() == 0


def test_batcher_checkpoints_what_waits_and_restores_it() -> None:
    b = Batcher(CFG)
    e = Emitted()
    e.windows.append(_window("normal", 0))
    b.take(e)
    cp = Checkpoint()
    b.cut(cp, force=False, durable=True)  # nothing is due yet: the record waits
    assert cp.batches == [] and len(cp.pending_add) == 1
    ((sid, n, raw),) = cp.pending_add
    again = Batcher(CFG)
    again.restore({STREAM_BATCHES: 5}, {sid: [(n, raw)]})
    cp2 = Checkpoint()
    again.cut(cp2, force=True, durable=True)
    (nb,) = cp2.batches
    assert nb.seq == 5 and cbor2.loads(nb.payload)["windows"] == [_window("normal", 0)]


def test_delivery_log_checkpoints_changed_blocks_only() -> None:
    d = DeliveryLog()
    d.table[3] = 0xABCDEF01
    d.dirty.add(3 // BLOCK)
    blocks = d.take_dirty(keep=True)
    assert list(blocks) == [0] and len(blocks[0]) == 4 * BLOCK
    assert d.take_dirty(keep=True) == {}  # forgotten once taken
    other = DeliveryLog()
    other.restore(blocks)
    assert other.table[3] == 0xABCDEF01
    other.restore({1: b"short"})  # a malformed row is ignored, not half-applied
    assert other.table[BLOCK] == 0
    d.dirty.add(7)
    assert d.take_dirty(keep=False) == {} and not d.dirty  # checkpoints off: nothing kept


def test_deflated_batches_stay_within_max_batch_bytes_even_when_records_do_not_compress() -> None:
    cfg = config_from_text(
        '[agent]\nid = "a1"\n[upstream]\ncompression = "deflate"\nmax_batch_bytes = "1MiB"\n'
        '[[pipeline]]\nname = "normal"\ntopics = ["s/#"]\n',
        environ={},
    )
    limit, rnd, sizes = 2**20, random.Random(7), []
    # Random keys make CBOR that zlib cannot shrink: its stream is up to ~300 bytes
    # longer than 1 MiB of it. Sweeping the key length fills batches up to the limit.
    for length in range(524_000, 524_220, 20):
        keys = [rnd.randbytes(length) for _ in range(2)]
        e = Emitted()
        e.windows += [{"pipeline": "normal", "key": k} for k in keys]
        b = Batcher(cfg)
        b.take(e)
        cp = Checkpoint()
        b.cut(cp, force=True, durable=True)
        got = [cbor2.loads(zlib.decompress(nb.payload))["windows"] for nb in cp.batches]
        assert [w["key"] for ws in got for w in ws] == keys  # all of them, in order
        sizes += [len(nb.payload) for nb in cp.batches]
    assert limit - 1000 < max(sizes) <= limit, max(sizes) - limit  # the margin: zlib's bound

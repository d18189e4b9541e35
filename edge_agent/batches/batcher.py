"""The batch builder's running part: fired windows, raw and late readings in; numbered,
encoded batches out at each checkpoint (SPEC 4).

Three streams: batches, late readings (their own schema and seq counter) and the
batches of `priority = "high"` pipelines (the batch schema and counter, cut and
numbered first). Records are encoded once, when they join a stream; those bytes wait
in the checkpoint (`pending`) until a batch takes them, so a crash loses none.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import cbor2

from edge_agent.batches.builder import (
    BATCH_SCHEMA,
    LATE_SCHEMA,
    CutBatch,
    Stream,
    deflate,
    deflate_growth,
    encode_batch,
)
from edge_agent.buffer.store import Checkpoint, NewBatch
from edge_agent.config import Config
from edge_agent.windows.base import Emitted

__all__ = ["STREAM_BATCHES", "STREAM_LATE", "STREAM_PRIORITY", "Batcher"]

STREAM_BATCHES = 0
STREAM_LATE = 1
STREAM_PRIORITY = 2  # batches of `priority = "high"` pipelines: same schema and seq counter as 0
_SEQ_COUNTER = {
    STREAM_BATCHES: STREAM_BATCHES,
    STREAM_LATE: STREAM_LATE,
    STREAM_PRIORITY: STREAM_BATCHES,
}
_SCHEMAS = (
    (STREAM_BATCHES, BATCH_SCHEMA),
    (STREAM_LATE, LATE_SCHEMA),
    (STREAM_PRIORITY, BATCH_SCHEMA),
)


class Batcher:
    """Records -> streams -> batches with their seq; what waits is checkpointed."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.streams: dict[int, Stream] = {}
        self.seqs: dict[int, int] = {STREAM_BATCHES: 0, STREAM_LATE: 0}
        self.pending: list[
            tuple[int, int, bytes]
        ] = []  # (stream, n, record) since the last checkpoint
        self._high: set[str] = set()
        self.reconfigure(cfg)

    def reconfigure(self, cfg: Config) -> None:
        """New batch limits or pipelines (a reload); records already waiting stay."""
        self.cfg = cfg
        self._high = {p.name for p in cfg.pipelines if p.priority == "high"}
        up = cfg.upstream
        max_bytes = up.max_batch_bytes
        if up.compression == "deflate":  # incompressible records grow a little
            max_bytes -= deflate_growth(max_bytes)
        old, self.streams = self.streams, {}
        for sid, schema in _SCHEMAS:
            s = Stream(
                schema, cfg.agent.id, cfg.hash, up.max_batch_windows, max_bytes, up.max_batch_delay
            )
            if sid in old:
                s.adopt(old[sid])
            self.streams[sid] = s

    def restore(
        self, seqs: Mapping[int, int], pending: Mapping[int, list[tuple[int, bytes]]]
    ) -> None:
        """The seq counters and the records waiting at the last checkpoint."""
        self.seqs.update(seqs)
        for sid, rows in pending.items():
            stream = self.streams.get(sid)
            if stream is None or not rows:
                continue
            stream.first_n = rows[0][0]
            now = time.monotonic()
            for _, raw in rows:
                rec = cbor2.loads(raw)
                stream.add_encoded([raw], "start" in rec, now)

    def take(self, e: Emitted) -> None:
        """What the window engines emitted joins its stream (and `e` is cleared)."""
        if not (e.windows or e.readings or e.late):
            return
        now = time.monotonic()
        high = self._high
        for recs, is_window in ((e.windows, True), (e.readings, False)):
            if not recs:
                continue
            if high:
                urgent = [r for r in recs if r["pipeline"] in high]
                if urgent:
                    self._add(STREAM_PRIORITY, urgent, is_window, now)
                    recs = [r for r in recs if r["pipeline"] not in high]
            self._add(STREAM_BATCHES, recs, is_window, now)
        if e.late and self.cfg.upstream.late_topic:
            self._add(STREAM_LATE, e.late, False, now)
        e.clear()

    def _add(self, sid: int, recs: list[dict[str, Any]], is_window: bool, now: float) -> None:
        if not recs:
            return
        s = self.streams[sid]
        n0 = s.next_n
        enc = s.add(recs, is_window, now)
        self.pending.extend((sid, n0 + j, b) for j, b in enumerate(enc))

    def cut(self, cp: Checkpoint, force: bool, durable: bool) -> None:
        """Put into `cp` every batch that is due (all, with `force`), numbered, and
        (when `durable`) the records still waiting."""
        now_m, now_w = time.monotonic(), time.time()
        cfg = self.cfg
        topics = {
            STREAM_BATCHES: cfg.batch_topic,
            STREAM_LATE: cfg.late_topic,
            STREAM_PRIORITY: cfg.batch_topic,
        }
        deflating = cfg.upstream.compression == "deflate"
        for sid in (STREAM_PRIORITY, STREAM_BATCHES, STREAM_LATE):  # priority first
            stream = self.streams[sid]
            cuts: list[CutBatch] = stream.cut(now_m, force=force)
            counter = _SEQ_COUNTER[sid]
            for c in cuts:
                seq = self.seqs[counter]
                self.seqs[counter] = seq + 1
                payload = encode_batch(
                    stream.schema, cfg.agent.id, seq, now_w, cfg.hash, c.windows, c.readings
                )
                if deflating:
                    payload = deflate(payload)
                priority = 1 if sid == STREAM_PRIORITY else 0
                cp.batches.append(NewBatch(sid, seq, topics[sid], payload, now_w, priority, now_m))
            if cuts:
                cp.seqs[counter] = self.seqs[counter]
                cp.pending_done[sid] = stream.first_n
        if durable:
            first = {sid: s.first_n for sid, s in self.streams.items()}
            cp.pending_add = [row for row in self.pending if row[1] >= first[row[0]]]
        self.pending = []

    def records_waiting(self) -> int:
        """Records encoded since the last checkpoint (the ingest budget counts them)."""
        return len(self.pending)

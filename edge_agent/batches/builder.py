"""Batches out (SPEC 4): records in, CBOR batch payloads out.

Each record is CBOR-encoded once, when it joins a `Stream`. Those bytes measure
the batch exactly, are what the checkpoint stores for records still waiting, and
are spliced unchanged into the batch payload, so a record is never encoded twice.

A batch is cut on the spec's three triggers: `max_batch_windows` records,
`max_batch_bytes` encoded bytes (a single larger record goes alone), or the
oldest waiting record being `max_batch_delay` old. The seq number is given by
the runtime in the same transaction that makes the batch durable.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import cbor2

__all__ = [
    "BATCH_SCHEMA",
    "LATE_SCHEMA",
    "CutBatch",
    "Stream",
    "deflate",
    "deflate_growth",
    "encode_batch",
    "is_deflated",
]

BATCH_SCHEMA = "edge-agent/batch/1"
LATE_SCHEMA = "edge-agent/late/1"


def _head(major: int, n: int) -> bytes:
    """A CBOR head (RFC 8949 3.1) for a major type and an argument."""
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return struct.pack(">BH", mt | 25, n)
    if n < 0x100000000:
        return struct.pack(">BI", mt | 26, n)
    return struct.pack(">BQ", mt | 27, n)


_K_WINDOWS = cbor2.dumps("windows")
_K_READINGS = cbor2.dumps("readings")


def encode_batch(
    schema: str,
    agent: str,
    seq: int,
    sent: float,
    config_hash: str,
    windows: list[bytes],
    readings: list[bytes],
) -> bytes:
    """The exact payload of one batch: one CBOR map, records spliced in as encoded."""
    head = {"schema": schema, "agent": agent, "seq": seq, "sent": sent, "config": config_hash}
    parts = [_head(5, len(head) + bool(windows) + bool(readings))]
    for k, v in head.items():
        parts.append(cbor2.dumps(k))
        parts.append(cbor2.dumps(v))
    if windows:
        parts += (_K_WINDOWS, _head(4, len(windows)), *windows)
    if readings:
        parts += (_K_READINGS, _head(4, len(readings)), *readings)
    return b"".join(parts)


def deflate(payload: bytes) -> bytes:
    """`compression = "deflate"` (SPEC 4): the zlib stream (RFC 1950) of the CBOR map.

    Done once, when the batch is made durable: the outbox stores these bytes, so a
    resent batch is the same bytes whatever zlib version runs by then.
    """
    return zlib.compress(payload, 6)


def deflate_growth(n: int) -> int:
    """The most `deflate` can add to `n` bytes that do not compress (zlib's
    compressBound): with deflate on, batches are cut this much below
    `max_batch_bytes`, so the payload on the wire is within it (SPEC 4)."""
    return (n >> 12) + (n >> 14) + (n >> 25) + 13


def is_deflated(payload: bytes) -> bool:
    """Whether an outbox payload is a zlib stream rather than a CBOR map.

    A zlib header's first byte (CMF) is 0x08-0x78 (method 8, window <= 7) and
    CMF*256+FLG is a multiple of 31 (RFC 1950 2.2); a batch's CBOR map head is
    0xa0-0xbf. Batches buffered before a reload changed `compression` keep theirs.
    """
    return (
        len(payload) >= 2
        and payload[0] & 0x0F == 8
        and payload[0] >> 4 <= 7
        and (payload[0] << 8 | payload[1]) % 31 == 0
    )


def envelope_size(schema: str, agent: str, config_hash: str) -> int:
    """Largest size of a batch's envelope (map head, fixed keys, both list heads)."""
    probe = encode_batch(schema, agent, 2**64 - 1, 1.5, config_hash, [], [])
    return len(probe) + 1 + len(_K_WINDOWS) + len(_K_READINGS) + 2 * 5


@dataclass(slots=True)
class CutBatch:
    """A batch's records, decided but not yet numbered or encoded."""

    windows: list[bytes]
    readings: list[bytes]

    @property
    def records(self) -> int:
        return len(self.windows) + len(self.readings)


@dataclass(slots=True)
class Stream:
    """Records waiting for one topic (batches, or late readings), and where to cut.

    Records carry an arrival number `n`; `first_n` is the number of the oldest
    record still waiting, so the checkpoint can drop every stored record below it.
    """

    schema: str
    agent: str
    config_hash: str
    max_records: int
    max_bytes: int
    max_delay: float
    items: list[bytes] = field(default_factory=list)
    kinds: list[bool] = field(default_factory=list)  # True = window record, False = reading
    first_n: int = 0
    oldest: float | None = None  # monotonic time the oldest waiting record joined
    _size: int = 0  # bytes of the waiting records
    _envelope: int = 0

    def __post_init__(self) -> None:
        self._envelope = envelope_size(self.schema, self.agent, self.config_hash)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def next_n(self) -> int:
        return self.first_n + len(self.items)

    def add(self, records: list[dict[str, Any]], is_window: bool, now: float) -> list[bytes]:
        """Encode and queue records; return their encodings (for the checkpoint)."""
        if not records:
            return []
        dumps = cbor2.dumps
        enc = [dumps(r) for r in records]
        self.add_encoded(enc, is_window, now)
        return enc

    def add_encoded(self, enc: list[bytes], is_window: bool, now: float) -> None:
        if not enc:
            return
        if self.oldest is None:
            self.oldest = now
        self.items.extend(enc)
        self.kinds.extend([is_window] * len(enc))
        self._size += sum(map(len, enc))

    def adopt(self, other: Stream) -> None:
        """Take over what waits in `other` (a reload builds new streams for new limits)."""
        self.items, self.kinds = other.items, other.kinds
        self.first_n, self.oldest, self._size = other.first_n, other.oldest, other._size

    def due(self, now: float) -> bool:
        """Whether a batch should be cut now (full, or its oldest record is old enough)."""
        if not self.items:
            return False
        return (
            len(self.items) >= self.max_records
            or self._envelope + self._size > self.max_bytes
            or (self.oldest is not None and now - self.oldest >= self.max_delay)
        )

    def cut(self, now: float, *, force: bool = False) -> list[CutBatch]:
        """Cut every batch that is due (all waiting records when `force`)."""
        out: list[CutBatch] = []
        while self.items and (force or self.due(now)):
            total, n = self._envelope, 0
            limit = min(len(self.items), self.max_records)
            items = self.items
            while n < limit and (n == 0 or total + len(items[n]) <= self.max_bytes):
                total += len(items[n])
                n += 1
            taken, kinds = items[:n], self.kinds[:n]
            out.append(
                CutBatch(
                    [b for b, k in zip(taken, kinds, strict=True) if k],
                    [b for b, k in zip(taken, kinds, strict=True) if not k],
                )
            )
            del self.items[:n], self.kinds[:n]
            self._size -= total - self._envelope
            self.first_n += n
            # What is left joined no earlier than the old oldest, so keeping that
            # time can only cut the rest early, never hold a record past its delay.
            self.oldest = self.oldest if self.items else None
        return out

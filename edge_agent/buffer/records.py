"""What the store takes and gives back: a checkpoint to make durable (new batches,
records, window state, fingerprints, acks and drops), outbox rows, what a commit did,
and what an open restored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Checkpoint", "CommitResult", "NewBatch", "OutboxRow", "Restored"]


@dataclass(slots=True)
class NewBatch:
    stream: int
    seq: int
    topic: str
    payload: bytes
    sent: float
    priority: int = 0
    born: float | None = None  # time.monotonic() when built; None: from `sent` (its wall-clock age)


@dataclass(slots=True)
class Checkpoint:
    """What one transaction makes durable."""

    batches: list[NewBatch] = field(default_factory=list)
    seqs: dict[int, int] = field(default_factory=dict)  # stream -> next seq
    pending_add: list[tuple[int, int, bytes]] = field(default_factory=list)  # (stream, n, record)
    pending_done: dict[int, int] = field(default_factory=dict)  # stream -> first n still pending
    windows: dict[str, dict[str, bytes | None]] = field(
        default_factory=dict
    )  # pipeline -> key -> state
    windows_gone: list[str] = field(default_factory=list)  # pipelines removed by a reload
    held: dict[int, bytes] = field(default_factory=dict)  # block -> 1 KiB of fingerprints
    acked: list[tuple[int, int]] = field(default_factory=list)  # (outbox id, payload size) PUBACKed
    # (outbox id, payload size) dropped by policy outside the store (ttl, seen by the
    # outbox before sending): deleted here, counted by whoever dropped them.
    drops: list[tuple[int, int]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.batches
            or self.drops
            or self.pending_add
            or self.pending_done
            or any(self.windows.values())
            or self.windows_gone
            or self.held
            or self.acked
        )


@dataclass(slots=True)
class OutboxRow:
    id: int
    stream: int
    seq: int
    topic: str
    payload: bytes
    sent: float
    priority: int = 0
    born: float = 0.0  # time.monotonic() when built (see the module doc)


@dataclass(slots=True)
class CommitResult:
    ids: list[int]  # outbox ids of the new batches, in order
    dropped: dict[str, int]  # reason -> batches dropped by the buffer policy
    dropped_ids: list[int]  # outbox ids removed by the policy (the sender forgets them)


@dataclass(slots=True)
class Restored:
    seqs: dict[int, int]
    pending: dict[int, list[tuple[int, bytes]]]  # stream -> [(n, CBOR-encoded record)]
    windows: dict[str, list[tuple[str, bytes]]]
    held: dict[int, bytes]
    outbox_batches: int
    outbox_bytes: int
    outbox_oldest_sent: float | None
    meta: dict[str, Any]

"""Per-board state: sequence gaps and resets, and the board-clock to wall-clock mapping.

Sequence numbers: a board counts frames up from 0 after it starts. A jump forward by
k+1 means k frames were lost on the way; a step back (or, with a modulus, a jump of
more than half the modulus) means the board reset, and the frames it sent since its
reset before the one we see (its seq, counting from 0) were lost. The same seq twice
in a row is a duplicate.

Clock modes:
- "arrival": ts = arrival time at the bridge (any board ts is overwritten);
- "board": the board's own ts (clock.field) is used as is; arrival when it has none;
- "uptime_ms": the field is milliseconds since the board booted. ts = offset + uptime,
  offset = arrival - uptime learnt on a board's first frame and learnt again when the
  uptime goes backwards (a reset) or the mapped time drifts from arrival by more than
  clock.tolerance (a crystal running fast or slow, or a stall we could not see).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BoardState", "SeqResult", "learn_offset", "track_seq"]


@dataclass(slots=True)
class BoardState:
    """Mutable, one per board id; owned by the bridge's frame path."""

    id: str
    topic: str
    frames: int = 0
    lost: int = 0
    resets: int = 0
    last_seq: int | None = None
    offset: float | None = None  # uptime_ms: wall time at uptime 0
    last_uptime: float = -1.0
    relearns: int = 0


class SeqResult:
    OK = 0
    DUPLICATE = 1


def track_seq(board: BoardState, seq: int, modulus: int) -> int:
    """Update board's loss figures for seq; return SeqResult.OK or DUPLICATE."""
    last = board.last_seq
    board.last_seq = seq
    if last is None:
        return SeqResult.OK
    if seq == last:
        return SeqResult.DUPLICATE
    if modulus:
        gap = (seq - last - 1) % modulus
        if gap < modulus // 2:
            board.lost += gap
            return SeqResult.OK
    elif seq > last:
        board.lost += seq - last - 1
        return SeqResult.OK
    board.resets += 1
    board.lost += seq % modulus if modulus else seq
    board.offset = None  # a rebooted board's uptime restarted: learn its clock afresh
    return SeqResult.OK


def learn_offset(board: BoardState, uptime_s: float, arrival: float, tolerance: float) -> float:
    """Wall time of a frame sent at uptime_s (seconds since boot), learning the offset."""
    off = board.offset
    if off is None or uptime_s < board.last_uptime or abs(off + uptime_s - arrival) > tolerance:
        if off is not None:
            board.relearns += 1
        off = board.offset = arrival - uptime_s
    board.last_uptime = uptime_s
    return off + uptime_s

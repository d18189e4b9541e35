"""A damaged state database: telling it from one that is only locked, read-only or on
a full disk, moving it aside, and the seq numbers that survive it (seq is never
reused, SPEC 4): those a damaged file still shows, and a floor kept outside SQLite."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from pathlib import Path

__all__ = [
    "CorruptDatabase",
    "is_corrupt",
    "is_disk_full",
    "move_aside",
    "read_seq_floor",
    "reserve_seqs",
    "salvage_seqs",
]

SEQ_FILE = "edge-agent.seq"  # seq numbers reserved ahead, for a database lost to corruption
SEQ_RESERVE = 10_000


def salvage_seqs(path: Path) -> dict[int, int]:
    """The next seq per stream that a damaged database still shows (meta, outbox), best effort."""
    seqs: dict[int, int] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return seqs
    try:
        for query in (
            "SELECT CAST(substr(k, 5) AS INTEGER), v FROM meta WHERE k LIKE 'seq:%'",
            "SELECT stream, max(seq) + 1 FROM outbox GROUP BY stream",
        ):
            with contextlib.suppress(sqlite3.Error, TypeError, ValueError):
                for stream, nxt in db.execute(query):
                    seqs[int(stream)] = max(seqs.get(int(stream), 0), int(nxt))
    finally:
        db.close()
    return seqs


class CorruptDatabase(sqlite3.DatabaseError):
    """quick_check found the file damaged."""


# SQLite's primary result codes that prove a damaged file (sqlite3.h).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def is_corrupt(exc: sqlite3.Error) -> bool:
    """Proven corruption, as opposed to locked, read-only, I/O error or disk full."""
    if isinstance(exc, CorruptDatabase):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def is_disk_full(exc: BaseException) -> bool:
    return "full" in str(exc).lower()


def move_aside(path: Path) -> Path:
    """Move a damaged database and its journal files aside; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            with contextlib.suppress(OSError):
                src.rename(Path(str(aside) + suffix))
    return aside


def read_seq_floor(state_dir: Path) -> dict[int, int]:
    """The seq floor per stream that reserve_seqs recorded (empty when none)."""
    try:
        doc = json.loads((state_dir / SEQ_FILE).read_text())
        return {int(k): int(v) for k, v in doc.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def reserve_seqs(state_dir: Path, floor: dict[int, int], seqs: dict[int, int]) -> dict[int, int]:
    """Before seqs up to `seqs` are committed, record a floor above them outside SQLite.

    If the database is later lost to corruption, the fresh one starts above the
    floor, so a seq is never reused (SPEC 4); the cost is one small file written
    every SEQ_RESERVE batches. Returns the floor now recorded.
    """
    if all(v <= floor.get(k, -1) for k, v in seqs.items()):
        return floor
    new = {**floor, **{k: v + SEQ_RESERVE for k, v in seqs.items() if v > floor.get(k, -1)}}
    path = state_dir / SEQ_FILE
    tmp = path.with_name(SEQ_FILE + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump({str(k): v for k, v in new.items()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        # Reported like SQLite's own failures, so the caller retries the checkpoint.
        raise sqlite3.OperationalError(
            f"{path}: {exc.strerror or exc}: database or disk is full"
            if exc.errno == errno.ENOSPC
            else f"{path}: {exc}"
        ) from exc
    return new

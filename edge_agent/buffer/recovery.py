"""Telling a damaged state database from one that is only locked, read-only or on a
full disk, and salvaging the seq counters of a damaged one (seq is never reused, SPEC 4)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

__all__ = ["is_corrupt"]


def _salvage_seqs(path: Path) -> dict[int, int]:
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


class _Corrupt(sqlite3.DatabaseError):
    """quick_check found the file damaged."""


# SQLite's primary result codes that prove a damaged file (sqlite3.h).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def is_corrupt(exc: sqlite3.Error) -> bool:
    """Proven corruption, as opposed to locked, read-only, I/O error or disk full."""
    if isinstance(exc, _Corrupt):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def _is_disk_full(exc: BaseException) -> bool:
    return "full" in str(exc).lower()

"""The state database's file: its schema, the pragmas it is opened with, the
migration of older files, and what it holds, read back at open.

Tables:
  meta(k, v)                 seq counters per stream, subscribed filters
  outbox(id, stream, seq, topic, payload, sent, priority, born)  batches not yet PUBACKed
  pending(stream, n, record) records not yet cut into a batch (n: arrival order)
  windows(pipeline, key, state)                   open window state per key
  held(block, fps)           delivery fingerprints, 256 packet ids per row
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import aiosqlite

from edge_agent.buffer.bounds import wal_limit
from edge_agent.buffer.records import Restored
from edge_agent.buffer.recovery import CorruptDatabase

__all__ = ["DB_NAME", "SCHEMA_VERSION", "boot_id", "connect", "read_back"]

DB_NAME = "edge-agent.db"
SCHEMA_VERSION = 1


def boot_id() -> str:
    """This boot's id: time.monotonic() values compare only within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    sent REAL NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    born REAL
);
CREATE INDEX IF NOT EXISTS outbox_drop_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS pending (
    stream INTEGER NOT NULL, n INTEGER NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (stream, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS windows (
    pipeline TEXT NOT NULL, key TEXT NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (pipeline, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held (block INTEGER PRIMARY KEY, fps BLOB NOT NULL);
"""


async def connect(
    path: Path, *, synchronous: str, max_bytes: int
) -> tuple[aiosqlite.Connection, int]:
    """Open (or create, 0600) the database with its pragmas and schema; return it and its
    page size. Raises CorruptDatabase when quick_check finds the file damaged (closed)."""
    # SQLite creates a new file 0644 (less the umask) and gives its -wal and -shm
    # files the same mode: create it 0600 first.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        # Bound the WAL left on disk after a checkpoint (SD cards, buffer.max_bytes).
        limit = wal_limit(max_bytes)
        await db.execute(f"PRAGMA journal_size_limit = {limit}")
        async with db.execute("PRAGMA quick_check") as cur:
            row = await cur.fetchone()
        if row is None or row[0] != "ok":
            raise CorruptDatabase(f"quick_check: {row[0] if row else 'no answer'}")
        # One transaction: in autocommit each CREATE would be a commit of its own, and
        # a new file would wait for ~8 fsyncs (~0.1 s here, far more on an SD card).
        await db.executescript(f"BEGIN;{_SCHEMA}COMMIT;")
        async with db.execute("SELECT name FROM pragma_table_info('outbox')") as cur:
            columns = {r[0] async for r in cur}
        if "born" not in columns:  # a file from before ages ran on the monotonic clock
            await db.execute("ALTER TABLE outbox ADD COLUMN born REAL")
        async with db.execute("PRAGMA page_size") as cur:
            page_size = int((await cur.fetchone())[0])  # type: ignore[index]
        await db.execute(f"PRAGMA wal_autocheckpoint = {max(8, limit // 2 // page_size)}")
    except BaseException:
        with contextlib.suppress(Exception):
            await db.close()
        raise
    return db, page_size


async def read_back(db: aiosqlite.Connection) -> tuple[Restored, float | None]:
    """What the database holds, and the oldest batch's `born` (monotonic). A file from
    another boot has its batches' `born` rebased first (store.py's module doc)."""
    meta: dict[str, Any] = {}
    async with db.execute("SELECT k, v FROM meta") as cur:
        async for k, v in cur:
            meta[k] = v
    seqs = {int(k[4:]): int(v) for k, v in meta.items() if k.startswith("seq:")}
    boot = boot_id()
    if meta.get("boot") != boot or not boot:
        # Another boot: monotonic times from it mean nothing now. Each batch's age
        # restarts from what its wall-clock `sent` shows (never below 0).
        await db.execute("BEGIN")  # one commit for both
        await db.execute(
            "UPDATE outbox SET born = ? - max(0.0, ? - sent)", (time.monotonic(), time.time())
        )
        await db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('boot', ?)", (boot,))
        await db.execute("COMMIT")
    pending: dict[int, list[tuple[int, bytes]]] = {}
    async with db.execute("SELECT stream, n, record FROM pending ORDER BY stream, n") as cur:
        async for stream, n, rec in cur:
            pending.setdefault(stream, []).append((n, bytes(rec)))  # encoded, as stored
    windows: dict[str, list[tuple[str, bytes]]] = {}
    async with db.execute("SELECT pipeline, key, state FROM windows") as cur:
        async for p, k, s in cur:
            windows.setdefault(p, []).append((k, s))
    held: dict[int, bytes] = {}
    async with db.execute("SELECT block, fps FROM held") as cur:
        async for b, f in cur:
            held[b] = f
    async with db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox") as cur:
        n, size = await cur.fetchone()  # type: ignore[misc]
    async with db.execute("SELECT sent, born FROM outbox ORDER BY id LIMIT 1") as cur:
        row = await cur.fetchone()
    oldest = row[0] if row else None
    restored = Restored(seqs, pending, windows, held, int(n), int(size), oldest, meta)
    return restored, (row[1] if row else None)

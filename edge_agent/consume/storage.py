"""Where the consumer writes: one small interface, SQLite and PostgreSQL behind it.

A backend takes a group of decoded messages and stores them in ONE transaction,
or raises `StorageError` having stored none of them. The rules (SPEC 7), the
same in both:

- a batch is new only if `(schema, agent, seq)` is not in `batches` yet; a
  duplicate (a redelivery, another consumer got there first) changes nothing;
- `windows` keeps per `(agent, pipeline, key, window_start, window_end)` the row
  with the highest `rev` (an upsert guarded by `rev`), so redeliveries and any
  arrival order give the same table;
- a record's `replaces` bounds go into `replaced` and their windows are deleted;
  a window named there is never stored again, so a record of an absorbed session
  that arrives after the merged one (two consumers, a redelivery) stays out;
- `devices` holds each agent's newest status (an `offline` from the MQTT will
  is taken even though its `time` is from when the agent connected).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from edge_agent.consume.decode import Decoded
from edge_agent.consume.results import Storage, StorageError, WriteResult

__all__ = ["Storage", "StorageError", "WriteResult", "open_storage", "sqlite_path"]


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL or plain path; None when `url` names another database."""
    if "://" not in url:
        return None if url.startswith(("postgresql:", "postgres:")) else url
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        return None
    # sqlite:///var/lib/x.db and sqlite:////var/lib/x.db both name /var/lib/x.db;
    # sqlite://x.db (a "host") is read as the relative path x.db.
    path = unquote(parts.netloc + parts.path)
    if path.startswith("//"):
        path = path[1:]
    return path


def open_storage(url: str) -> Storage:
    """A backend for `--db URL` (not yet connected); raises StorageError for an unknown scheme."""
    path = sqlite_path(url)
    if path is not None:
        if not path:
            raise StorageError(f"--db {url}: no file path")
        return SqliteStorage(path)
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        from edge_agent.consume.postgres import PostgresStorage

        return PostgresStorage(url)
    raise StorageError(f"--db {url}: expected a file path, sqlite:///path or postgresql://...")


# ----------------------------------------------------------------------------- SQLite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    schema TEXT NOT NULL, agent TEXT NOT NULL, seq INTEGER NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (schema, agent, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS windows (
    agent TEXT NOT NULL, pipeline TEXT NOT NULL, key TEXT NOT NULL,
    window_start REAL NOT NULL, window_end REAL NOT NULL,
    rev INTEGER NOT NULL, count INTEGER NOT NULL,
    aggregates TEXT NOT NULL,  -- JSON: every other aggregate of the record
    seq INTEGER NOT NULL,      -- the batch that brought this revision
    PRIMARY KEY (agent, pipeline, key, window_start, window_end)
);
CREATE INDEX IF NOT EXISTS windows_by_end ON windows (window_end);
CREATE TABLE IF NOT EXISTS replaced (
    agent TEXT NOT NULL, pipeline TEXT NOT NULL, key TEXT NOT NULL,
    window_start REAL NOT NULL, window_end REAL NOT NULL,
    PRIMARY KEY (agent, pipeline, key, window_start, window_end)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings (
    agent TEXT NOT NULL, pipeline TEXT NOT NULL, key TEXT NOT NULL,
    ts REAL NOT NULL, value REAL NOT NULL,
    late INTEGER NOT NULL,  -- 1: past allowed lateness (the late topic)
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_ts ON readings (ts);
CREATE TABLE IF NOT EXISTS devices (
    agent TEXT PRIMARY KEY, state TEXT NOT NULL, health TEXT NOT NULL,
    version TEXT NOT NULL, config TEXT NOT NULL, time REAL NOT NULL,
    reasons TEXT NOT NULL  -- JSON list of strings
);
CREATE VIEW IF NOT EXISTS latest_windows AS
SELECT agent, pipeline, key, window_start, window_end,
       strftime('%Y-%m-%dT%H:%M:%fZ', window_start, 'unixepoch') AS start_time,
       strftime('%Y-%m-%dT%H:%M:%fZ', window_end, 'unixepoch') AS end_time,
       rev, count,
       json_extract(aggregates, '$.min') AS min, json_extract(aggregates, '$.max') AS max,
       json_extract(aggregates, '$.mean') AS mean, json_extract(aggregates, '$.sum') AS sum,
       aggregates, seq
FROM windows;
"""

_SQLITE_BATCH = (
    "INSERT INTO batches (schema, agent, seq, received) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_SQLITE_REPLACED = "INSERT OR IGNORE INTO replaced VALUES (?, ?, ?, ?, ?)"
_SQLITE_DELETE = "DELETE FROM windows WHERE agent = ? AND pipeline = ? AND key = ? AND window_start = ? AND window_end = ?"
_UPSERT_TAIL = """
ON CONFLICT (agent, pipeline, key, window_start, window_end) DO UPDATE SET
    rev = excluded.rev, count = excluded.count, aggregates = excluded.aggregates, seq = excluded.seq
WHERE excluded.rev > windows.rev
"""
_SQLITE_WINDOW = (
    "INSERT INTO windows (agent, pipeline, key, window_start, window_end, rev, count, aggregates, seq)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)" + _UPSERT_TAIL
)
# For (agent, pipeline) pairs that have tombstones: a window named in `replaced` stays out.
# The WHERE makes SQLite parse ON CONFLICT as the upsert clause (sqlite.org/lang_upsert.html).
_SQLITE_WINDOW_GUARDED = (
    """
INSERT INTO windows (agent, pipeline, key, window_start, window_end, rev, count, aggregates, seq)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9
WHERE NOT EXISTS (SELECT 1 FROM replaced r WHERE r.agent = ?1 AND r.pipeline = ?2 AND r.key = ?3
                  AND r.window_start = ?4 AND r.window_end = ?5)
"""
    + _UPSERT_TAIL
)
_SQLITE_HAS_TOMBSTONES = "SELECT 1 FROM replaced WHERE agent = ? AND pipeline = ? LIMIT 1"
_SQLITE_READING = "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)"
_SQLITE_DEVICE = """
INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (agent) DO UPDATE SET
    state = excluded.state, health = excluded.health, version = excluded.version,
    config = excluded.config, time = excluded.time, reasons = excluded.reasons
WHERE excluded.time >= devices.time OR (excluded.state = 'offline' AND devices.state <> 'offline')
"""


class SqliteStorage:
    """An embedded SQLite file (WAL, synchronous=FULL): several consumers may share it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock: IO[bytes]
        # sqlite3 blocks: every call runs on one worker thread, one hop per group.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="consume-sqlite")

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        try:
            parent = Path(self.path).parent
            parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the broker gets its PUBACK (a power cut
            # after the ack loses nothing). Group commits keep the fsyncs few.
            db.execute("PRAGMA synchronous=FULL")
            # A page cache of up to 32 MiB (default 2 MiB): upserts into a growing
            # windows table and its indexes stop rereading pages (~20% less CPU per row).
            db.execute("PRAGMA cache_size=-32768")
            db.executescript(_SQLITE_SCHEMA)
            # Consumers sharing this file take turns through a lock file: a blocking
            # flock hands the write over the moment the other commits, where SQLite's
            # busy handler polls with sleeps of up to 100 ms.
            lock = open(self.path + "-writer.lock", "ab")  # noqa: SIM115 (held until close)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        if os.name == "posix":
            os.chmod(self.path, 0o640)
            os.chmod(lock.name, 0o640)
        self._db = db
        self._lock = lock

    async def write(self, items: Sequence[Decoded]) -> WriteResult:
        return await self._call(self._write, items)  # type: ignore[no-any-return]

    def _write(self, items: Sequence[Decoded]) -> WriteResult:
        db = self._db
        assert db is not None, "open() first"
        res = WriteResult()
        now = time.time()
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX)
            db.execute("BEGIN IMMEDIATE")
            try:
                windows, replaced, readings, devices = [], [], [], []
                pairs: set[tuple[str, str]] = set()
                for it in items:
                    if it.device is not None:
                        devices.append(it.device)
                        continue
                    if db.execute(_SQLITE_BATCH, (it.schema, it.agent, it.seq, now)).rowcount != 1:
                        res.duplicates += 1
                        continue
                    res.batches += 1
                    windows += it.windows
                    replaced += it.replaced
                    readings += it.readings
                    pairs.update((it.agent, p) for p in it.pipelines)
                if replaced:
                    db.executemany(_SQLITE_REPLACED, replaced)
                    db.executemany(_SQLITE_DELETE, replaced)
                if windows:
                    # Only pipelines with merged sessions have tombstones: the rest (all
                    # but session windows) take the plain upsert. Writers are serialized
                    # (BEGIN IMMEDIATE), so the check cannot race another consumer.
                    guarded = any(
                        db.execute(_SQLITE_HAS_TOMBSTONES, pair).fetchone() for pair in pairs
                    )
                    db.executemany(_SQLITE_WINDOW_GUARDED if guarded else _SQLITE_WINDOW, windows)
                if readings:
                    db.executemany(_SQLITE_READING, readings)
                if devices:
                    db.executemany(_SQLITE_DEVICE, devices)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        finally:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        res.windows, res.readings, res.statuses = len(windows), len(readings), len(devices)
        return res

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
            self._lock.close()
        self._thread.shutdown(wait=True)

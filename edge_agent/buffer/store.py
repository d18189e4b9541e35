"""The durable state under `agent.state_dir`: one SQLite database (WAL).

Everything that must survive a kill -9 is written in one transaction per
checkpoint (`Store.commit`): new batches with their seq numbers, the records
still waiting for a batch, changed window state, the fingerprints of the
messages whose effect that state holds, and the deletion of batches the upstream
broker acknowledged. Readings are acknowledged to the local broker only after
that transaction commits (see `edge_agent.runtime`).

The schema is in schema.py; the disk and age bounds the commit applies (and why
they are counted in pages, and on the backlog only) in bounds.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from edge_agent.buffer.bounds import Bounds, wal_limit
from edge_agent.buffer.records import Checkpoint, CommitResult, NewBatch, OutboxRow, Restored
from edge_agent.buffer.recovery import (
    is_corrupt,
    is_disk_full,
    move_aside,
    read_seq_floor,
    reserve_seqs,
    salvage_seqs,
)
from edge_agent.buffer.schema import DB_NAME, boot_id, connect, read_back
from edge_agent.errors import StateError

__all__ = [
    "Checkpoint",
    "CommitResult",
    "NewBatch",
    "OutboxRow",
    "Restored",
    "Store",
    "boot_id",
    "wal_limit",
]

log = logging.getLogger("edge_agent.buffer")

_NOT_STORED = -1  # the id of a batch dropped before it was written (CommitResult.ids/dropped_ids)


class Store:
    """The state database. Construct, then `await open()`; no I/O before that."""

    def __init__(
        self,
        state_dir: Path,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        when_full: str = "drop_oldest",
        ttl: float = 7 * 86400.0,
        synchronous: str = "FULL",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.bounds = Bounds(max_bytes=max_bytes, when_full=when_full, ttl=ttl)
        self._synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        # Running totals of what the outbox holds, kept in step with each commit.
        self.outbox_batches = 0
        self.outbox_payload_bytes = 0
        self.outbox_oldest_sent: float | None = None
        self.outbox_oldest_born: float | None = None  # monotonic
        self._seq_floor: dict[int, int] = {}  # stream -> seq below which numbers may be in use
        self._lock = asyncio.Lock()  # one transaction at a time (commit and reclaim interleave)
        self.quarantined: list[tuple[str, str]] = []  # (moved to, why): corrupt files set aside
        self.last_error = ""

    # -- open / restore ---------------------------------------------------

    async def open(self, retry_for: float = 60.0) -> Restored:
        """Open (or create) the database and read back what it holds.

        Only proven corruption (not a database, or quick_check fails) moves a file
        aside, loudly (`quarantined`, logged); any other error (locked by another
        process, read-only, I/O error, disk full) is retried for `retry_for` seconds
        with nothing moved, then raised as StateError.
        """
        try:
            # 0700/0600: readings and batches are nobody else's business (issue 13)
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"state_dir {self.state_dir}: cannot create it: {exc.strerror}"
            ) from exc
        if not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise StateError(f"state_dir {self.state_dir}: not writable by this user")
        self._seq_floor = read_seq_floor(self.state_dir)
        deadline = time.monotonic() + retry_for
        delay = 0.1
        while True:
            try:
                return await self._open_once()
            except sqlite3.DatabaseError as exc:
                await self._close_quietly()
                if is_corrupt(exc):
                    return await self._quarantine(exc)
                self.last_error = str(exc)
                if time.monotonic() >= deadline:
                    what = "disk full" if is_disk_full(exc) else str(exc)
                    raise StateError(
                        f"state_dir {self.state_dir}: {what} (nothing was moved)"
                    ) from exc
                if delay == 0.1:
                    log.error(
                        "state database %s cannot be opened: %s; retrying, nothing is moved",
                        self.path,
                        exc,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _quarantine(self, exc: sqlite3.DatabaseError) -> Restored:
        """Proven corruption: move the file aside, loudly, and start a fresh one."""
        aside = move_aside(self.path)
        self.quarantined.append((str(aside), str(exc)))
        seqs = salvage_seqs(aside)
        for k, v in self._seq_floor.items():
            seqs[k] = max(seqs.get(k, 0), v)
        log.error(
            "state database %s is unreadable, corrupt (%s); moved it to %s and started a fresh one",
            self.path,
            exc,
            aside,
        )
        try:
            restored = await self._open_once()
            if seqs:
                # seq is never reused (SPEC 4): carry on above what the old file issued.
                await self.set_meta((f"seq:{k}", v) for k, v in seqs.items())
                restored.seqs.update(seqs)
                log.warning("kept the seq counters of the corrupt database: %s", seqs)
            return restored
        except sqlite3.Error as again:
            await self._close_quietly()
            raise StateError(
                f"state_dir {self.state_dir}: cannot start a fresh database: {again}"
            ) from again

    async def _open_once(self) -> Restored:
        db, self.bounds.page_size = await connect(
            self.path, synchronous=self._synchronous, max_bytes=self.bounds.max_bytes
        )
        self._db = db
        restored, self.outbox_oldest_born = await read_back(db)
        self.outbox_batches = restored.outbox_batches
        self.outbox_payload_bytes = restored.outbox_bytes
        self.outbox_oldest_sent = restored.outbox_oldest_sent
        return restored

    async def _close_quietly(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):
                await self._db.close()
        self._db = None

    async def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._db.close()
            self._db = None

    # -- the one transaction ---------------------------------------------

    async def commit(
        self,
        cp: Checkpoint,
        now: float | None = None,
        *,
        keep: dict[int, int] | None = None,
        keep_new: bool = False,
    ) -> CommitResult:
        """Make a checkpoint durable in one transaction; apply the buffer bounds.

        `keep` (outbox id -> payload size: batches in flight) and, with `keep_new`,
        the checkpoint's new batches are not backlog: never dropped, not counted
        against the bound. Ages are monotonic; `now`, a wall-clock time, only
        shifts the commit's "now" by `now - time.time()` (tests simulate time
        with it; the agent passes None).
        """
        async with self._lock:
            mono = time.monotonic()
            if now is not None:
                mono += now - time.time()
            result = await self._commit(cp, mono, keep or {}, keep_new)
            if result.ids and self.disk_bytes() > self.bounds.max_bytes:
                # Free pages and a WAL grown by a big transaction still count on disk:
                # give them back now rather than at the next idle reclaim.
                with contextlib.suppress(sqlite3.Error):
                    await self._reclaim()
            return result

    async def _commit(
        self, cp: Checkpoint, mono: float, keep: dict[int, int], keep_new: bool
    ) -> CommitResult:
        db = self._require()
        ids: list[int] = []
        dropped: dict[str, int] = {}
        dropped_ids: list[int] = []
        self._seq_floor = reserve_seqs(self.state_dir, self._seq_floor, cp.seqs)
        await db.execute("BEGIN IMMEDIATE")
        try:
            acked_n = 0
            acked_bytes = 0
            if cp.acked:
                # Counted from what was really deleted: a batch the policy dropped while
                # it was in flight can still be PUBACKed, and is gone already.
                async with db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?)) RETURNING length(payload)",
                    (json.dumps([i for i, _ in cp.acked]),),
                ) as cur:
                    sizes = [r[0] async for r in cur]
                acked_n, acked_bytes = len(sizes), sum(sizes)
            if cp.drops:
                async with db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?)) RETURNING length(payload)",
                    (json.dumps([i for i, _ in cp.drops]),),
                ) as cur:
                    sizes = [r[0] async for r in cur]
                acked_n, acked_bytes = acked_n + len(sizes), acked_bytes + sum(sizes)
            victims: list[tuple[int, int]] = []
            bounds = self.bounds
            await bounds.expire(db, self.outbox_oldest_born, mono, dropped, victims, keep)
            if cp.batches and bounds.when_full == "drop_oldest" and not keep_new:
                # Make room first, so the file does not grow past the budget mid-transaction.
                incoming = sum(bounds.row_cost(len(b.payload)) for b in cp.batches)
                # Room is made from stored batches no more urgent than the incoming
                # ones: a burst of normal batches never pushes out a high-priority one
                # (what still does not fit is dropped by the fit after the insert,
                # lowest priority first).
                top = max(b.priority for b in cp.batches)
                await bounds.fit(
                    db, bounds.file_budget - incoming, dropped, victims, max_priority=top, keep=keep
                )
            skip: set[int] = set()
            if cp.batches and bounds.when_full == "drop_newest" and not keep_new:
                # The incoming batches are the newest: the ones that do not fit are
                # dropped before they are written, so the file never passes the budget.
                # A high-priority batch goes in; _fit below drops a normal one for it.
                room = bounds.file_budget - await bounds.used_bytes(db)
                for k, b in enumerate(cp.batches):
                    cost = bounds.row_cost(len(b.payload))
                    if b.priority > 0 or cost <= room:
                        room -= cost
                    else:
                        skip.add(k)
            for k, b in enumerate(cp.batches):
                if k in skip:
                    ids.append(_NOT_STORED)
                    dropped_ids.append(_NOT_STORED)
                    continue
                born = (
                    b.born
                    if b.born is not None
                    else time.monotonic() - max(0.0, time.time() - b.sent)
                )
                cur = await db.execute(
                    "INSERT INTO outbox (stream, seq, topic, payload, sent, priority, born) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (b.stream, b.seq, b.topic, b.payload, b.sent, b.priority, born),
                )
                ids.append(int(cur.lastrowid or 0))
                if keep_new:
                    keep[ids[-1]] = len(b.payload)
            if skip:
                dropped["full"] = dropped.get("full", 0) + len(skip)
            if cp.seqs:
                await db.executemany(
                    "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
                    [(f"seq:{s}", n) for s, n in cp.seqs.items()],
                )
            for stream, first in cp.pending_done.items():
                await db.execute("DELETE FROM pending WHERE stream = ? AND n < ?", (stream, first))
            if cp.pending_add:
                await db.executemany(
                    "INSERT OR REPLACE INTO pending VALUES (?, ?, ?)", cp.pending_add
                )
            for pipeline in cp.windows_gone:
                await db.execute("DELETE FROM windows WHERE pipeline = ?", (pipeline,))
            for pipeline, states in cp.windows.items():
                put = [(pipeline, k, s) for k, s in states.items() if s is not None]
                gone = [(pipeline, k) for k, s in states.items() if s is None]
                if put:
                    await db.executemany("INSERT OR REPLACE INTO windows VALUES (?, ?, ?)", put)
                if gone:
                    await db.executemany("DELETE FROM windows WHERE pipeline = ? AND key = ?", gone)
            if cp.held:
                await db.executemany(
                    "INSERT OR REPLACE INTO held VALUES (?, ?)", list(cp.held.items())
                )
            if cp.batches:
                await bounds.fit(db, bounds.file_budget, dropped, victims, keep=keep)
            dropped_ids.extend(i for i, _ in victims)
            batches = self.outbox_batches + len(cp.batches) - len(skip) - acked_n - len(victims)
            size = (
                self.outbox_payload_bytes
                + sum(len(b.payload) for k, b in enumerate(cp.batches) if k not in skip)
                - acked_bytes
                - sum(n for _, n in victims)
            )
            oldest, oldest_born = self.outbox_oldest_sent, self.outbox_oldest_born
            if cp.acked or cp.drops or dropped_ids or oldest is None:
                async with db.execute("SELECT sent, born FROM outbox ORDER BY id LIMIT 1") as cur:
                    row = await cur.fetchone()
                oldest, oldest_born = (row[0], row[1]) if row else (None, None)
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("ROLLBACK")
            raise
        self.outbox_batches, self.outbox_payload_bytes, self.outbox_oldest_sent = (
            batches,
            size,
            oldest,
        )
        self.outbox_oldest_born = oldest_born
        return CommitResult(ids, dropped, dropped_ids)

    @property
    def file_budget(self) -> int:
        """Bytes of database pages in use that the outbox may fill (see the module doc)."""
        return self.bounds.file_budget

    async def reclaim(self) -> None:
        """Give free pages back to the file system and trim the WAL (idle moments)."""
        async with self._lock:
            await self._reclaim()

    async def _reclaim(self) -> None:
        db = self._require()
        # Each step of incremental_vacuum frees one page, and execute() steps
        # once: executescript (sqlite3_exec) runs it to the end.
        await db.executescript("PRAGMA incremental_vacuum;")
        await db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reads for the sender ----------------------------------------------

    async def max_outbox_id(self) -> int:
        """The newest outbox id (0 when empty)."""
        db = self._require()
        async with db.execute("SELECT coalesce(max(id), 0) FROM outbox") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def outbox_after(
        self, after_id: int, limit: int, priority: int | None = None
    ) -> list[OutboxRow]:
        """Outbox rows with id > after_id in id order (of one priority, when given)."""
        db = self._require()
        args: tuple[int, ...]
        if priority is None:
            sql, args = "WHERE id > ?", (after_id, limit)
        else:
            sql, args = "WHERE priority = ? AND id > ?", (priority, after_id, limit)
        async with db.execute(
            f"SELECT id, stream, seq, topic, payload, sent, priority, born FROM outbox {sql} ORDER BY id LIMIT ?",
            args,
        ) as cur:
            return [OutboxRow(*r) async for r in cur]

    async def set_meta(self, items: Iterable[tuple[str, Any]]) -> None:
        db = self._require()
        await db.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", list(items))

    def disk_bytes(self) -> int:
        """The database and its journal files on disk."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(str(self.path) + suffix).st_size
        return total

    def _require(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StateError("state database is not open")
        return self._db

"""The bounds of the outbox on disk: `buffer.max_bytes` and `buffer.ttl`, applied by
the store inside its commit transaction.

Bounds (`buffer.max_bytes` covers the database and its journal files on disk):
the WAL is capped at `wal_limit` = max_bytes / 8, between 64 KiB and 4 MiB
(auto-checkpoint at half of it, the file truncated back to it after each
checkpoint), and the database file's pages in use are kept within
`file_budget` = max_bytes - 2 * wal_limit - 32 KiB (the -shm index) by dropping
batches after each commit. Pages freed by drops and acks are reused at once and
returned to the file system by `reclaim`. The bound is measured in pages, not in
payload bytes: a 5,000-byte batch takes two 4 KiB pages, and that is what the
SD card holds. Margin: a single transaction's new pages may pass the WAL cap
until the next checkpoint truncates it.

The bound is on the backlog (SPEC 1): `commit(..., keep=ids, keep_new=True)`
leaves the batches the uplink is moving (in flight, or just built while it is
connected) out of the count, so a healthy uplink never causes a drop, whatever
the bound; they are on disk for the moment until their PUBACK.

Ages (`ttl`, the oldest batch's age) run on the monotonic clock: each batch keeps
its wall-clock `sent` (part of its bytes) and `born`, time.monotonic() when it
was built. CLOCK_MONOTONIC is shared by every process of one boot, so `born`
stays valid across restarts of the agent; after a reboot (another boot_id) each
batch's `born` is rebased once, at open, to the age its `sent` shows on the wall
clock then (never negative: a clock set back by a missing RTC makes a batch
younger, never older).
"""

from __future__ import annotations

import aiosqlite

__all__ = ["Bounds", "wal_limit"]

_SHM_BYTES = 32 * 1024  # the WAL index (-shm) of a WAL smaller than ~4 MiB


def wal_limit(max_bytes: int) -> int:
    """Bytes the WAL may keep on disk for a buffer bounded by max_bytes."""
    return min(4 * 1024 * 1024, max(64 * 1024, max_bytes // 8))


class Bounds:
    """max_bytes, when_full and ttl applied to one database (its page size read at open)."""

    def __init__(self, *, max_bytes: int, when_full: str, ttl: float) -> None:
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.ttl = ttl
        self.page_size = 4096

    async def expire(
        self,
        db: aiosqlite.Connection,
        oldest: float | None,
        mono: float,
        dropped: dict[str, int],
        victims: list[tuple[int, int]],
        keep: dict[int, int],
    ) -> None:
        """Drop batches older than ttl (counted from their `sent`, on the monotonic clock);
        `oldest` is the oldest batch's `born`.

        Batches in flight (`keep`) were sent in time: their PUBACK decides.
        """
        if self.ttl <= 0 or oldest is None or oldest >= mono - self.ttl:
            return
        async with db.execute(
            "SELECT id, length(payload) FROM outbox WHERE born < ?", (mono - self.ttl,)
        ) as cur:
            old = [(r[0], r[1]) async for r in cur if r[0] not in keep]
        if old:
            await db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i, _ in old])
            dropped["ttl"] = dropped.get("ttl", 0) + len(old)
            victims.extend(old)

    async def fit(
        self,
        db: aiosqlite.Connection,
        budget: int,
        dropped: dict[str, int],
        victims: list[tuple[int, int]],
        max_priority: int | None = None,
        keep: dict[int, int] | None = None,
    ) -> None:
        """Drop batches by the when_full policy until the pages in use fit `budget`.

        Batches in `keep` are not backlog: neither dropped nor counted.
        """
        keep = keep or {}
        moving = sum(self.row_cost(n) for n in keep.values())
        used = await self.used_bytes(db) - moving
        if used <= budget:
            return
        order = "ASC" if self.when_full == "drop_oldest" else "DESC"
        n0 = len(victims)
        for _ in range(64):  # each round frees about the excess; a few rounds at most
            excess = used - budget
            chosen: list[tuple[int, int]] = []
            freed = 0
            # Lower priority goes first; within a priority, the when_full policy decides.
            where = "" if max_priority is None else f"WHERE priority <= {int(max_priority)}"
            async with db.execute(
                f"SELECT id, length(payload) FROM outbox {where} ORDER BY priority ASC, id {order} LIMIT 4096"
            ) as cur:
                async for i, size in cur:
                    if freed >= excess:
                        break
                    if i in keep:
                        continue
                    chosen.append((i, size))
                    freed += self.row_cost(size)
            if not chosen:
                break  # nothing left to drop: the other tables hold the rest
            await db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i, _ in chosen])
            victims.extend(chosen)
            used = await self.used_bytes(db) - moving
            if used <= budget:
                break
        if len(victims) > n0:
            dropped["full"] = dropped.get("full", 0) + len(victims) - n0

    @property
    def file_budget(self) -> int:
        """Bytes of database pages in use that the outbox may fill (see the module doc)."""
        return max(16 * self.page_size, self.max_bytes - 2 * wal_limit(self.max_bytes) - _SHM_BYTES)

    def row_cost(self, payload_len: int) -> int:
        """About what one outbox row takes in the file: a share of a leaf page, or whole pages."""
        usable = self.page_size - 35  # SQLite's largest payload kept on a leaf page
        if payload_len + 48 <= usable:
            return payload_len + 48
        return -(-(payload_len + 48) // (self.page_size - 4)) * self.page_size

    async def used_bytes(self, db: aiosqlite.Connection) -> int:
        async with db.execute("SELECT * FROM pragma_page_count(), pragma_freelist_count()") as cur:
            pages, free = await cur.fetchone()  # type: ignore[misc]
        return (int(pages) - int(free)) * self.page_size

"""The store's parts on their own, on real SQLite files: schema.py (open, migration,
read-back), bounds.py (page arithmetic, the when_full and ttl drops) and recovery.py
(corruption proof, moving a file aside, seq numbers that survive it)."""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from pathlib import Path

import aiosqlite
import pytest

from edge_agent.buffer.bounds import Bounds, wal_limit
from edge_agent.buffer.recovery import (
    SEQ_FILE,
    SEQ_RESERVE,
    CorruptDatabase,
    is_corrupt,
    move_aside,
    read_seq_floor,
    reserve_seqs,
    salvage_seqs,
)
from edge_agent.buffer.schema import connect, read_back


async def _db(tmp_path: Path) -> aiosqlite.Connection:
    db, _ = await connect(tmp_path / "s.db", synchronous="NORMAL", max_bytes=1 << 20)
    return db


async def _add(db: aiosqlite.Connection, priority: int, size: int, born: float) -> int:
    cur = await db.execute(
        "INSERT INTO outbox (stream, seq, topic, payload, sent, priority, born)"
        " VALUES (0, 0, 't', ?, ?, ?, ?)",
        (bytes(size), time.time(), priority, born),
    )
    return int(cur.lastrowid or 0)


async def _ids(db: aiosqlite.Connection) -> list[int]:
    async with db.execute("SELECT id FROM outbox ORDER BY id") as cur:
        return [r[0] async for r in cur]


# ---- schema.py ---------------------------------------------------------------------


async def test_a_new_database_is_private_and_empty(tmp_path: Path) -> None:
    db, page_size = await connect(tmp_path / "s.db", synchronous="FULL", max_bytes=1 << 20)
    try:
        assert stat.S_IMODE((tmp_path / "s.db").stat().st_mode) == 0o600
        assert page_size == 4096
        restored, oldest_born = await read_back(db)
        assert (restored.outbox_batches, restored.outbox_bytes, oldest_born) == (0, 0, None)
        assert restored.pending == {} and restored.windows == {} and restored.held == {}
        async with db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone()) == ("wal",)
    finally:
        await db.close()


async def test_a_file_from_before_born_gets_the_column_and_ages_from_sent(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "s.db")
    old.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, stream INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, sent REAL NOT NULL,"
        " priority INTEGER NOT NULL DEFAULT 0);"
    )
    old.execute(
        "INSERT INTO outbox (stream, seq, topic, payload, sent) VALUES (0, 7, 't', x'00', ?)",
        (time.time() - 100,),
    )
    old.commit()
    old.close()
    db = await _db(tmp_path)
    try:
        restored, oldest_born = await read_back(db)
        assert restored.outbox_batches == 1
        assert oldest_born is not None
        assert 99 <= time.monotonic() - oldest_born <= 110  # its age, from its wall-clock sent
    finally:
        await db.close()


async def test_quick_check_failure_is_corruption_and_the_file_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(4080))  # a header and nothing sane
    with pytest.raises(sqlite3.DatabaseError) as info:
        await connect(path, synchronous="FULL", max_bytes=1 << 20)
    assert is_corrupt(info.value)


# ---- bounds.py ---------------------------------------------------------------------


def test_wal_limit_is_an_eighth_between_64_kib_and_4_mib() -> None:
    assert wal_limit(1 << 20) == 128 * 1024
    assert wal_limit(100 * 1024) == 64 * 1024
    assert wal_limit(1 << 30) == 4 * 1024 * 1024


def test_row_cost_is_a_share_of_a_page_or_whole_pages() -> None:
    b = Bounds(max_bytes=1 << 20, when_full="drop_oldest", ttl=0)
    assert b.row_cost(100) == 148
    assert b.row_cost(4096 - 35 - 48) == 4096 - 35
    assert b.row_cost(5000) == 2 * 4096  # the module doc's example: two 4 KiB pages
    assert b.file_budget == (1 << 20) - 2 * 128 * 1024 - 32 * 1024
    assert Bounds(max_bytes=1000, when_full="drop_oldest", ttl=0).file_budget == 16 * 4096


@pytest.mark.parametrize(("when_full", "kept"), [("drop_oldest", [4, 5]), ("drop_newest", [1, 2])])
async def test_fit_drops_lower_priority_first_then_by_policy(
    tmp_path: Path, when_full: str, kept: list[int]
) -> None:
    db = await _db(tmp_path)
    try:
        b = Bounds(max_bytes=1 << 20, when_full=when_full, ttl=0)
        now = time.monotonic()
        ids = [await _add(db, 0, 8000, now) for _ in range(5)]  # 1-5: two pages each
        high = await _add(db, 1, 8000, now)
        used = await b.used_bytes(db)
        dropped: dict[str, int] = {}
        victims: list[tuple[int, int]] = []
        keep = {ids[2]: 8000}  # in flight: neither dropped nor counted
        await b.fit(db, used - 2 * 8192 - 100, dropped, victims, keep=keep)
        left = await _ids(db)
        assert high in left and ids[2] in left
        assert sorted([i for i in ids if i in left and i != ids[2]]) == kept
        assert dropped == {"full": 2} and len(victims) == 2
    finally:
        await db.close()


async def test_expire_drops_what_is_older_than_ttl_except_in_flight(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    try:
        now = time.monotonic()
        old, flying, young = (
            await _add(db, 0, 10, now - 100),
            await _add(db, 0, 10, now - 100),
            await _add(db, 0, 10, now - 1),
        )
        b = Bounds(max_bytes=1 << 20, when_full="drop_oldest", ttl=50)
        dropped: dict[str, int] = {}
        victims: list[tuple[int, int]] = []
        await b.expire(db, now - 100, now, dropped, victims, {flying: 10})
        assert await _ids(db) == [flying, young]
        assert dropped == {"ttl": 1} and victims == [(old, 10)]
        none = Bounds(max_bytes=1 << 20, when_full="drop_oldest", ttl=0)  # ttl 0: no limit
        await none.expire(db, now - 100, now + 1e6, dropped, victims, {})
        assert await _ids(db) == [flying, young]
    finally:
        await db.close()


# ---- recovery.py -------------------------------------------------------------------


def test_corruption_is_told_from_other_errors() -> None:
    assert is_corrupt(CorruptDatabase("quick_check: page 3 is never used"))
    assert is_corrupt(sqlite3.DatabaseError("file is not a database"))
    assert not is_corrupt(sqlite3.OperationalError("database is locked"))
    assert not is_corrupt(sqlite3.OperationalError("database or disk is full"))


def test_a_damaged_file_is_moved_aside_with_its_journals(tmp_path: Path) -> None:
    path = tmp_path / "edge-agent.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").write_bytes(b"x")
    aside = move_aside(path)
    assert aside.name.startswith("edge-agent.db.corrupt-")
    assert not any(Path(f"{path}{s}").exists() for s in ("", "-wal", "-shm"))
    assert all(Path(f"{aside}{s}").exists() for s in ("", "-wal", "-shm"))


def test_seqs_are_salvaged_from_meta_and_outbox(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (k TEXT PRIMARY KEY, v);"
        "CREATE TABLE outbox (stream INTEGER, seq INTEGER);"
        "INSERT INTO meta VALUES ('seq:0', 10), ('seq:1', 3), ('boot', 'x');"
        "INSERT INTO outbox VALUES (0, 4), (1, 8);"
    )
    db.commit()
    db.close()
    assert salvage_seqs(path) == {0: 10, 1: 9}
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    assert salvage_seqs(garbage) == {}


def test_the_seq_floor_is_written_ahead_and_only_when_passed(tmp_path: Path) -> None:
    assert read_seq_floor(tmp_path) == {}
    floor = reserve_seqs(tmp_path, {}, {0: 5})
    assert floor == {0: 5 + SEQ_RESERVE}
    assert json.loads((tmp_path / SEQ_FILE).read_text()) == {"0": 5 + SEQ_RESERVE}
    (tmp_path / SEQ_FILE).write_text('{"0": 1}')  # so a write would show
    assert reserve_seqs(tmp_path, floor, {0: 6}) is floor  # within the floor: no write
    assert read_seq_floor(tmp_path) == {0: 1}
    assert reserve_seqs(tmp_path, floor, {0: 5 + SEQ_RESERVE + 1, 1: 0})[1] == SEQ_RESERVE
    (tmp_path / SEQ_FILE).write_text("[not json")
    assert read_seq_floor(tmp_path) == {}

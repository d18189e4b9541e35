"""The Outbox on its own: a batch's life from commit to PUBACK or drop, on real SQLite.

The uplink's side (next_batch / published / acked / link_down) is driven by hand
here; tests/agent/test_e2e.py and friends drive it through a real broker.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest

from edge_agent.buffer.outbox import Outbox
from edge_agent.buffer.store import Checkpoint, NewBatch, Store
from edge_agent.errors import StateError


class Clock:
    """time.monotonic() moved forward by `shift` (the store's own ages use the real one)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift


def _cp(seq0: int, n: int, size: int = 100, born: float | None = None) -> Checkpoint:
    now = time.time()
    born = time.monotonic() if born is None else born
    batches = [NewBatch(0, s, "t", os.urandom(size), now, 0, born) for s in range(seq0, seq0 + n)]
    return Checkpoint(batches=batches, seqs={0: seq0 + n})


async def _open(tmp_path: Path, **kw: object) -> tuple[Store, Outbox, Clock]:
    ttl = float(kw.pop("ttl", 3600.0))  # type: ignore[arg-type]
    store = Store(tmp_path, ttl=ttl, **kw)  # type: ignore[arg-type]
    await store.open()
    clock = Clock()
    return store, Outbox(store, ttl=ttl, clock=clock), clock


def _drain(outbox: Outbox) -> list[int]:
    """Publish everything next_batch hands out; the seqs, in order."""
    out = []
    while (row := outbox.next_batch()) is not None:
        outbox.published(row)
        out.append(row.seq)
    return out


async def test_a_batch_lives_from_commit_through_puback_to_delete(tmp_path: Path) -> None:
    store, outbox, _ = await _open(tmp_path)
    try:
        await outbox.link_up()
        await outbox.refill()
        await outbox.commit(_cp(0, 5))
        assert outbox.batches == 5 and outbox.queued == 5
        rows = []
        while (row := outbox.next_batch()) is not None:
            outbox.published(row)
            rows.append(row)
        assert [r.seq for r in rows] == [0, 1, 2, 3, 4] and outbox.inflight == 5
        for r in rows[:3]:
            outbox.acked(r)
        assert outbox.batches_sent == 3 and outbox.owes_database()
        await outbox.commit(Checkpoint())  # the acks are deleted in the next transaction
        assert outbox.batches == 2 and not outbox.owes_database()
        assert [r.seq for r in await store.outbox_after(0, 100)] == [3, 4]
    finally:
        await store.close()


async def test_a_lost_link_sends_every_unacknowledged_batch_again_in_order(tmp_path: Path) -> None:
    store, outbox, _ = await _open(tmp_path)
    try:
        await outbox.link_up()
        await outbox.refill()
        await outbox.commit(_cp(0, 4))
        rows = [outbox.next_batch() for _ in range(1)]
        assert rows[0] is not None
        outbox.published(rows[0])
        second = outbox.next_batch()
        assert second is not None
        outbox.published(second)
        outbox.acked(rows[0])
        outbox.link_down()  # seq 1 was in flight: it goes again, before 2 and 3
        await outbox.link_up()
        await outbox.refill()
        assert _drain(outbox) == [1, 2, 3]
    finally:
        await store.close()


async def test_a_backlog_bigger_than_memory_drains_from_disk_in_seq_order(tmp_path: Path) -> None:
    store, outbox, _ = await _open(tmp_path)
    try:
        for k in range(6):  # 6,000 batches: more than the memory queue mirrors
            await outbox.commit(_cp(k * 1000, 1000, size=50))
        await outbox.link_up()
        seen: list[int] = []
        while outbox.has_more():
            await outbox.refill()
            for row in iter(outbox.next_batch, None):
                outbox.published(row)
                outbox.acked(row)
                seen.append(row.seq)
            await outbox.commit(Checkpoint())
        assert seen == list(range(6000))
        assert outbox.batches == 0 and outbox.batches_sent == 6000
    finally:
        await store.close()


async def test_ttl_drops_a_queued_batch_instead_of_sending_it(tmp_path: Path) -> None:
    """#11.2: a batch past ttl in memory (queued, or reloaded after a reconnect) is
    dropped and counted, not handed to the uplink; the next commit deletes it."""
    store, outbox, clock = await _open(tmp_path, ttl=60.0)
    try:
        await outbox.commit(_cp(0, 3))  # built while the link was down
        await outbox.link_up()
        await outbox.refill()
        clock.shift = 61.0  # no commit since: only the outbox sees their age
        assert outbox.next_batch() is None
        assert outbox.batches_dropped == 3 and outbox.dropped_by_reason == {"ttl": 3}
        assert outbox.last_drop_at is not None
        await outbox.commit(Checkpoint())
        assert outbox.batches == 0 and await store.outbox_after(0, 10) == []
        assert outbox.batches_dropped == 3  # deleted, not counted twice
    finally:
        await store.close()


async def test_ttl_counts_on_the_monotonic_clock_not_the_wall_clock(tmp_path: Path) -> None:
    """#11.6: a batch whose wall-clock `sent` is far in the past (the clock was stepped
    forward by NTP after it was built) is as old as the monotonic clock says."""
    store, outbox, _ = await _open(tmp_path, ttl=60.0)
    try:
        cp = _cp(0, 2)
        for b in cp.batches:
            b.sent -= 86400.0  # built "yesterday" by a clock that was a day behind
        await outbox.commit(cp)
        await outbox.commit(_cp(2, 1))  # a commit with the store's own ttl pass
        await outbox.link_up()
        await outbox.refill()
        assert _drain(outbox) == [0, 1, 2] and outbox.batches_dropped == 0
        age = outbox.oldest_age()
        assert age is not None and age < 5.0
    finally:
        await store.close()


async def test_ages_survive_a_restart_in_the_same_boot(tmp_path: Path) -> None:
    store, outbox, _ = await _open(tmp_path, ttl=60.0)
    old = time.monotonic() - 50.0
    await outbox.commit(_cp(0, 1, born=old))
    await store.close()
    store, outbox, clock = await _open(tmp_path, ttl=60.0)
    try:
        age = outbox.oldest_age()
        assert age is not None and 49.0 < age < 55.0
        await outbox.link_up()
        await outbox.refill()
        clock.shift = 11.0
        assert outbox.next_batch() is None and outbox.dropped_by_reason == {"ttl": 1}
    finally:
        await store.close()


async def test_a_healthy_uplink_never_causes_a_drop_however_small_the_bound(tmp_path: Path) -> None:
    """#11.1: batches in flight and batches built while the link is up are not backlog."""
    store, outbox, _ = await _open(tmp_path, max_bytes=256 * 1024)
    try:
        await outbox.link_up()
        await outbox.refill()
        seq = 0
        for _ in range(30):  # each commit: 4 batches of 20 KB, more than the budget holds
            await outbox.commit(_cp(seq, 4, size=20_000))
            seq += 4
            rows = []
            while (row := outbox.next_batch()) is not None:
                outbox.published(row)
                rows.append(row)
            for row in rows:
                outbox.acked(row)
        await outbox.commit(Checkpoint())
        assert outbox.batches_dropped == 0 and outbox.batches_sent == seq
        # With the link down, the same bound holds the backlog: the policy drops.
        outbox.link_down()
        for _ in range(10):
            await outbox.commit(_cp(seq, 4, size=20_000))
            seq += 4
        assert outbox.dropped_by_reason["full"] > 0
        assert store.disk_bytes() <= 256 * 1024 + 64 * 1024  # the bound, with the WAL's margin
    finally:
        await store.close()


async def test_batches_in_flight_are_not_dropped_by_the_policy(tmp_path: Path) -> None:
    store, outbox, _ = await _open(tmp_path, max_bytes=256 * 1024)
    try:
        await outbox.link_up()
        await outbox.refill()
        await outbox.commit(_cp(0, 2, size=20_000))
        first = outbox.next_batch()
        assert first is not None
        outbox.published(first)  # in flight, no PUBACK yet
        # The link is up but the rest waits (window, rate limit): a real backlog.
        outbox.connected = False
        for k in range(1, 10):
            await outbox.commit(_cp(k * 4, 4, size=20_000))
        assert outbox.batches_dropped > 0
        assert [r.seq for r in await store.outbox_after(0, 1)] == [0]  # the one in flight stays
        outbox.acked(first)
        await outbox.commit(Checkpoint())
        assert outbox.batches_sent == 1
    finally:
        await store.close()


# -- #11.5: only proven corruption moves a database aside --------------------------------------


async def _store_holding(tmp_path: Path, n: int) -> None:
    store = Store(tmp_path)
    await store.open()
    await store.commit(_cp(0, n))
    await store.close()


def _lock_exclusively(db: Path) -> sqlite3.Connection:
    """Another process's view: a connection holding an exclusive lock on the file."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('x', 1)")
    return conn


async def test_a_locked_database_is_waited_for_never_moved_aside(tmp_path: Path) -> None:
    await _store_holding(tmp_path, 5)
    conn = _lock_exclusively(tmp_path / "edge-agent.db")
    store = Store(tmp_path)
    opening = asyncio.ensure_future(store.open(retry_for=20.0))
    await asyncio.sleep(1.0)
    assert not opening.done()  # retrying, not moving it aside
    conn.execute("ROLLBACK")
    conn.close()
    restored = await opening
    try:
        assert restored.outbox_batches == 5 and store.quarantined == []
        assert not list(tmp_path.glob("edge-agent.db.corrupt-*"))
    finally:
        await store.close()


async def test_a_database_locked_for_too_long_is_an_error_with_nothing_moved(
    tmp_path: Path,
) -> None:
    await _store_holding(tmp_path, 3)
    conn = _lock_exclusively(tmp_path / "edge-agent.db")
    try:
        with pytest.raises(StateError, match=r"locked.*nothing was moved"):
            await Store(tmp_path).open(retry_for=0.5)
        assert not list(tmp_path.glob("edge-agent.db.corrupt-*"))
    finally:
        conn.close()
    store = Store(tmp_path)
    restored = await store.open()
    await store.close()
    assert restored.outbox_batches == 3


async def test_a_file_that_is_not_a_database_is_quarantined_loudly(tmp_path: Path) -> None:
    (tmp_path / "edge-agent.db").write_bytes(b"garbage, not SQLite\n" * 300)
    store = Store(tmp_path)
    await store.open()
    try:
        assert len(store.quarantined) == 1
        aside, why = store.quarantined[0]
        assert Path(aside).exists() and "not a database" in why
    finally:
        await store.close()


async def test_a_read_only_database_is_an_error_with_nothing_moved(tmp_path: Path) -> None:
    """chmod a-w on the database, opened by another user (root would write anyway):
    SQLite says read-only, which is not corruption."""
    import shutil
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to open the file as another user")
    top = Path(tempfile.mkdtemp(prefix="edge-agent-ro-"))
    try:
        top.chmod(0o777)
        state = top / "state"
        state.mkdir()
        state.chmod(0o777)
        await _store_holding(state, 4)
        for f in state.iterdir():
            f.chmod(0o444)
        code = (
            "import asyncio, sys\n"
            "from edge_agent.buffer.store import Store\n"
            "from edge_agent.errors import StateError\n"
            "async def main():\n"
            f"    s = Store({str(state)!r})\n"
            "    await s.open(retry_for=0.5)\n"
            "    await s.close()\n"
            "try:\n    asyncio.run(main())\n"
            "except StateError as e:\n    print(e); sys.exit(3)\n"
        )
        r = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert r.returncode == 3, (r.stdout, r.stderr)
        assert "nothing was moved" in r.stdout, r.stdout
        assert not list(state.glob("edge-agent.db.corrupt-*"))
        for f in state.iterdir():
            f.chmod(0o644)
        store = Store(state)
        restored = await store.open()
        await store.close()
        assert restored.outbox_batches == 4
    finally:
        shutil.rmtree(top, ignore_errors=True)

"""The checkpoint step: everything a batch of readings changed, made durable at once.

One checkpoint is one SQLite transaction (through the outbox): the batches due now
with their `seq`, the records still waiting, the window state that changed and the
delivery fingerprints of the messages whose effect it holds. Only after it commits
may those messages be acknowledged to the local broker (the caller does that with
what `commit` returns). A failed commit is kept and merged into the next one, so
nothing is dropped while the disk is full or the database locked; `disk_full` and
`error` say so to the health report.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_agent.batches.batcher import Batcher
from edge_agent.buffer.outbox import Outbox
from edge_agent.buffer.store import Checkpoint
from edge_agent.ingest.delivery import DeliveryLog
from edge_agent.pipelines import Pipeline

__all__ = ["Checkpointer", "merge"]

log = logging.getLogger("edge_agent")


class Checkpointer:
    """Takes checkpoints of the batcher, the engines and the delivery log into the outbox."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        batcher: Batcher,
        delivery: DeliveryLog,
        pipelines: Callable[[], Sequence[Pipeline]],
        durable: bool,
        state_dir: Path,
    ) -> None:
        self._outbox = outbox
        self._batcher = batcher
        self._delivery = delivery
        self._pipelines = pipelines  # a reload replaces the list
        self.durable = durable  # buffer.checkpoints: false keeps no window state or records
        self._state_dir = state_dir
        self.disk_full = False
        self.error = ""  # the last checkpoint's failure, "" once one commits
        self._failed: Checkpoint | None = None  # a checkpoint whose commit failed, retried next
        self._failed_acks: list[int] = []

    def take(self, force_cut: bool = False) -> Checkpoint:
        cp = Checkpoint()
        self._batcher.cut(cp, force_cut, self.durable)
        for p in self._pipelines():
            dirty = p.engine.take_dirty()
            if dirty and self.durable:
                cp.windows[p.name] = dirty
        cp.held = self._delivery.take_dirty(self.durable)
        return cp

    async def commit(
        self, acks: list[int], force_cut: bool = False
    ) -> tuple[bool, list[int] | None]:
        """Commit a checkpoint. (True, ids): committed, acknowledge `ids` (`acks` and
        those of an earlier failed commit); (True, None): nothing to commit; (False,
        None): it failed and is kept for the next one."""
        cp = self.take(force_cut)
        if self._failed is not None:
            cp = merge(self._failed, cp)
            acks = self._failed_acks + acks
            self._failed = None
        if cp.empty() and not acks and not self._outbox.owes_database():
            return True, None
        try:
            await self._outbox.commit(cp)
        except sqlite3.Error as exc:
            self._failed, self._failed_acks = cp, acks
            full = "full" in str(exc).lower()
            if full and not self.disk_full:
                log.error(
                    "state_dir %s: disk full; readings stay unacknowledged until space returns",
                    self._state_dir,
                )
            elif not full and str(exc) != self.error:
                log.error("checkpoint failed (retried, nothing is dropped): %s", exc)
            self.disk_full = full
            self.error = str(exc)
            return False, None
        if self.disk_full or self.error:
            log.info("state_dir writable again: checkpoints resumed")
        self.disk_full = False
        self.error = ""
        return True, acks


def merge(old: Checkpoint, new: Checkpoint) -> Checkpoint:
    """A failed checkpoint followed by a newer one, as one."""
    out = Checkpoint()
    out.batches = old.batches + new.batches
    out.seqs = {**old.seqs, **new.seqs}
    out.pending_add = old.pending_add + new.pending_add
    out.pending_done = {**old.pending_done, **new.pending_done}
    out.windows = {k: dict(v) for k, v in old.windows.items()}
    for k, v in new.windows.items():
        out.windows.setdefault(k, {}).update(v)
    out.windows_gone = old.windows_gone + new.windows_gone
    out.held = {**old.held, **new.held}
    out.acked = old.acked + new.acked
    out.drops = old.drops + new.drops
    return out

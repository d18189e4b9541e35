"""The Outbox: the one owner of a batch's life.

    built + durable (with its seq, in the checkpoint's transaction)
      -> queued -> published (in flight) -> PUBACKed -> deleted
      -> or dropped by policy, with its reason and counter:
         "full" (buffer.max_bytes, by the store), "ttl" (here or by the store)

The runtime hands it each checkpoint (`commit`); the uplink asks it for the next
batch (`next_batch`), says when one is published (`published`) and acknowledged
(`acked`), and when the link comes and goes (`link_up`, `link_down`). Nobody else
holds batch state.

The memory queues mirror the outbox table's tail while it is small; after a
disconnect, at start, or when a queue would grow too large, they are refilled
from the database in id order, so a 100,000-batch backlog costs a page of memory,
not the whole backlog. Batches of `priority = "high"` pipelines have their own
queue, always served first; within a priority, batches leave in id (= seq) order.

With `upstream.live_share` > 0 (default 0: strict seq order, as SPEC 4 says), the
batches built since the uplink last (re)connected ("live") get that share of the
sends while an older backlog drains, so fresh data leaves within a bounded delay
even behind a long outage on a thin link. Each flow stays in seq order.

ttl (SPEC 1) holds for every batch not yet acknowledged, wherever it is: the
store drops old batches on disk at each commit, and `next_batch` drops an old
one instead of handing it out (queued in memory, reloaded after a reconnect).
Ages run on the monotonic clock (see edge_agent.buffer.store).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable

from edge_agent.buffer.store import Checkpoint, CommitResult, OutboxRow, Store

__all__ = ["Outbox"]

log = logging.getLogger("edge_agent.buffer")

_MEMORY_ROWS = 2000  # rows mirrored in memory before the queue falls back to the database
_MEMORY_BYTES = 4 * 1024 * 1024  # and payload bytes: a backlog stays on disk, not in RAM
_PAGE = 500


class Outbox:
    """Batches from their commit to their PUBACK (or drop). Construct after `store.open()`."""

    def __init__(
        self,
        store: Store,
        *,
        ttl: float,
        live_share: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.live_share = live_share
        self._clock = clock
        self.on_new: Callable[[], None] | None = None  # the uplink's wake-up
        # Counters (SPEC 5): acknowledged, dropped by reason.
        self.batches_sent = 0
        self.batches_dropped = 0
        self.dropped_by_reason: Counter[str] = Counter()
        self.last_drop_at: float | None = None  # monotonic
        self.last_ack: float | None = None  # monotonic
        self.connected = False  # the uplink can publish: what it moves is not backlog
        self._classes = {p: _Queue(p) for p in (1, 0)}  # served in this order
        self._live = _Queue(0)  # with live_share: batches newer than the last reconnect
        self._live.backlog = False
        self._boundary = 0  # highest outbox id offered before the last reconnect
        self._sent_live = 0
        self._sent_backlog = 0
        self._inflight: dict[int, int] = {}  # published, no PUBACK yet: id -> payload size
        self._acked: list[tuple[int, int]] = []  # PUBACKed, deleted by the next commit
        self._drops: list[tuple[int, int]] = []  # dropped here (ttl), deleted by the next commit
        self._gone: set[int] = set()  # acked or dropped, maybe still in the database

    # -- the runtime's side: each checkpoint ----------------------------------------

    async def commit(self, cp: Checkpoint) -> CommitResult:
        """Commit a checkpoint with what this outbox owes the database (acks, drops);
        then queue its new batches and forget what the policy dropped."""
        cp.acked.extend(self._acked)
        cp.drops.extend(self._drops)
        self._acked, self._drops = [], []
        # Raises sqlite3.Error with the checkpoint intact: the caller retries it whole.
        result = await self.store.commit(cp, keep=dict(self._inflight), keep_new=self.connected)
        self._gone.difference_update(i for i, _ in cp.acked)
        self._gone.difference_update(i for i, _ in cp.drops)
        if result.dropped_ids:
            self._forget(result.dropped_ids)
            self._count_drops(result.dropped)
            log.warning(
                "buffer dropped %d batch(es): %s",
                len(result.dropped_ids),
                ", ".join(f"{k} {v}" for k, v in result.dropped.items()),
            )
        dropped = set(result.dropped_ids)
        rows = [
            OutboxRow(
                i,
                b.stream,
                b.seq,
                b.topic,
                b.payload,
                b.sent,
                b.priority,
                b.born if b.born is not None else self._clock(),
            )
            for i, b in zip(result.ids, cp.batches, strict=True)
            if i not in dropped
        ]
        if rows:
            for row in rows:
                self._queue_of(row).offer(row)
            if self.on_new is not None:
                self.on_new()
        return result

    def _count_drops(self, by_reason: dict[str, int]) -> None:
        n = sum(by_reason.values())
        if n:
            self.batches_dropped += n
            self.dropped_by_reason.update(by_reason)
            self.last_drop_at = self._clock()

    def _forget(self, ids: list[int]) -> None:
        """Batches the store dropped: already deleted, only the memory queues hold them."""
        gone = set(ids)
        for q in self._queues():
            if q.queue:
                q.queue = deque(r for r in q.queue if r.id not in gone)

    # -- what it holds -------------------------------------------------------------

    @property
    def batches(self) -> int:
        return self.store.outbox_batches

    def oldest_age(self) -> float | None:
        """Age in seconds of the oldest batch not yet acknowledged (monotonic), None if none."""
        born = self.store.outbox_oldest_born
        return None if born is None else max(0.0, self._clock() - born)

    @property
    def queued(self) -> int:
        """Batches in the memory queues (not yet published)."""
        return sum(len(q.queue) for q in self._queues())

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def has_more(self) -> bool:
        """Anything left to publish, in memory or on disk."""
        return any(q.queue or q.backlog for q in self._queues())

    # -- the uplink's side -----------------------------------------------------------

    async def link_up(self) -> None:
        """The uplink connected: from here on, what it publishes is not backlog."""
        if self.live_share > 0:
            await self._split_backlog()
        self.connected = True

    def link_down(self) -> None:
        """The uplink lost its connection: every unacknowledged batch goes again, in order."""
        self.connected = False
        self._inflight.clear()
        for q in self._classes.values():
            q.rewind()
        self._live.queue.clear()

    async def refill(self) -> None:
        """Load the next page from the database into each queue that ran dry."""
        for q in self._queues():
            if not q.queue and q.backlog:
                await q.load(self.store, self._gone)

    def next_batch(self) -> OutboxRow | None:
        """The next batch to publish (not taken yet): high priority first, then backlog
        and live by share. Batches past ttl are dropped (counted) on the way."""
        while True:
            row = self._pick()
            if row is None or self.ttl <= 0 or self._clock() - row.born <= self.ttl:
                return row
            self._queue_of(row).queue.popleft()
            self._drops.append((row.id, len(row.payload)))
            self._gone.add(row.id)
            self._count_drops({"ttl": 1})
            log.warning(
                "buffer dropped batch seq %d: ttl (%.0f s old)", row.seq, self._clock() - row.born
            )

    def published(self, row: OutboxRow) -> None:
        """`row` (from next_batch) was handed to the connection."""
        q = self._queue_of(row)
        if q is self._live:
            self._sent_live += 1
        elif q is self._classes[0]:
            self._sent_backlog += 1
        q.queue.popleft()
        self._inflight[row.id] = len(row.payload)

    def acked(self, row: OutboxRow) -> None:
        """Its PUBACK came: deleted by the next commit."""
        self._inflight.pop(row.id, None)
        self.batches_sent += 1
        self.last_ack = self._clock()
        self._acked.append((row.id, len(row.payload)))
        self._gone.add(row.id)

    def owes_database(self) -> bool:
        """Whether acks or drops wait for a commit."""
        return bool(self._acked or self._drops)

    # -- internals -----------------------------------------------------------------

    def _queues(self) -> tuple[_Queue, ...]:
        return (*self._classes.values(), self._live)

    def _queue_of(self, row: OutboxRow) -> _Queue:
        if row.priority > 0:
            return self._classes[1]
        if self.live_share > 0 and row.id > self._boundary:
            return self._live
        return self._classes[0]

    def _head(self, q: _Queue) -> OutboxRow | None:
        queue = q.queue
        while queue and queue[0].id in self._gone:
            queue.popleft()
        return queue[0] if queue else None

    def _pick(self) -> OutboxRow | None:
        high = self._head(self._classes[1])
        if high is not None:
            return high
        old, live = self._head(self._classes[0]), self._head(self._live)
        if old is None or live is None:
            return old or live
        total = self._sent_live + self._sent_backlog
        return live if self._sent_live < self.live_share * (total + 1) else old

    async def _split_backlog(self) -> None:
        """On connect (live_share > 0): what is committed now is the backlog, what is
        built from here on is live. Both were rewound, so nothing is queued twice."""
        self._boundary = max(
            await self.store.max_outbox_id(),
            self._live.offered,
            *(q.offered for q in self._classes.values()),
        )
        self._classes[0].upper = self._boundary
        self._live.cursor = self._live.offered = self._boundary
        self._live.backlog = False
        self._live.queue.clear()
        self._sent_live = self._sent_backlog = 0


class _Queue:
    """One priority's queue: the outbox's rows of that priority, mirrored in memory."""

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.queue: deque[OutboxRow] = deque()
        self.cursor = 0  # highest outbox id mirrored in memory
        self.backlog = True  # the database may hold rows beyond the cursor
        self.offered = 0  # highest id offered by a commit
        self.upper: int | None = None  # rows above this id belong to the live queue
        self.row_hint = 1024  # payload size of a recent row, to size pages by bytes

    def offer(self, row: OutboxRow) -> None:
        self.offered = max(self.offered, row.id)
        if not self.backlog and len(self.queue) < _MEMORY_ROWS and self.bytes() < _MEMORY_BYTES:
            self.queue.append(row)
            self.cursor = row.id
        else:
            self.backlog = True

    def bytes(self) -> int:
        # Estimated from the head (batches of a queue are alike), not summed per call.
        return len(self.queue[0].payload) * len(self.queue) if self.queue else 0

    def rewind(self) -> None:
        self.queue.clear()
        self.cursor = 0
        self.backlog = True

    async def load(self, store: Store, skip: set[int]) -> None:
        offered_before = self.offered  # all committed before the query starts
        page = max(1, min(_PAGE, _MEMORY_BYTES // max(1, self.row_hint)))
        rows = await store.outbox_after(self.cursor, page, self.priority)
        if rows:
            self.row_hint = len(rows[0].payload)
        if self.upper is not None and rows and rows[-1].id > self.upper:
            rows = [r for r in rows if r.id <= self.upper]
            self.queue.extend(r for r in rows if r.id not in skip)
            self.cursor = self.upper
            self.backlog = False
            return
        if rows:
            self.cursor = max(self.cursor, rows[-1].id)
            self.queue.extend(r for r in rows if r.id not in skip)
        if len(rows) < page:
            # The query saw every row up to offered_before that still exists; rows
            # offered while it ran keep the backlog set for one more page.
            self.cursor = max(self.cursor, offered_before)
            self.backlog = self.offered > self.cursor

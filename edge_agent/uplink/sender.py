"""Batches leave through here: outbox -> upstream broker, oldest first.

A batch leaves the outbox only after its PUBACK (the runtime deletes it in its
next commit). The in-memory queue mirrors the outbox's tail while it is small;
after a disconnect, at start, or when the queue would grow too large, it is
refilled from the database in id order, so a 100,000-batch backlog costs a page
of memory, not the whole backlog.

Batches of `priority = "high"` pipelines have their own queue, always served
first; within a priority, batches leave in id (= seq) order.

With `upstream.live_share` > 0 (default 0: strict seq order, as SPEC 4 says), the
batches built since the uplink last (re)connected ("live") get that share of the
sends while an older backlog drains, so fresh data leaves within a bounded delay
even behind a long outage on a thin link. Each flow stays in seq order; a
consumer that keeps the newest rev per window and deduplicates on seq is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from edge_agent.batches.builder import is_deflated
from edge_agent.buffer.store import OutboxRow, Store
from edge_agent.config import UpstreamSection
from edge_agent.errors import EdgeAgentError
from edge_agent.mqtt import MqttClient, MqttError, TlsSettings, Will
from edge_agent.uplink.backoff import Backoff
from edge_agent.uplink.throttle import AdaptiveWindow, RateLimiter

__all__ = ["Uplink"]

log = logging.getLogger("edge_agent.uplink")

CONTENT_TYPE = "application/cbor"
DEFLATE = ("content-encoding", "deflate")  # MQTT 5 user property of a compressed batch (SPEC 4)
_MEMORY_ROWS = 2000  # rows mirrored in memory before the queue falls back to the database
_MEMORY_BYTES = 4 * 1024 * 1024  # and payload bytes: a backlog stays on disk, not in RAM
_PAGE = 500


class Uplink:
    """Keeps a connection to the upstream broker and drains the outbox through it."""

    def __init__(
        self,
        cfg: UpstreamSection,
        *,
        client_id: str,
        store: Store,
        max_inflight: int = 64,
        ack_timeout: float = 30.0,
        password: str = "",
        status: Callable[[str], tuple[bytes, str]] | None = None,
        status_topic: str = "",
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.store = store
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        self.password = password
        self.connected = False
        self.lost_since: float | None = time.monotonic()  # unreachable until the first CONNACK
        self.last_ack: float | None = None
        self.last_error = ""
        self.batches_sent = 0
        self.acked: list[tuple[int, int]] = []  # (id, size), taken by the runtime's commit
        self._classes = {p: _Class(p) for p in (1, 0)}  # served in this order
        self._live = _Class(0)  # with live_share: batches newer than the last reconnect
        self._live.backlog = False
        self._boundary = 0  # highest outbox id offered before the last reconnect
        self._sent_live = 0
        self._sent_backlog = 0
        self._skip: set[int] = set()  # acked or dropped, maybe still in the database
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._client: MqttClient | None = None
        self._kick = asyncio.Event()  # cuts a reconnect wait short (reconfigure)
        self._setup_limits()
        self.latency: float | None = None  # last PUBACK latency, seconds
        self.inflight = 0
        # Device status (SPEC 4): `status(state)` gives (payload, health status string).
        self.status = status
        self.status_topic = status_topic
        self._status_health = ""  # health in the last status published
        self._status_at = 0.0  # monotonic time of it
        self._stopping = False

    def _setup_limits(self) -> None:
        cfg = self.cfg
        self.window = AdaptiveWindow(self.max_inflight)
        self.rate = RateLimiter(cfg.rate_limit)

    def reconfigure(self, cfg: UpstreamSection, password: str) -> None:
        """New upstream settings (a reload): reconnect with them, resending what is unacknowledged."""
        changed = cfg != self.cfg or password != self.password
        self.cfg, self.password = cfg, password
        self.max_inflight = cfg.max_inflight
        self._setup_limits()
        if changed:
            self.last_error = ""
            if self._client is not None:
                self._client.close()  # the run loop sees the loss, rewinds and reconnects
            self._kick.set()

    # -- fed by the runtime ---------------------------------------------

    def offer(self, rows: list[OutboxRow]) -> None:
        """Newly committed batches, in id order."""
        if not rows:
            return
        for row in rows:
            self._class_of(row).offer(row)
        self._wake_up()

    def _class_of(self, row: OutboxRow) -> _Class:
        if row.priority > 0:
            return self._classes[1]
        if self.cfg.live_share > 0 and row.id > self._boundary:
            return self._live
        return self._classes[0]

    def forget(self, ids: list[int]) -> None:
        """Batches the buffer policy dropped: never send them."""
        if ids:
            # Already deleted from the database (this follows their commit), so a
            # reload cannot bring them back: only the in-memory queues hold them.
            gone = set(ids)
            for c in (*self._classes.values(), self._live):
                c.queue = deque(r for r in c.queue if r.id not in gone)

    def take_acked(self) -> list[tuple[int, int]]:
        acked, self.acked = self.acked, []
        return acked

    def committed_deletions(self, ids: list[tuple[int, int]]) -> None:
        """The runtime deleted these from the database: stop remembering them."""
        self._skip.difference_update(i for i, _ in ids)

    @property
    def queued(self) -> int:
        return sum(len(c.queue) for c in (*self._classes.values(), self._live))

    @property
    def _backlog(self) -> bool:
        return any(c.backlog for c in (*self._classes.values(), self._live))

    def _head(self, c: _Class) -> OutboxRow | None:
        q = c.queue
        while q and q[0].id in self._skip:
            q.popleft()
        return q[0] if q else None

    def _next_row(self) -> OutboxRow | None:
        """The next batch to send: high priority first, then backlog and live by share."""
        high = self._head(self._classes[1])
        if high is not None:
            return high
        old, live = self._head(self._classes[0]), self._head(self._live)
        if old is None or live is None:
            return old or live
        total = self._sent_live + self._sent_backlog
        return live if self._sent_live < self.cfg.live_share * (total + 1) else old

    def _pop(self, row: OutboxRow) -> None:
        c = self._class_of(row)
        if c is self._live:
            self._sent_live += 1
        elif c is self._classes[0]:
            self._sent_backlog += 1
        c.queue.popleft()

    # -- the connection loop ----------------------------------------------

    async def run(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            self._kick.clear()
            cfg = self.cfg
            tls = TlsSettings(cfg.ca_file, cfg.cert_file, cfg.key_file) if cfg.tls else None
            will = None
            if self.status is not None and self.status_topic:
                will = Will(self.status_topic, self.status("offline")[0], qos=1, retain=True,
                            content_type=CONTENT_TYPE)
            client = MqttClient(
                host=cfg.host,
                port=cfg.port,
                client_id=self.client_id,
                clean_start=True,
                tls=tls,
                username=cfg.username,
                password=self.password,
                max_inflight=self.max_inflight + 8,
                keepalive=max(1, round(cfg.keepalive)),
                will=will,
            )
            try:
                await client.connect(timeout=10.0)
            except (MqttError, OSError) as exc:
                self._note_error(str(exc))
                await self._pause(backoff.next())
                continue
            if self.cfg.live_share > 0:
                await self._split_backlog()
            # Never more in flight than the broker accepts (paho does not enforce it).
            self.window.cap(client.server_receive_maximum)
            self._client = client
            self.connected = True
            self.lost_since = None
            self.last_error = ""
            backoff.reset()
            log.info("upstream connected: %s:%d", cfg.host, cfg.port)
            self.publish_status()
            try:
                await self._send_until_lost(client)
            except MqttError as exc:
                self._note_error(str(exc))
            finally:
                self.connected = False
                self.lost_since = time.monotonic()
                self._client = None
                client.close()
                self._rewind()
            await self._pause(backoff.next())

    # -- device status ----------------------------------------------------

    def publish_status(self) -> None:
        """Publish "online" now (retained, QoS 1), if connected and a status topic is set."""
        client = self._client
        if self.status is None or not self.status_topic or client is None or not client.connected:
            return
        payload, health = self.status("online")
        self._status_health, self._status_at = health, time.monotonic()
        try:
            fut = client.publish(self.status_topic, payload, 1, CONTENT_TYPE, retain=True)
        except MqttError as exc:
            log.debug("status not published: %s", exc)
            return
        fut.add_done_callback(_log_status_failure)

    def status_tick(self, health: str) -> None:
        """Called about once a second: republish on a health change or when the interval is up."""
        if health != self._status_health or time.monotonic() - self._status_at >= self.cfg.status_interval:
            self.publish_status()

    async def say_offline(self, timeout: float = 2.0) -> None:
        """Graceful stop: publish "offline" and wait (bounded) for its PUBACK, then DISCONNECT,
        which discards the will (MQTT 5 3.1.2.5). The run loop does not reconnect after this."""
        self._stopping = True
        self._kick.set()
        client = self._client
        if client is None or not client.connected:
            return
        if self.status is not None and self.status_topic:
            try:
                fut = client.publish(self.status_topic, self.status("offline")[0], 1, CONTENT_TYPE,
                                     retain=True)
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            except (MqttError, TimeoutError) as exc:
                log.warning("offline status not acknowledged: %s", exc)
        await client.disconnect(timeout=timeout)

    async def _pause(self, delay: float) -> None:
        """The reconnect wait; a reconfigure ends it at once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), delay)

    def _note_error(self, why: str) -> None:
        if why != self.last_error:
            log.warning("upstream %s:%d unreachable: %s", self.cfg.host, self.cfg.port, why)
        self.last_error = why

    def _rewind(self) -> None:
        """After a disconnect, every unacknowledged batch goes again, in order."""
        for c in self._classes.values():
            c.rewind()
        self._live.queue.clear()

    async def _split_backlog(self) -> None:
        """On connect (live_share > 0): what is committed now is the backlog, what is
        built from here on is live. Both were rewound, so nothing is queued twice."""
        self._boundary = max(await self.store.max_outbox_id(), self._live.offered,
                             *(c.offered for c in self._classes.values()))
        self._classes[0].upper = self._boundary
        self._live.cursor = self._live.offered = self._boundary
        self._live.backlog = False
        self._live.queue.clear()
        self._sent_live = self._sent_backlog = 0

    async def _send_until_lost(self, client: MqttClient) -> None:
        # Hot loop of a backlog drain: per batch one publish, one completion callback
        # and (when idle) one future to sleep on; no tasks, no asyncio.wait.
        inflight: dict[int, tuple[OutboxRow, float]] = {}  # insertion order = send order
        done: deque[tuple[OutboxRow, BaseException | None]] = deque()
        lost = asyncio.ensure_future(client.wait_disconnected())
        lost.add_done_callback(lambda _f: self._wake_up())
        publish, qos, rate = client.publish, self.cfg.qos, self.rate
        monotonic = time.monotonic

        def on_done(row: OutboxRow, fut: asyncio.Future[None]) -> None:
            done.append((row, fut.exception() if not fut.cancelled() else MqttError("cancelled")))
            self._wake_up()

        try:
            while not lost.done():
                # Refill the memory queues from the database when they ran dry.
                for c in (*self._classes.values(), self._live):
                    if not c.queue and c.backlog:
                        await c.load(self.store, self._skip)
                throttled = 0.0
                limit = self.window.limit
                while len(inflight) < limit:
                    row = self._next_row()
                    if row is None:
                        break
                    if rate.active:
                        throttled = rate.wait_time(len(row.payload))
                        if throttled > 0:
                            break
                        rate.take(len(row.payload))
                    self._pop(row)
                    payload = row.payload
                    if is_deflated(payload):
                        fut = publish(row.topic, payload, qos, CONTENT_TYPE, user_property=DEFLATE)
                    else:
                        fut = publish(row.topic, payload, qos, CONTENT_TYPE)
                    inflight[row.id] = (row, monotonic())
                    fut.add_done_callback(lambda f, r=row: on_done(r, f))
                while done:
                    row, exc = done.popleft()
                    sent_at = inflight.pop(row.id, (row, monotonic()))[1]
                    if exc is not None:
                        raise exc if isinstance(exc, MqttError) else MqttError(str(exc))
                    self.latency = monotonic() - sent_at
                    self.window.on_ack(self.latency)
                    self._acked(row)
                self.inflight = len(inflight)
                if inflight:
                    oldest = next(iter(inflight.values()))[1]
                    if monotonic() - oldest > self.ack_timeout:
                        self.window.on_timeout()
                        raise MqttError(f"no PUBACK within {self.ack_timeout:g} s")
                room = len(inflight) < self.window.limit
                if room and throttled == 0 and (self.queued or self._backlog):
                    continue
                await self._sleep(throttled if throttled > 0 and room else 1.0)
        finally:
            lost.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lost

    def _wake_up(self) -> None:
        self._woken = True
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _sleep(self, timeout: float) -> None:
        """Until something happens (a PUBACK, new batches, the connection lost) or timeout."""
        if self._woken:
            self._woken = False
            return
        loop = asyncio.get_running_loop()
        w = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, lambda: w.done() or w.set_result(None))
        try:
            await w
        finally:
            timer.cancel()
            self._waiter = None
            self._woken = False

    def _acked(self, row: OutboxRow) -> None:
        self.batches_sent += 1
        self.last_ack = time.monotonic()
        self.acked.append((row.id, len(row.payload)))
        self._skip.add(row.id)


    async def close(self) -> None:
        if self._client is not None:
            await self._client.disconnect()


def _log_status_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("status publish failed: %s", fut.exception())


def read_password(path: str, section: str = "upstream") -> str:
    """A broker password, from `<section>.password_file` (never from the config itself)."""
    if not path:
        return ""
    from edge_agent.logs import register_secret

    try:
        password = Path(path).read_text(encoding="utf-8").strip("\r\n")
    except UnicodeDecodeError:  # its message would quote bytes of the file
        raise EdgeAgentError(f"{section}.password_file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise EdgeAgentError(
            f"{section}.password_file {path}: cannot read it: {exc.strerror or type(exc).__name__}"
        ) from None
    register_secret(password)
    return password


class _Class:
    """One priority's queue: the outbox's rows of that priority, mirrored in memory."""

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.queue: deque[OutboxRow] = deque()
        self.cursor = 0  # highest outbox id mirrored in memory
        self.backlog = True  # the database may hold rows beyond the cursor
        self.offered = 0  # highest id offered by the runtime
        self.upper: int | None = None  # rows above this id belong to the live class
        self.row_hint = 1024  # payload size of a recent row, to size pages by bytes

    def offer(self, row: OutboxRow) -> None:
        self.offered = max(self.offered, row.id)
        if not self.backlog and len(self.queue) < _MEMORY_ROWS and self.bytes() < _MEMORY_BYTES:
            self.queue.append(row)
            self.cursor = row.id
        else:
            self.backlog = True

    def bytes(self) -> int:
        # Estimated from the head (batches of a class are alike), not summed per call.
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

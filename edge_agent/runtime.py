"""The supervisor: one Agent owns every task of the data path.

    local broker -> ingest (decode, route) -> windows -> streams (cut batches)
        -> checkpoint (one SQLite transaction) -> PUBACKs to the local broker
        -> uplink (outbox -> upstream broker)

Durability rule (SPEC 3, last point): a reading is acknowledged to the local broker
only after the transaction that holds its effect (window state, records, batches)
has committed. Messages whose effect is committed are remembered by a fingerprint
of their packet id, topic and payload, so when the broker redelivers them after a
crash (MQTT 5 section 4.4: same packet id, DUP set) they are acknowledged again
without being counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import zlib
from collections.abc import Callable
from typing import Any

from edge_agent import __version__
from edge_agent.batches.batcher import Batcher
from edge_agent.buffer.outbox import Outbox
from edge_agent.buffer.store import Checkpoint, Store
from edge_agent.checkpoint import Checkpointer
from edge_agent.clock import IngestClock, WallClock
from edge_agent.config import Config, load_config
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.health.endpoint import HealthEndpoint
from edge_agent.health.report import HealthReport
from edge_agent.health.system import SystemProbe
from edge_agent.ingest.broker_drops import BrokerDrops
from edge_agent.ingest.connection import RECEIVE_MAXIMUM, LocalConnection
from edge_agent.ingest.decode import REASON_TOO_LARGE, PayloadDecoder
from edge_agent.ingest.delivery import DeliveryLog
from edge_agent.ingest.router import TopicRouter
from edge_agent.ingest.shed import MIN_SAMPLE, SLICE_S, Shedder
from edge_agent.mqtt import Message, MqttClient, MqttError
from edge_agent.pipelines import Pipeline, build_pipeline, replan
from edge_agent.sdnotify import SdNotifier, watchdog_interval
from edge_agent.uplink.sender import Uplink, read_password
from edge_agent.windows.engine import Emitted

__all__ = ["Agent"]

log = logging.getLogger("edge_agent")

OVERLOAD_LAG = 0.5  # event-loop lag (s) past which ingest counts as overloaded
_ACK_FLUSH = RECEIVE_MAXIMUM // 2  # commit early when half the window waits for its acks
# The ingest budget: past this much uncommitted work, the local socket is not read
# until the next checkpoint has acknowledged it, so a flood waits in the broker, not
# in our memory (records: encoded but not yet durable, across all streams).
_BUDGET_MESSAGES = RECEIVE_MAXIMUM  # a broker that ignores our Receive Maximum meets this
_BUDGET_RECORDS = 100_000
# Payload bytes read from the local socket and not yet processed: QoS 0 is shed past
# 16 MiB (ingest/shed.py); QoS 1 (never shed) pauses the socket past this.
_INBOX_HARD_BYTES = 32 * 1024 * 1024


class Agent:
    """`async with`-free by design: `await agent.run()` until `request_stop()`."""

    def __init__(self, cfg: Config, *, notifier: SdNotifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or SdNotifier()
        self.started = time.monotonic()
        self.store = Store(
            cfg.agent.state_dir,
            max_bytes=cfg.buffer.max_bytes,
            when_full=cfg.buffer.when_full,
            ttl=cfg.buffer.ttl,
        )
        self.outbox = Outbox(self.store, ttl=cfg.buffer.ttl, live_share=cfg.upstream.live_share)
        self.pipelines: list[Pipeline] = [
            build_pipeline(p, cfg.local.max_future_skew) for p in cfg.pipelines
        ]
        self.router = TopicRouter([p.cfg.topics for p in self.pipelines])
        self.shedder = Shedder(self.router.route, self.pipelines)
        self.broker_drops = BrokerDrops()
        self.batcher = Batcher(cfg)
        self.uplink: Uplink | None = None
        self.conn = LocalConnection(
            config=lambda: self.cfg,
            router=lambda: self.router,
            store=self.store,
            notifier=self.notifier,
            on_message=self._on_message,
        )
        self.messages_qos0 = 0
        self.messages_duplicate = 0
        self.ingest_pauses = 0  # times the local socket was paused for the checkpoint to catch up
        self._over_budget = False  # uncommitted work past the budget, until the next checkpoint
        self._over_budget_at = -1e9
        self.ingest_clock = IngestClock()  # idle timeouts: monotonic, less ingest stalls
        self.wall_clock = WallClock()  # whether max_future_skew applies (edge_agent.clock)
        self.loop_lag = 0.0
        self.overloaded = False
        self.probe = SystemProbe(cfg.agent.state_dir)
        self.delivery = DeliveryLog()  # fingerprints of messages whose effect is durable
        self._acks: list[int] = []  # packet ids to acknowledge after the next commit
        self._emitted = Emitted()
        self._inbox: list[tuple[Message, float]] = []
        self._inbox_bytes = 0
        self._inbox_paused = False
        self._process_scheduled = False
        self._taking = False  # False while starting and stopping: messages are left unacknowledged
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._commit_now = asyncio.Event()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self.durable = cfg.buffer.checkpoints
        self.checkpointer = Checkpointer(
            outbox=self.outbox,
            batcher=self.batcher,
            delivery=self.delivery,
            pipelines=lambda: self.pipelines,
            durable=self.durable,
            state_dir=cfg.agent.state_dir,
        )
        self.report = HealthReport(
            started=self.started,
            store=self.store,
            outbox=self.outbox,
            probe=self.probe,
            conn=self.conn,
            checkpointer=self.checkpointer,
            broker_drops=self.broker_drops,
            ingest=self,
            config=lambda: self.cfg,
            uplink=lambda: self.uplink,
            pipelines=lambda: self.pipelines,
            shedder=lambda: self.shedder,
        )
        self.endpoint = HealthEndpoint(self.health, self.ready)

    # -- public control -------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def ready(self) -> bool:
        return self.conn.subscribed and self.conn.connected

    @property
    def local(self) -> MqttClient | None:
        """The live connection to the local broker, if any."""
        return self.conn.client

    async def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Run until request_stop(); then stop in stages and return.

        `on_started` is called once the state database is open (the pid file).
        """
        self._loop = asyncio.get_running_loop()
        self.wall_clock.note_seen(self.store.path)  # its last write: a wall time already seen
        restored = await self.store.open()
        try:
            self._restore(restored)
            relaxed = self.wall_clock.behind()
            for p in self.pipelines:
                p.decoder.relax_future_skew(relaxed)
            if on_started is not None:
                on_started()
            password = read_password(self.cfg.upstream.password_file)
            self.conn.password = read_password(self.cfg.local.password_file, "local")
            self.uplink = Uplink(
                self.cfg.upstream,
                client_id=f"edge-agent-{self.cfg.agent.id}-up",
                outbox=self.outbox,
                password=password,
                max_inflight=self.cfg.upstream.max_inflight,
                status=self.report.status_payload,
                status_topic=self.cfg.status_topic,
            )
            await self.endpoint.start(self.cfg.health)
        except BaseException:
            await self.store.close()  # its aiosqlite thread would keep the process alive
            raise
        self._taking = True
        self._spawn("local", self.conn.run())
        self._spawn("uplink", self.uplink.run())
        self._spawn("commit", self._commit_loop())
        self._spawn("idle", self._idle_loop())
        self._spawn("reclaim", self._reclaim_loop())
        self._spawn("lag", self._lag_loop())
        self._spawn("devstatus", self._device_status_loop())
        interval = watchdog_interval()
        if interval:
            self._spawn("watchdog", self._watchdog_loop(interval))
        if self.notifier.enabled:
            self._spawn("status", self._status_loop())
        log.info(
            "edge-agent %s started: agent %s, %d pipeline(s), config %s",
            __version__,
            self.cfg.agent.id,
            len(self.pipelines),
            self.cfg.hash,
        )
        try:
            while not self._stop.is_set():
                reload_wait = asyncio.ensure_future(self._reload.wait())
                stop_wait = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait(
                    [reload_wait, stop_wait, *self._tasks.values()],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                reload_wait.cancel()
                stop_wait.cancel()
                crashed = [t for t in self._tasks.values() if t.done()]
                for t in crashed:
                    exc = t.exception() if not t.cancelled() else None
                    raise EdgeAgentError(f"task {t.get_name()} ended: {exc!r}") from exc
                if self._reload.is_set():
                    self._reload.clear()
                    await self._do_reload()
        finally:
            await self._shutdown()

    # -- restore ---------------------------------------------------------------

    def _restore(self, r: Any) -> None:
        self.batcher.restore(r.seqs, r.pending)
        with contextlib.suppress(TypeError, ValueError):
            self.conn.filters_before = list(json.loads(r.meta.get("filters") or "[]"))
        by_name = {p.name: p for p in self.pipelines}
        for name, states in r.windows.items():
            p = by_name.get(name)
            if p is None:
                log.warning("checkpoint of pipeline %r ignored: no such pipeline now", name)
                continue
            used = p.engine.restore(states, wall=self.ingest_clock())
            if used is not None and used < len(states):
                log.warning(
                    "pipeline %r: %d of %d checkpointed keys were saved with other window "
                    "settings and are dropped",
                    name,
                    len(states) - used,
                    len(states),
                )
        self.delivery.restore(r.held)
        if r.outbox_batches:
            log.info("outbox holds %d batch(es) from before; draining them first", r.outbox_batches)

    # -- ingest ------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        if not self._taking:
            return  # not acknowledged: the broker redelivers it to the next run
        inbox = self._inbox
        if msg.topic_bytes == BrokerDrops.topic_bytes:
            self.broker_drops.observe(msg.payload)
            if msg.qos and self.local is not None:
                self.local.ack(msg.mid, msg.qos)
            return
        if (
            not msg.qos
            and self.shedder.over(len(inbox), self._inbox_bytes)
            and not self.shedder.keep(msg.topic_bytes, len(inbox), self._inbox_bytes)
        ):
            # Load shedding, before decoding: QoS 0 cannot be held back by withheld
            # acknowledgements, QoS 1 can (the broker stops at our Receive Maximum).
            return
        inbox.append((msg, time.time()))
        self._inbox_bytes += len(msg.payload) + len(msg.topic_bytes)
        if (
            self._inbox_bytes > _INBOX_HARD_BYTES
            and self.local is not None
            and not self.local.reading_paused
        ):
            # QoS 1 messages are never shed; past this many bytes read and not yet
            # processed the socket waits (the broker holds the rest) until a slice
            # has made room.
            self.local.pause_reading()
            self._inbox_paused = True
        if not self._process_scheduled:
            self._process_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._process_inbox)

    def _process_inbox(self, everything: bool = False) -> None:
        """Process the inbox for one time slice (SLICE_S) or, with `everything`, all of it.

        What is left waits for the next turn, after the event loop has read the
        socket and run its timers; the shedder keeps the inbox within its limit.
        """
        self._process_scheduled = False
        inbox = self._inbox
        if not inbox:
            return
        perf = time.perf_counter
        done, n = 0, len(inbox)
        # The CPU clock is a system call (not in the vDSO, unlike perf_counter): read it
        # only for a slice the shedder learns from, not for each small live read.
        sample = n >= MIN_SAMPLE
        t0, cpu0 = perf(), time.thread_time() if sample else 0.0
        deadline = t0 + SLICE_S
        while done < n:
            chunk = inbox[done : done + 256]
            done += len(chunk)
            self._inbox_bytes -= sum([len(m.payload) + len(m.topic_bytes) for m, _ in chunk])
            self._process_batch(chunk)
            if not everything and perf() >= deadline:
                break
        del inbox[:done]
        # The cost per message in CPU time of this thread: wall time would count the
        # moments the OS gave the core to someone else, shrink the limit and shed
        # while the agent is idle.
        if sample:
            self.shedder.note_processed(done, time.thread_time() - cpu0)
        if self._inbox_paused and self._inbox_bytes <= _INBOX_HARD_BYTES // 2:
            self._inbox_paused = False
            local = self.local
            if local is not None and local.reading_paused and self._taking:
                local.resume_reading()
        if inbox and not self._process_scheduled:
            self._process_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._process_inbox)

    def _process_batch(self, inbox: list[tuple[Message, float]]) -> None:
        held, dirty, acks = self.delivery.table, self.delivery.dirty, self._acks
        route, pipelines = self.router.route, self.pipelines
        crc32 = zlib.crc32
        touched: set[int] = set()
        durable = self.durable
        local = self.local
        first_copy = self.router.first_copy
        for msg, arrival in inbox:
            payload = msg.payload
            topic_b = msg.topic_bytes
            try:
                topic = topic_b.decode("utf-8")
            except UnicodeDecodeError:
                topic = ""  # brokers refuse such topics (MQTT 5 1.5.4); never fatal
            sids = msg.subscription_ids
            if sids and not first_copy(topic, sids):
                # Another copy of this message, sent for an overlapping subscription.
                if msg.qos:
                    acks.append(msg.mid)
                continue
            if msg.qos:
                mid = msg.mid
                fp = crc32(payload, crc32(topic_b)) | 1
                if msg.dup and held[mid] == fp:
                    # Its effect is committed already (a redelivery after a crash or a
                    # reconnect): acknowledge again, count nothing.
                    self.messages_duplicate += 1
                    acks.append(mid)
                    continue
                held[mid] = fp
                dirty.add(mid >> 8)
                if durable:
                    acks.append(mid)
                elif local is not None:
                    local.ack(mid, 1)
            else:
                self.messages_qos0 += 1
            idx = route(topic)
            if not idx:
                continue
            if msg.too_large:  # the client skipped its payload (over mqtt.MAX_PACKET)
                for i in idx:
                    pipelines[i].rejects[REASON_TOO_LARGE] += 1
                continue
            ctype = msg.content_type
            for i in idx:
                p = pipelines[i]
                p.decoder.decode(topic, payload, ctype, arrival, p.buf, p.rejects)
                touched.add(i)
        clock = self.ingest_clock()  # see _idle_loop
        emitted = self._emitted
        for i in touched:
            p = pipelines[i]
            buf = p.buf
            if buf:
                engine = p.engine
                taken = p.limits.admit(buf, clock, engine.keys(), engine.has_key, engine.key_bytes)
                if taken is not buf:
                    for reason, n in (
                        ("over_key_cap", p.limits.over_key_cap),
                        ("over_key_rate", p.limits.over_key_rate),
                        ("over_key_bytes", p.limits.over_key_bytes),
                    ):
                        if n:
                            p.rejects[reason] = n
                p.readings_in += len(taken)
                if taken:
                    engine.process(taken, clock, emitted)
                buf.clear()
        self.batcher.take(self._emitted)
        if len(acks) >= _ACK_FLUSH:
            self._commit_now.set()
        over_records = self.batcher.records_waiting() >= _BUDGET_RECORDS
        if over_records or len(acks) >= _BUDGET_MESSAGES:
            # Over the ingest budget: overloaded until a checkpoint catches up. QoS 0
            # messages are shed on arrival meanwhile (counted); QoS 1 ones are held
            # back by not reading the socket, so the broker keeps them (nothing lost).
            self._over_budget = True
            self._over_budget_at = time.monotonic()
            if not self.overloaded:
                self._set_overloaded(True)
            hard = (
                len(acks) >= _BUDGET_MESSAGES
                or self.batcher.records_waiting() >= 2 * _BUDGET_RECORDS
            )
            if hard and local is not None and not local.reading_paused:
                local.pause_reading()
                self.ingest_pauses += 1
            self._commit_now.set()

    async def _idle_loop(self) -> None:
        """Fire the windows of keys silent for idle_timeout, on the ingest clock.

        idle_timeout is about a device going quiet, so it only runs while the agent
        could hear from it: while the local broker is away, the socket is paused by
        the ingest budget or the loop is overloaded, readings wait at the broker, and
        firing their keys' windows as idle would turn them into late drops. The
        ingest clock (edge_agent.clock.IngestClock) is monotonic, in wall-clock units
        from the start, less every such stall: a wall-clock step does not move it.
        Each tick also decides whether max_future_skew applies (WallClock.behind).
        """
        tick = 0.25
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            local = self.local
            stalled = (
                not self.conn.connected or local is None or local.reading_paused or self.overloaded
            )
            if stalled:
                self.ingest_clock.stalled += now - last
                last = now
                continue
            # A tick that comes late means the loop was busy (a big checkpoint, a burst):
            # no reading was processed meanwhile, so that time is a stall too.
            self.ingest_clock.stalled += max(0.0, now - last - 2 * tick)
            last = now
            relaxed = self.wall_clock.behind()
            for p in self.pipelines:
                p.decoder.relax_future_skew(relaxed)
            clock = self.ingest_clock()
            for p in self.pipelines:
                p.engine.advance_idle(clock, self._emitted)
            self.batcher.take(self._emitted)

    # -- checkpoint ----------------------------------------------------------

    async def _commit_loop(self) -> None:
        # Stopped by _closing, never cancelled mid-commit: a commit cut short after its
        # transaction would lose the acknowledgements it owes the local broker.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._commit_now.wait(), self.cfg.buffer.checkpoint_interval)
            self._commit_now.clear()
            if not self._closing:
                await self.commit()

    async def commit(self, force_cut: bool = False) -> bool:
        """One checkpoint: make everything durable, then acknowledge what it holds."""
        acks, self._acks = self._acks, []
        ok, done = await self.checkpointer.commit(acks, force_cut)
        if not ok:
            return False
        if done is None:
            return True  # nothing to commit
        local = self.local
        if local is not None:
            local.ack_many(done)
            if local.reading_paused and self._taking:
                local.resume_reading()
        self._over_budget = False
        return True

    async def _reclaim_loop(self) -> None:
        while True:
            await asyncio.sleep(30.0)
            with contextlib.suppress(sqlite3.Error):
                await self.store.reclaim()

    async def _lag_loop(self) -> None:
        """Event-loop lag: how late a 250 ms sleep wakes up. Past OVERLOAD_LAG, ingest
        is overloaded: /healthz says so and QoS 0 messages are shed (counted)."""
        loop = asyncio.get_running_loop()
        recent: list[float] = []
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.25)
            recent.append(max(0.0, loop.time() - t0 - 0.25))
            del recent[:-8]
            self.loop_lag = max(recent)
            # Overloaded: the loop is late, or ingest went over its budget in the last 2 s.
            recent_budget = self._over_budget or time.monotonic() - self._over_budget_at < 2.0
            overloaded = self.loop_lag > OVERLOAD_LAG or recent_budget
            if overloaded != self.overloaded:
                self._set_overloaded(overloaded)

    def _set_overloaded(self, overloaded: bool) -> None:
        self.overloaded = overloaded
        if overloaded:
            log.warning(
                "ingest overloaded (event loop %.1f s late, %d uncommitted records): "
                "holding QoS 1 back at the broker",
                self.loop_lag,
                self.batcher.records_waiting(),
            )
        else:
            log.info("ingest keeps up again (event loop lag %.2f s)", self.loop_lag)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(10.0)
            if self.ready():
                self.notifier.status(self.report.status_line())

    async def _device_status_loop(self) -> None:
        """Status over MQTT: the uplink republishes on a health change or each status_interval."""
        while True:
            await asyncio.sleep(1.0)
            if self.uplink is not None and self.uplink.connected:
                self.uplink.status_tick(self.health_status()[0])

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- reload ----------------------------------------------------------------

    async def _do_reload(self) -> None:
        assert self.cfg.source is not None
        self.notifier.reloading()
        try:
            new = load_config(self.cfg.source)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.notifier.ready()
            return
        from edge_agent.safety import config_warnings

        for warning in config_warnings(new):  # as at start: auth or encryption turned off
            log.warning("%s", warning)
        for key in ("id", "state_dir"):
            if getattr(new.agent, key) != getattr(self.cfg.agent, key):
                log.warning("agent.%s changed: takes effect after a restart", key)
        new = _keep_restart_only(self.cfg, new)
        try:
            keep, leaving = replan(self.pipelines, new)
        except (ConfigError, ImportError, ValueError) as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.notifier.ready()
            return
        gone = [p.name for p in leaving]
        for p in leaving:
            p.engine.flush_all(self._emitted)
        self.batcher.take(self._emitted)
        await self.commit(
            force_cut=True
        )  # the old config's windows leave under the old config hash
        old_cfg = self.cfg
        self.cfg = new
        self.pipelines = keep
        old_filters = self.router.subscriptions
        self.router = TopicRouter([p.cfg.topics for p in keep])
        shed_before = self.shedder
        self.shedder = Shedder(self.router.route, keep)
        self.shedder.messages_shed = shed_before.messages_shed
        self.shedder.last_shed_at = shed_before.last_shed_at
        self.batcher.reconfigure(new)
        if gone:
            cp = Checkpoint(windows_gone=gone)
            with contextlib.suppress(sqlite3.Error):
                await self.outbox.commit(cp)
        local = self.local
        try:  # the password file is reread on every reload, like upstream's
            local_password = read_password(new.local.password_file, "local")
        except EdgeAgentError as exc:
            log.error("%s; keeping the running local broker settings", exc)
            local_password = self.conn.password
        if new.local != old_cfg.local or local_password != self.conn.password:
            self.conn.password = local_password
            await self._restart_local()
        elif local is not None and self.router.subscriptions != old_filters:
            try:
                await self.conn.subscribe(local)
            except MqttError as exc:
                log.error("resubscribing after reload failed: %s", exc)
        await self.endpoint.apply(self.cfg.health)
        self._reconfigure_uplink()
        log.info(
            "config reloaded: %s (%d pipeline(s), %d restarted)", new.hash, len(keep), len(gone)
        )
        self.notifier.ready()

    async def _restart_local(self) -> None:
        """New [local] settings: reconnect with them. What was processed is committed
        and acknowledged first; the rest comes again from the broker's session."""
        await self.commit()
        task = self._tasks.pop("local", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.conn.drop()
        for p in self.pipelines:  # a new max_future_skew applies to every decoder
            p.decoder = PayloadDecoder(p.cfg.format, self.cfg.local.max_future_skew)
        self._spawn("local", self.conn.run())

    def _reconfigure_uplink(self) -> None:
        """Upstream settings and the password file take effect on reload."""
        if self.uplink is None:
            return
        try:
            password = read_password(self.cfg.upstream.password_file)
        except EdgeAgentError as exc:
            log.error("%s; keeping the running upstream settings", exc)
            return
        self.uplink.status_topic = self.cfg.status_topic
        self.uplink.reconfigure(self.cfg.upstream, password)

    # -- health ----------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return self.report.counters()

    def health_status(self) -> tuple[str, list[str]]:
        """The /healthz status ("ok", "degraded", "failing") and its reasons (SPEC 5)."""
        return self.report.health_status()

    def health(self) -> dict[str, Any]:
        return self.report.health()

    # -- shutdown ----------------------------------------------------------------

    def _spawn(self, name: str, coro: Any) -> None:
        self._tasks[name] = asyncio.get_running_loop().create_task(coro, name=name)

    async def _shutdown(self) -> None:
        """Stop taking readings, checkpoint, acknowledge, let in-flight batches finish, close."""
        self.notifier.stopping()
        self._taking = False
        self._process_inbox(
            everything=True
        )  # what was read before the stop is processed and committed
        self._closing = True
        self._commit_now.set()
        commit_task = self._tasks.pop("commit", None)
        if commit_task is not None:
            try:
                await asyncio.wait_for(commit_task, 10.0)
            except (TimeoutError, asyncio.CancelledError, Exception):
                log.warning("checkpoint task did not finish in time")
        for name in ("idle", "local", "reclaim", "watchdog", "lag", "status", "devstatus"):
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(sqlite3.Error, EdgeAgentError):
            await self.commit()
        # Give in-flight batches a moment to be acknowledged, then record that.
        deadline = time.monotonic() + 2.0
        up = self.uplink
        while up is not None and up.connected and up.queued and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with contextlib.suppress(sqlite3.Error, EdgeAgentError):
            await self.commit()
        local = self.local
        if local is not None:
            await local.disconnect()
        if up is not None:
            await up.say_offline()  # retained "offline" (SPEC 4), then a clean DISCONNECT
        task = self._tasks.pop("uplink", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if up is not None:
            await up.close()
        await self.endpoint.close()
        await self.store.close()
        log.info("edge-agent stopped")


def _keep_restart_only(old: Config, new: Config) -> Config:
    """The new config with the keys a reload cannot change held at their running values."""
    import dataclasses

    agent = dataclasses.replace(new.agent, id=old.agent.id, state_dir=old.agent.state_dir)
    return dataclasses.replace(new, agent=agent)

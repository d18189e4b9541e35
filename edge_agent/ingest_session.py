"""The ingest session: local messages in, readings to the engines, acks out.

Durability rule (SPEC 3, last point): a reading is acknowledged to the local broker
only after the transaction that holds its effect (window state, records, batches)
has committed (`commit`). Messages whose effect is committed are remembered by a
fingerprint of their packet id, topic and payload (`ingest/delivery.py`), so when
the broker redelivers them after a crash (MQTT 5 section 4.4: same packet id, DUP
set) they are acknowledged again without being counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from array import array
from collections.abc import Callable

from edge_agent.batches.batcher import Batcher
from edge_agent.buffer.store import Store
from edge_agent.checkpoint import Checkpointer
from edge_agent.clock import IngestClock, WallClock
from edge_agent.config import Config
from edge_agent.ingest.broker_drops import BrokerDrops
from edge_agent.ingest.connection import RECEIVE_MAXIMUM, LocalConnection
from edge_agent.ingest.decode import REASON_TOO_LARGE
from edge_agent.ingest.delivery import DeliveryLog
from edge_agent.ingest.router import TopicRouter
from edge_agent.ingest.shed import MIN_SAMPLE, SLICE_S, Shedder
from edge_agent.mqtt import Message, MqttClient
from edge_agent.pipelines import Pipeline
from edge_agent.sdnotify import SdNotifier
from edge_agent.windows.engine import Emitted

__all__ = ["OVERLOAD_LAG", "IngestSession"]

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
# How long the first message into an empty inbox waits for company (see on_message):
# far below any window, checkpoint (250 ms) or batch delay.
COALESCE_S = 0.005
# Topic names whose bytes queued messages share (each parsed message brings its own
# copy, ~48 bytes: a sixth of what a queued reading costs); more distinct topics than
# this, or longer ones, keep their own copies (the table stays under ~1 MiB).
_TOPICS_SHARED = 4096
_TOPIC_SHARED_MAX = 128


class IngestSession:
    """Its connection (`ingest/connection.py`) hands each PUBLISH to `on_message`, which
    queues it; `process_inbox` works through the inbox in time slices (load shedding:
    `ingest/shed.py`), routes, decodes, feeds each pipeline's engine and hands what
    fired to the batcher. `start()` begins taking messages; until then, and after
    `stop_taking()`, they are left unacknowledged for the broker to redeliver.
    Its tasks: `conn.run()`, `commit_loop()`, `lag_loop()`; idle firing is `idle.py`'s.
    """

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        pipelines: list[Pipeline],
        store: Store,
        notifier: SdNotifier,
        batcher: Batcher,
        delivery: DeliveryLog,
        checkpointer: Checkpointer,
        broker_drops: BrokerDrops,
        wall_clock: WallClock,
    ) -> None:
        self._config = config  # the running config: a reload replaces it
        self.pipelines = pipelines
        self.router = TopicRouter([p.cfg.topics for p in pipelines])
        self.shedder = Shedder(self.router.route, pipelines)
        self.batcher = batcher
        self.delivery = delivery  # fingerprints of messages whose effect is durable
        self.checkpointer = checkpointer
        self.durable = checkpointer.durable
        self.broker_drops = broker_drops
        self.conn = LocalConnection(
            config=config,
            router=lambda: self.router,
            store=store,
            notifier=notifier,
            on_message=self.on_message,
        )
        self.messages_qos0 = 0
        self.messages_duplicate = 0
        self.ingest_pauses = 0  # times the local socket was paused for the checkpoint to catch up
        self._over_budget = False  # uncommitted work past the budget, until the next checkpoint
        self._over_budget_at = -1e9
        self.ingest_clock = IngestClock()  # idle timeouts: monotonic, less ingest stalls
        self.wall_clock = wall_clock  # whether max_future_skew applies (edge_agent.clock)
        self.loop_lag = 0.0
        self.overloaded = False
        self._acks: list[int] = []  # packet ids to acknowledge after the next commit
        self._emitted = Emitted()
        # Messages read and not yet processed, and their arrival (wall) times in a
        # parallel array: 8 bytes a message instead of a tuple and a float (80 bytes),
        # ~25 % of what a queued reading costs (a full inbox holds up to shed.MAX_LIMIT).
        self.inbox: list[Message] = []
        self._arrivals = array("d")
        self._topics: dict[bytes, bytes] = {}  # topic names queued messages share
        self._inbox_bytes = 0
        self._inbox_paused = False
        self._process_scheduled = False
        self._taking = False  # False while starting and stopping: messages are left unacknowledged
        self._commit_now = asyncio.Event()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def local(self) -> MqttClient | None:
        """The live connection to the local broker, if any."""
        return self.conn.client

    def ready(self) -> bool:
        return self.conn.subscribed and self.conn.connected

    def start(self) -> None:
        """Take messages from now on (called on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._taking = True

    def stop_taking(self) -> None:
        """The first stage of a stop: take no more messages, process what was read
        before it, and end `commit_loop()` after one last checkpoint."""
        self._taking = False
        self.process_inbox(everything=True)  # what was read before the stop is committed
        self._closing = True
        self._commit_now.set()

    def replace(self, pipelines: list[Pipeline]) -> None:
        """A reload's pipelines: routing and shedding follow them (shed counts carry on)."""
        self.pipelines = pipelines
        self.router = TopicRouter([p.cfg.topics for p in pipelines])
        shed_before = self.shedder
        self.shedder = Shedder(self.router.route, pipelines)
        self.shedder.messages_shed = shed_before.messages_shed
        self.shedder.last_shed_at = shed_before.last_shed_at

    def flush(self, leaving: list[Pipeline]) -> None:
        """Fire every open window of pipelines that leave (a reload) into the batcher."""
        for p in leaving:
            p.engine.flush_all(self._emitted)
        self.batcher.take(self._emitted)

    def on_message(self, msg: Message) -> None:
        if not self._taking:
            return  # not acknowledged: the broker redelivers it to the next run
        inbox = self.inbox
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
        topic_b = msg.topic_bytes
        shared = self._topics.get(topic_b)
        if shared is not None:
            msg.topic_bytes = shared  # one copy of each topic name in a long inbox
        elif len(self._topics) < _TOPICS_SHARED and len(topic_b) <= _TOPIC_SHARED_MAX:
            self._topics[topic_b] = topic_b
        inbox.append(msg)
        self._arrivals.append(time.time())
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
            # The first message into an empty inbox: process a moment later, with what
            # the next socket reads bring. At live rates a read holds a few messages,
            # and processing each read alone paid the per-slice costs (routing set-up,
            # key limits, engines, batcher) every few messages. A full inbox is
            # processed again at once (process_inbox), so only idle-to-busy waits.
            self._process_scheduled = True
            assert self._loop is not None
            self._loop.call_later(COALESCE_S, self.process_inbox)

    def process_inbox(self, everything: bool = False) -> None:
        """Process the inbox for one time slice (SLICE_S) or, with `everything`, all of it.

        What is left waits for the next turn, after the event loop has read the
        socket and run its timers; the shedder keeps the inbox within its limit.
        """
        self._process_scheduled = False
        inbox = self.inbox
        if not inbox:
            return
        perf = time.perf_counter
        done, n = 0, len(inbox)
        # The CPU clock is a system call (not in the vDSO, unlike perf_counter): read it
        # only for a slice the shedder learns from, not for each small live read.
        sample = n >= MIN_SAMPLE
        t0, cpu0 = perf(), time.thread_time() if sample else 0.0
        deadline = t0 + SLICE_S
        arrivals = self._arrivals
        while done < n:
            chunk = inbox[done : done + 256]
            times = arrivals[done : done + 256]
            done += len(chunk)
            self._inbox_bytes -= sum([len(m.payload) + len(m.topic_bytes) for m in chunk])
            self._process_batch(chunk, times)
            if not everything and perf() >= deadline:
                break
        del inbox[:done]
        del arrivals[:done]
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
            self._loop.call_soon(self.process_inbox)

    def _process_batch(self, inbox: list[Message], arrivals: array[float]) -> None:
        held, dirty, acks = self.delivery.table, self.delivery.dirty, self._acks
        route, pipelines = self.router.route, self.pipelines
        crc32 = zlib.crc32
        touched: set[int] = set()
        durable = self.durable
        local = self.local
        first_copy = self.router.first_copy
        for msg, arrival in zip(inbox, arrivals, strict=True):
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
        clock = self.ingest_clock()  # see idle.py
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

    async def commit_loop(self) -> None:
        # Stopped by _closing, never cancelled mid-commit: a commit cut short after its
        # transaction would lose the acknowledgements it owes the local broker.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config().buffer.checkpoint_interval):
                    await self._commit_now.wait()
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

    async def lag_loop(self) -> None:
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

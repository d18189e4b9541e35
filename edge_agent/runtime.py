"""The Agent: builds every part of the data path from the config, connects them, runs them.

    local broker -> ingest session (decode, route) -> windows -> batcher
        -> checkpoint (one SQLite transaction) -> PUBACKs to the local broker
        -> outbox -> uplink -> upstream broker

The parts decide; the Agent wires. The ingest session (`ingest_session.py`) owns the
local subscription, the ack policy and backpressure; the supervisor
(`supervision.py`) runs the tasks, reloads and stops them in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from edge_agent import __version__
from edge_agent.batches.batcher import Batcher
from edge_agent.buffer.outbox import Outbox
from edge_agent.buffer.store import Store
from edge_agent.checkpoint import Checkpointer
from edge_agent.clock import WallClock
from edge_agent.config import Config
from edge_agent.health.endpoint import HealthEndpoint
from edge_agent.health.report import HealthReport
from edge_agent.health.system import SystemProbe
from edge_agent.ingest.broker_drops import BrokerDrops
from edge_agent.ingest.delivery import DeliveryLog
from edge_agent.ingest_session import IngestSession
from edge_agent.pipelines import Pipeline, build_pipeline
from edge_agent.sdnotify import SdNotifier
from edge_agent.supervision import Supervisor
from edge_agent.uplink.sender import Uplink, read_password

__all__ = ["Agent"]

log = logging.getLogger("edge_agent")


class Agent:
    """`async with`-free by design: `await agent.run()` until `request_stop()`."""

    def __init__(self, cfg: Config, *, notifier: SdNotifier | None = None) -> None:
        self.cfg = cfg  # the running config: a reload replaces it
        self.notifier = notifier or SdNotifier()
        self.started = time.monotonic()
        self.store = Store(
            cfg.agent.state_dir,
            max_bytes=cfg.buffer.max_bytes,
            when_full=cfg.buffer.when_full,
            ttl=cfg.buffer.ttl,
        )
        self.outbox = Outbox(self.store, ttl=cfg.buffer.ttl, live_share=cfg.upstream.live_share)
        self.batcher = Batcher(cfg)
        self.uplink: Uplink | None = None
        self.wall_clock = WallClock()  # whether max_future_skew applies (edge_agent.clock)
        self.probe = SystemProbe(cfg.agent.state_dir)
        delivery = DeliveryLog()  # fingerprints of messages whose effect is durable
        self.checkpointer = Checkpointer(
            outbox=self.outbox,
            batcher=self.batcher,
            delivery=delivery,
            pipelines=lambda: self.session.pipelines,
            durable=cfg.buffer.checkpoints,
            state_dir=cfg.agent.state_dir,
        )
        self.session = IngestSession(
            config=lambda: self.cfg,
            pipelines=[build_pipeline(p, cfg.local.max_future_skew) for p in cfg.pipelines],
            store=self.store,
            notifier=self.notifier,
            batcher=self.batcher,
            delivery=delivery,
            checkpointer=self.checkpointer,
            broker_drops=BrokerDrops(),
            wall_clock=self.wall_clock,
        )
        self.report = HealthReport(
            started=self.started,
            store=self.store,
            outbox=self.outbox,
            probe=self.probe,
            conn=self.session.conn,
            checkpointer=self.checkpointer,
            broker_drops=self.session.broker_drops,
            ingest=self.session,
            config=lambda: self.cfg,
            uplink=lambda: self.uplink,
            pipelines=lambda: self.session.pipelines,
            shedder=lambda: self.session.shedder,
        )
        self.endpoint = HealthEndpoint(self.health, self.ready)
        self.supervisor = Supervisor(self)

    # -- public control -------------------------------------------------------

    def request_stop(self) -> None:
        self.supervisor.request_stop()

    def request_reload(self) -> None:
        self.supervisor.request_reload()

    def ready(self) -> bool:
        return self.session.ready()

    @property
    def pipelines(self) -> list[Pipeline]:
        return self.session.pipelines

    async def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Run until request_stop(); then stop in stages and return.

        `on_started` is called once the state database is open (the pid file).
        """
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
            self.session.conn.password = read_password(self.cfg.local.password_file, "local")
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
        self.session.start()
        self.supervisor.start()
        log.info(
            "edge-agent %s started: agent %s, %d pipeline(s), config %s",
            __version__,
            self.cfg.agent.id,
            len(self.pipelines),
            self.cfg.hash,
        )
        try:
            await self.supervisor.supervise()
        finally:
            await self.supervisor.shutdown()

    # -- restore ---------------------------------------------------------------

    def _restore(self, r: Any) -> None:
        self.batcher.restore(r.seqs, r.pending)
        with contextlib.suppress(TypeError, ValueError):
            self.session.conn.filters_before = list(json.loads(r.meta.get("filters") or "[]"))
        by_name = {p.name: p for p in self.pipelines}
        for name, states in r.windows.items():
            p = by_name.get(name)
            if p is None:
                log.warning("checkpoint of pipeline %r ignored: no such pipeline now", name)
                continue
            used = p.engine.restore(states, wall=self.session.ingest_clock())
            if used is not None and used < len(states):
                log.warning(
                    "pipeline %r: %d of %d checkpointed keys were saved with other window "
                    "settings and are dropped",
                    name,
                    len(states) - used,
                    len(states),
                )
        self.session.delivery.restore(r.held)
        if r.outbox_batches:
            log.info("outbox holds %d batch(es) from before; draining them first", r.outbox_batches)

    # -- health ----------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return self.report.counters()

    def health_status(self) -> tuple[str, list[str]]:
        """The /healthz status ("ok", "degraded", "failing") and its reasons (SPEC 5)."""
        return self.report.health_status()

    def health(self) -> dict[str, Any]:
        return self.report.health()

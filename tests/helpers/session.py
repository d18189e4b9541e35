"""An ingest session built from its real parts (store, batcher, delivery log,
checkpointer) without an Agent: for the tests of the session and of its timers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from edge_agent.batches.batcher import Batcher
from edge_agent.buffer.outbox import Outbox
from edge_agent.buffer.store import Store
from edge_agent.checkpoint import Checkpointer
from edge_agent.clock import WallClock
from edge_agent.config import config_from_text
from edge_agent.ingest.broker_drops import BrokerDrops
from edge_agent.ingest.delivery import DeliveryLog
from edge_agent.ingest_session import IngestSession
from edge_agent.pipelines import build_pipeline
from edge_agent.sdnotify import SdNotifier
from tests.helpers.agent_harness import apoll
from tests.helpers.brokers import Broker


def _config_text(tmp_path: Path, port: int, pipeline: str) -> str:
    return f"""
[agent]
id = "session-test"
state_dir = "{tmp_path / "state"}"
[local]
port = {port}
[upstream]
port = 1
[health]
listen = ""
[[pipeline]]
name = "p"
topics = ["s/#"]
size = "60s"
{pipeline}
"""


@contextlib.asynccontextmanager
async def ingest_session(
    tmp_path: Path, broker: Broker, pipeline: str = ""
) -> AsyncIterator[IngestSession]:
    """An IngestSession on `broker`, built from its parts like the Agent builds it, its
    store open, taking messages (not connected: run `session.conn.run()`)."""
    cfg = config_from_text(
        _config_text(tmp_path, broker.port, pipeline), str(tmp_path / "agent.toml")
    )
    store = Store(cfg.agent.state_dir, max_bytes=cfg.buffer.max_bytes)
    outbox = Outbox(store, ttl=cfg.buffer.ttl, live_share=cfg.upstream.live_share)
    batcher = Batcher(cfg)
    delivery = DeliveryLog()
    holder: list[IngestSession] = []
    checkpointer = Checkpointer(
        outbox=outbox,
        batcher=batcher,
        delivery=delivery,
        pipelines=lambda: holder[0].pipelines,
        durable=True,
        state_dir=cfg.agent.state_dir,
    )
    session = IngestSession(
        config=lambda: cfg,
        pipelines=[build_pipeline(p, cfg.local.max_future_skew) for p in cfg.pipelines],
        store=store,
        notifier=SdNotifier(),
        batcher=batcher,
        delivery=delivery,
        checkpointer=checkpointer,
        broker_drops=BrokerDrops(),
        wall_clock=WallClock(),
    )
    holder.append(session)
    await store.open()
    try:
        session.start()
        yield session
    finally:
        await store.close()


async def connect(session: IngestSession) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(session.conn.run())
    await apoll(session.ready, 10, what="session subscribed")
    return task


async def disconnect(session: IngestSession, task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await session.conn.drop()

"""The supervisor (edge_agent.supervision.Supervisor): reload and the staged shutdown,
in-process against real brokers, what systemd hears on a real notify socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge_agent.config import load_config
from edge_agent.runtime import Agent
from edge_agent.sdnotify import SdNotifier
from edge_agent.supervision import Supervisor
from tests.helpers.agent_harness import AgentConfig, Publisher, apoll, pipeline, write_config
from tests.helpers.brokers import Broker


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[list[str]]:
    """A service manager's notify socket: the datagrams received, drained in the background."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    got: list[str] = []
    loop = asyncio.get_running_loop()
    loop.add_reader(sock.fileno(), lambda: got.append(sock.recv(4096).decode()))
    try:
        yield got
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


@contextlib.asynccontextmanager
async def running(cfg: AgentConfig, notifier: SdNotifier | None = None) -> AsyncIterator[Agent]:
    agent = Agent(load_config(cfg.path, environ={}), notifier=notifier)
    assert isinstance(agent.supervisor, Supervisor)
    task = asyncio.create_task(agent.run(), name="agent")
    try:
        await apoll(lambda: agent.ready() or task.done(), 30, what="agent ready")
        if task.done():
            task.result()
        yield agent
    finally:
        agent.request_stop()
        async with asyncio.timeout(60):
            await task


async def test_reload_refuses_a_broken_config_and_applies_a_good_one(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port, health=False)
    with notify_socket(tmp_path / "notify") as got, SdNotifier(str(tmp_path / "notify")) as sd:
        async with running(cfg, sd) as agent:
            await apoll(lambda: "READY=1" in got, 10, what="READY=1")
            before = agent.cfg
            running_pipeline = agent.pipelines[0]

            cfg.path.write_text(cfg.path.read_text() + "\n[nonsense\n")
            n = len(got)
            agent.request_reload()
            await apoll(lambda: "READY=1" in got[n:], 10, what="READY=1 after the refusal")
            assert any("RELOADING=1" in m.split("\n") for m in got[n:])
            assert agent.cfg is before and agent.pipelines[0] is running_pipeline

            cfg.rewrite(pipelines=[pipeline(size="2s")])  # the pipeline changed: rebuilt
            n = len(got)
            agent.request_reload()
            await apoll(lambda: "READY=1" in got[n:], 10, what="READY=1 after the reload")
            assert agent.cfg.hash != before.hash
            assert agent.cfg.pipelines[0].size == 2.0
            assert agent.pipelines[0] is not running_pipeline
            assert agent.ready()
        assert "STOPPING=1" in got


async def test_stop_commits_and_acknowledges_what_was_read_before_it(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    cfg = write_config(
        tmp_path, broker.port, upstream_broker.port, health=False, pipelines=[pipeline(size="60s")]
    )
    with Publisher(broker.port) as pub:
        async with running(cfg) as agent:
            await asyncio.to_thread(pub.publish, "s/a", json.dumps({"ts": time.time(), "value": 1}))
            p = agent.pipelines[0]
            await apoll(lambda: p.readings_in == 1, 10, what="the reading processed")
        # Stopped: the reading's effect was committed and its PUBACK sent before the
        # disconnect, so the next run's resumed session does not get it again.
        async with running(cfg) as agent:
            marker = json.dumps({"ts": time.time(), "value": 2})
            await asyncio.to_thread(pub.publish, "s/marker", marker)
            p = agent.pipelines[0]
            await apoll(lambda: p.readings_in >= 1, 10, what="the marker processed")
            assert p.readings_in == 1
            assert agent.session.messages_duplicate == 0
            assert p.engine.has_key("s/a")  # its window came back from the checkpoint


@pytest.fixture(autouse=True)
def _no_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)

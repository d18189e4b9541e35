"""Supervision: the agent's tasks, SIGHUP reload and the staged shutdown.

The `Supervisor` runs the parts the Agent built (`Parts`): it starts their tasks,
raises when one ends, applies a reload between them, keeps systemd informed
(watchdog, status line, `RELOADING=1`/`READY=1`, `STOPPING=1`) and stops them in
order: stop taking readings, fire and checkpoint, acknowledge, let in-flight
batches finish, disconnect, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from edge_agent.buffer.outbox import Outbox
from edge_agent.buffer.store import Checkpoint, Store
from edge_agent.config import Config, load_config
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.health.endpoint import HealthEndpoint
from edge_agent.health.report import HealthReport
from edge_agent.idle import IdleTimer
from edge_agent.ingest.decode import PayloadDecoder
from edge_agent.ingest_session import IngestSession
from edge_agent.mqtt import MqttError
from edge_agent.pipelines import replan
from edge_agent.sdnotify import SdNotifier, watchdog_interval
from edge_agent.uplink.sender import Uplink, read_password

__all__ = ["Parts", "Supervisor"]

log = logging.getLogger("edge_agent")


class Parts(Protocol):
    """What the supervisor runs: the Agent's parts. A reload replaces `cfg`."""

    cfg: Config
    notifier: SdNotifier
    store: Store
    outbox: Outbox
    session: IngestSession
    endpoint: HealthEndpoint
    report: HealthReport
    uplink: Uplink | None


class Supervisor:
    """`start()` the tasks, `await supervise()` until a stop is requested, then `shutdown()`."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def start(self) -> None:
        """Start every task of the running agent (on the event loop)."""
        a = self._parts
        assert a.uplink is not None
        session = a.session
        self._spawn("local", session.conn.run())
        self._spawn("uplink", a.uplink.run())
        self._spawn("commit", session.commit_loop())
        self._spawn("idle", IdleTimer(session).run())
        self._spawn("reclaim", self._reclaim_loop())
        self._spawn("lag", session.lag_loop())
        self._spawn("devstatus", self._device_status_loop())
        interval = watchdog_interval()
        if interval:
            self._spawn("watchdog", self._watchdog_loop(interval))
        if a.notifier.enabled:
            self._spawn("status", self._status_loop())

    async def supervise(self) -> None:
        """Until request_stop(): apply each requested reload; a task that ends raises."""
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

    # -- housekeeping ------------------------------------------------------------

    async def _reclaim_loop(self) -> None:
        while True:
            await asyncio.sleep(30.0)
            with contextlib.suppress(sqlite3.Error):
                await self._parts.store.reclaim()

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(10.0)
            if self._parts.session.ready():
                self._parts.notifier.status(self._parts.report.status_line())

    async def _device_status_loop(self) -> None:
        """Status over MQTT: the uplink republishes on a health change or each status_interval.

        Health is checked once a second, and at once when the local connection is made
        or lost (the usual change at start: upstream connected first, status "degraded")."""
        changed = asyncio.Event()
        self._parts.session.conn.on_change = changed.set
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await changed.wait()
            changed.clear()
            uplink = self._parts.uplink
            if uplink is not None and uplink.connected:
                uplink.status_tick(self._parts.report.health_status()[0])

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self._parts.notifier.watchdog()
            await asyncio.sleep(interval)

    # -- reload ----------------------------------------------------------------

    async def _do_reload(self) -> None:
        a = self._parts
        session = a.session
        assert a.cfg.source is not None
        a.notifier.reloading()
        try:
            new = load_config(a.cfg.source)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            a.notifier.ready()
            return
        from edge_agent.safety import config_warnings

        for warning in config_warnings(new):  # as at start: auth or encryption turned off
            log.warning("%s", warning)
        for key in ("id", "state_dir"):
            if getattr(new.agent, key) != getattr(a.cfg.agent, key):
                log.warning("agent.%s changed: takes effect after a restart", key)
        new = _keep_restart_only(a.cfg, new)
        try:
            keep, leaving = replan(session.pipelines, new)
        except (ConfigError, ImportError, ValueError) as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            a.notifier.ready()
            return
        gone = [p.name for p in leaving]
        session.flush(leaving)
        await session.commit(force_cut=True)  # the old config's windows leave under the old hash
        old_cfg = a.cfg
        a.cfg = new
        old_filters = session.router.subscriptions
        session.replace(keep)
        session.batcher.reconfigure(new)
        if gone:
            cp = Checkpoint(windows_gone=gone)
            with contextlib.suppress(sqlite3.Error):
                await a.outbox.commit(cp)
        local = session.local
        conn = session.conn
        try:  # the password file is reread on every reload, like upstream's
            local_password = read_password(new.local.password_file, "local")
        except EdgeAgentError as exc:
            log.error("%s; keeping the running local broker settings", exc)
            local_password = conn.password
        if new.local != old_cfg.local or local_password != conn.password:
            conn.password = local_password
            await self._restart_local()
        elif local is not None and session.router.subscriptions != old_filters:
            try:
                await conn.subscribe(local)
            except MqttError as exc:
                log.error("resubscribing after reload failed: %s", exc)
        await a.endpoint.apply(a.cfg.health)
        self._reconfigure_uplink()
        log.info(
            "config reloaded: %s (%d pipeline(s), %d restarted)", new.hash, len(keep), len(gone)
        )
        a.notifier.ready()

    async def _restart_local(self) -> None:
        """New [local] settings: reconnect with them. What was processed is committed
        and acknowledged first; the rest comes again from the broker's session."""
        session = self._parts.session
        await session.commit()
        task = self._tasks.pop("local", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await session.conn.drop()
        for p in session.pipelines:  # a new max_future_skew applies to every decoder
            p.decoder = PayloadDecoder(p.cfg.format, self._parts.cfg.local.max_future_skew)
        self._spawn("local", session.conn.run())

    def _reconfigure_uplink(self) -> None:
        """Upstream settings and the password file take effect on reload."""
        a = self._parts
        if a.uplink is None:
            return
        try:
            password = read_password(a.cfg.upstream.password_file)
        except EdgeAgentError as exc:
            log.error("%s; keeping the running upstream settings", exc)
            return
        a.uplink.status_topic = a.cfg.status_topic
        a.uplink.reconfigure(a.cfg.upstream, password)

    # -- shutdown ----------------------------------------------------------------

    def _spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks[name] = asyncio.get_running_loop().create_task(coro, name=name)

    async def shutdown(self) -> None:
        """Stop taking readings, checkpoint, acknowledge, let in-flight batches finish, close."""
        a = self._parts
        session = a.session
        a.notifier.stopping()
        session.stop_taking()
        commit_task = self._tasks.pop("commit", None)
        if commit_task is not None:
            try:
                async with asyncio.timeout(10.0):
                    await commit_task
            except (TimeoutError, asyncio.CancelledError, Exception):
                log.warning("checkpoint task did not finish in time")
        for name in ("idle", "local", "reclaim", "watchdog", "lag", "status", "devstatus"):
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(sqlite3.Error, EdgeAgentError):
            await session.commit()
        # Give in-flight batches a moment to be acknowledged, then record that.
        deadline = time.monotonic() + 2.0
        up = a.uplink
        while up is not None and up.connected and up.queued and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with contextlib.suppress(sqlite3.Error, EdgeAgentError):
            await session.commit()
        local = session.local
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
        await a.endpoint.close()
        await a.store.close()
        log.info("edge-agent stopped")


def _keep_restart_only(old: Config, new: Config) -> Config:
    """The new config with the keys a reload cannot change held at their running values."""
    agent = dataclasses.replace(new.agent, id=old.agent.id, state_dir=old.agent.state_dir)
    return dataclasses.replace(new, agent=agent)

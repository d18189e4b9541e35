"""The agent's health endpoint as a running part: bound from `[health]`, retried while
its address cannot be bound (SPEC 5: the data path runs on), restarted on a reload
that changes `listen` or the token in `token_file`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.backoff import Backoff
from edge_agent.config import HealthSection
from edge_agent.errors import EdgeAgentError
from edge_agent.health.server import HealthServer

__all__ = ["HealthEndpoint", "read_token"]

log = logging.getLogger("edge_agent")


class HealthEndpoint:
    """Serves `health()` and `ready()` over HTTP (HealthServer) while the agent runs."""

    def __init__(self, health: Callable[[], dict[str, Any]], ready: Callable[[], bool]) -> None:
        self._health = health
        self._ready = ready
        self.server: HealthServer | None = None  # listening
        self._settings: tuple[str, str | None] | None = None  # (listen, token) in force
        self._retry: asyncio.Task[None] | None = None

    async def start(self, cfg: HealthSection) -> None:
        """Listen on `cfg.listen` ("" = not at all); an unreadable token_file raises
        EdgeAgentError, an address that cannot be bound is retried in the background."""
        addr = cfg.address
        if addr is None:
            return
        token = read_token(cfg.token_file)
        server = HealthServer(addr[0], addr[1], health=self._health, ready=self._ready, token=token)
        self._settings = (cfg.listen, token)
        try:
            await server.start()
        except OSError as exc:
            log.warning(
                "health.listen %s: cannot listen (%s); running without the health "
                "endpoint and retrying",
                cfg.listen,
                exc.strerror or exc,
            )
            self._retry = asyncio.get_running_loop().create_task(
                self._keep_trying(server, cfg.listen), name="health"
            )
            self._retry.add_done_callback(_log_crash)
            return
        self.server = server

    async def _keep_trying(self, server: HealthServer, listen: str) -> None:
        backoff = Backoff(initial=1.0, cap=30.0)
        last = ""
        while True:
            await asyncio.sleep(backoff.next())
            try:
                await server.start()
            except OSError as exc:
                why = exc.strerror or str(exc)
                if why != last:  # once per distinct cause
                    log.warning("health.listen %s: still cannot listen (%s)", listen, why)
                    last = why
                continue
            self.server = server
            log.info("health endpoint listening on %s", listen)
            return

    async def apply(self, cfg: HealthSection) -> None:
        """A reload: a new listen address or a rotated token_file restarts the server."""
        try:
            token = read_token(cfg.token_file)
        except EdgeAgentError as exc:
            log.error("%s; keeping the running endpoint", exc)
            return
        if self._settings == (cfg.listen, token):
            return
        await self.close()
        try:
            await self.start(cfg)
        except EdgeAgentError as exc:
            log.error("%s", exc)

    async def close(self) -> None:
        retry, self._retry = self._retry, None
        if retry is not None:
            retry.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await retry
        server, self.server = self.server, None
        if server is not None:
            await server.close()
        self._settings = None


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("health endpoint retry ended: %r", task.exception())


def read_token(path: str) -> str | None:
    """The health endpoint's bearer token, from `health.token_file` ("" = no auth)."""
    if not path:
        return None
    from edge_agent.logs import register_secret

    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:  # its message would quote bytes of the file
        raise EdgeAgentError(f"health.token_file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise EdgeAgentError(
            f"health.token_file {path}: cannot read it: {exc.strerror or type(exc).__name__}"
        ) from None
    if not token:
        # An empty token must not turn authentication off (config validation refuses
        # it too; this catches a file emptied after the check).
        raise EdgeAgentError(f"health.token_file {path}: the file is empty")
    register_secret(token)
    return token

"""The health endpoint (SPEC 5): a minimal HTTP/1.1 server on asyncio streams.

One request per connection, then `Connection: close`. Everything a client can make
us hold is bounded: the request head (bytes), the time to send it (one total
deadline, so a byte-at-a-time client gets 408), the number of open connections, and
the drain after the response. The handler never raises and never blocks the loop:
`health()` and `ready()` run in the loop and must be cheap.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from edge_agent.health.http import (
    JSON,
    Reject,
    Request,
    check_request_line,
    end_of_head,
    error_response,
    http_response,
    json_body,
    parse_head,
)
from edge_agent.health.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_agent.health.metrics import render_metrics

__all__ = ["HealthServer"]

log = logging.getLogger(__name__)

_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_ALLOWED = "GET"  # SPEC 5: "any other method: 405", HEAD included
_DRAIN_BYTES = 64 * 1024  # what we read and discard after answering, at most
_DRAIN_SECONDS = 1.0
_REFUSE_SECONDS = 0.25  # write and drain budget for a 503 past the connection cap


class _Conn:
    """Book-keeping for one open connection, for the caps and for close()."""

    __slots__ = ("answering", "evictable_at", "opened_at", "peer", "task", "writer")

    def __init__(
        self, writer: asyncio.StreamWriter, opened_at: float, evictable_at: float, peer: str = ""
    ) -> None:
        self.writer = writer
        self.opened_at = opened_at
        self.peer = peer  # the client's address: the per-client cap counts by it
        self.answering = False  # its head arrived: it is being answered, not idle
        # When the cap is reached, a connection past this time may be dropped for a new
        # one: a head still dribbling in after a while, or an answered one still draining.
        self.evictable_at = evictable_at
        self.task: asyncio.Task[None] | None = None


def _peer_of(writer: asyncio.StreamWriter) -> str:
    """The client, the unit of the per-client cap: its IPv4 address, or its IPv6 /64
    (one host may hold a whole /64, so counting single IPv6 addresses caps nothing)."""
    try:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
    except Exception:  # an odd transport: count it under one name
        return ""
    return client_key(host)


def client_key(host: str) -> str:
    """`host` as the per-client cap counts it (see _peer_of)."""
    if ":" not in host:
        return host
    try:
        addr = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    if addr.is_loopback:
        return str(addr)
    return str(ipaddress.IPv6Network((addr, 64), strict=False))


class HealthServer:
    """GET /healthz, /readyz and /metrics; see SPEC 5.

    The firmware bridge serves its own figures through it too (`metrics=None`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Callable[[], dict[str, Any]],
        ready: Callable[[], bool],
        metrics: Callable[[dict[str, Any]], str] | None = render_metrics,
        token: str | None = None,
        request_timeout: float = 5.0,
        max_request_bytes: int = 8192,
        max_connections: int = 64,
        max_per_client: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._ready = ready
        self._metrics = metrics  # None: no /metrics (the firmware bridge)
        self._token = token.encode("utf-8") if token else None
        self._timeout = request_timeout
        self._max_bytes = max_request_bytes
        self._max_conns = max_connections
        # One address may hold this many at once: a flood from one host cannot take
        # every slot.
        self._max_per_client = min(max_per_client, max_connections)
        self._per_peer: dict[str, int] = {}
        self._clock = clock
        # A connection still sending its head after this long may be evicted to make
        # room: a legitimate client sends its few hundred bytes in one segment.
        self._evict_after = min(1.0, request_timeout / 2)
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.StreamWriter, _Conn] = {}
        self._refusing: dict[asyncio.StreamWriter, _Conn] = {}

    async def start(self) -> None:
        """Bind and start serving; raises OSError if the address cannot be bound."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_connect, self._host, self._port, limit=self._max_bytes + 1024
        )

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Abort rather than cancel: asyncio's stream callback (3.11) calls
        # task.exception() on the handler task, which raises for a cancelled one. An
        # aborted transport ends every pending read, so the handlers return by themselves.
        conns = [*self._conns.values(), *self._refusing.values()]
        for conn in conns:
            conn.writer.transport.abort()
        tasks = [c.task for c in conns if c.task is not None and not c.task.done()]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=1.0)
            for task in stuck:  # cannot happen short of a bug; do not hang shutdown on it
                task.cancel()
        await server.wait_closed()

    # -- connection handling ------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_of(writer)
        if not self._make_room(peer):
            await self._refuse(reader, writer)
            return
        now = self._clock()
        conn = _Conn(writer, now, now + self._evict_after, peer)
        conn.task = asyncio.current_task()
        self._conns[writer] = conn
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        try:
            await self._serve(reader, writer, conn)
        except asyncio.CancelledError:
            # Nothing awaits this task, and on 3.11 asyncio's done-callback calls
            # task.exception(), which would raise for a cancelled task: end quietly.
            writer.transport.abort()
        except Exception:  # never out of the handler: asyncio would only log it anyway
            log.exception("health endpoint: unexpected error")
            writer.transport.abort()
        finally:
            self._forget(writer)

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        conn = self._conns.pop(writer, None)
        if conn is not None:
            left = self._per_peer.get(conn.peer, 1) - 1
            if left > 0:
                self._per_peer[conn.peer] = left
            else:
                self._per_peer.pop(conn.peer, None)

    def _make_room(self, peer: str) -> bool:
        """Whether a connection from `peer` may be served now, evicting one if needed.

        Per client: past its share, a client's newcomer takes the place of its own
        oldest connection that may be evicted, or is refused. In total: at the cap,
        the oldest evictable connection goes; failing that, an idle connection (head
        not yet complete) of the client holding the most, provided the newcomer's
        client holds fewer. So a flood of idle connections from a few hosts costs its
        senders their own slots, and a fleet manager polling from elsewhere is answered.
        """
        if self._per_peer.get(peer, 0) >= self._max_per_client:
            own = [c for c in self._conns.values() if c.peer == peer]
            return self._evict(own)
        if len(self._conns) < self._max_conns:
            return True
        if self._evict(list(self._conns.values())):
            return True
        heaviest = max(self._per_peer, key=self._per_peer.__getitem__, default=None)
        if heaviest is None or self._per_peer[heaviest] <= self._per_peer.get(peer, 0):
            return False
        idle = [c for c in self._conns.values() if c.peer == heaviest and not c.answering]
        if not idle:
            return False
        self._drop(min(idle, key=lambda c: c.opened_at))
        return True

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """At the cap with nobody to evict: 503 at once rather than queue. Refusals get
        their own bounded set of slots and a short drain; past that, a plain reset."""
        if len(self._refusing) >= self._max_conns:
            writer.transport.abort()
            return
        conn = _Conn(writer, self._clock(), math.inf)
        conn.task = asyncio.current_task()
        self._refusing[writer] = conn
        try:
            await self._finish(
                reader, writer, error_response(503, (("Retry-After", "1"),)), _REFUSE_SECONDS
            )
        except Exception:  # never out of the handler
            log.exception("health endpoint: unexpected error refusing a connection")
            writer.transport.abort()
        finally:
            self._refusing.pop(writer, None)

    def _evict(self, among: list[_Conn]) -> bool:
        """Abort the oldest of `among` still dribbling its head or lingering after its
        answer; True if one went."""
        now = self._clock()
        stale = [c for c in among if c.evictable_at <= now]
        if not stale:
            return False
        self._drop(min(stale, key=lambda c: c.evictable_at))
        return True

    def _drop(self, victim: _Conn) -> None:
        self._forget(victim.writer)
        victim.writer.transport.abort()  # its pending read ends; the handler returns

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                head = await self._read_head(reader)
        except TimeoutError:
            response = error_response(408)
        except Reject as r:
            response = error_response(r.status)
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()
            return
        else:
            if head is None:  # connected and closed without a byte: nothing to answer
                writer.close()
                return
            try:
                request = parse_head(head)
            except Reject as r:
                response = error_response(r.status)
            else:
                response = self._route(request)
        conn.evictable_at = math.inf  # being answered
        conn.answering = True
        if writer.transport.is_closing():  # evicted or shut down meanwhile
            return
        await self._finish(reader, writer, response, conn=conn)

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The request head up to its blank line; None on a silent close."""
        buf = bytearray()
        line_done = False
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                if not buf:
                    return None
                raise Reject(400)  # closed mid-head
            scanned = max(0, len(buf) - 3)
            buf += chunk
            end = end_of_head(buf, scanned)
            if end >= 0:
                if end > self._max_bytes:
                    raise Reject(431)
                return bytes(buf[:end])
            if not line_done:
                line_done = check_request_line(buf)
            if len(buf) > self._max_bytes:
                raise Reject(431 if line_done else 400)

    async def _finish(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        response: bytes,
        budget: float | None = None,
        conn: _Conn | None = None,
    ) -> None:
        """Send, half-close, then drain briefly: unread input at close() makes the kernel
        send RST instead of FIN, and a RST can destroy the response before it is read."""
        write_budget = self._timeout if budget is None else budget
        drain_budget = min(_DRAIN_SECONDS, self._timeout) if budget is None else budget
        try:
            async with asyncio.timeout(write_budget):
                writer.write(response)
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
        except (TimeoutError, OSError):
            writer.transport.abort()  # the client does not read: drop what is buffered
            return
        if conn is not None:
            conn.evictable_at = self._clock()  # answered: first to go if room is needed
        try:
            async with asyncio.timeout(drain_budget):
                drained = 0
                while drained < _DRAIN_BYTES:
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    drained += len(chunk)
        except (TimeoutError, OSError):
            pass
        writer.close()

    # -- routing --------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = (request.authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = credentials.strip().encode("latin-1", errors="replace")
        return hmac.compare_digest(given, self._token)

    def _route(self, request: Request) -> bytes:
        head_only = request.method == "HEAD"  # its 404 or 405 has no body
        if not self._authorized(request):
            return http_response(401, extra=(("WWW-Authenticate", 'Bearer realm="edge-agent"'),))
        if request.path not in _ROUTES or (request.path == "/metrics" and self._metrics is None):
            return error_response(404, head_only=head_only)
        if request.method != "GET":
            return error_response(405, (("Allow", _ALLOWED),), head_only=head_only)
        try:
            if request.path == "/readyz":
                ready = bool(self._ready())
                return http_response(200 if ready else 503, json_body({"ready": ready}), JSON)
            health = self._health()
            if request.path == "/metrics" and self._metrics is not None:
                body = self._metrics(health).encode("utf-8")
                return http_response(200, body, METRICS_CONTENT_TYPE)
            status = 503 if health.get("status") == "failing" else 200
            return http_response(status, json_body(health), JSON)
        except Exception:
            log.exception("health endpoint: %s failed", request.path)
            return error_response(500)

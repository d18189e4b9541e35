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
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from edge_agent.health.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_agent.health.metrics import render_metrics

__all__ = ["HealthServer"]

log = logging.getLogger(__name__)

_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_ALLOWED = "GET, HEAD"
_JSON = "application/json"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
# RFC 9112 3: request-line = method SP request-target SP HTTP-version. The method is
# an RFC 9110 token; the target is visible ASCII (no spaces, no controls).
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
# What an unfinished request line may hold: a TLS hello or binary junk is refused at
# its first byte instead of waiting for a line end that may never come.
_PARTIAL_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?: [\x20-\x7e]*)?\r?")
_MAX_HEADERS = 100
_DRAIN_BYTES = 64 * 1024  # what we read and discard after answering, at most
_DRAIN_SECONDS = 1.0
_REFUSE_SECONDS = 0.25  # write and drain budget for a 503 past the connection cap


class _Reject(Exception):
    """The request cannot be served; carries the status to answer with."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Request:
    __slots__ = ("authorization", "method", "path")

    def __init__(self, method: str, path: str, authorization: str | None) -> None:
        self.method = method
        self.path = path
        self.authorization = authorization


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


def _end_of_head(buf: bytearray, start: int) -> int:
    """Index just past the blank line ending the head, or -1; bare LF lines are accepted.

    Only bytes from `start` on are searched, so a byte-at-a-time client costs linear time.
    """
    i = buf.find(b"\r\n\r\n", start)
    j = buf.find(b"\n\n", start)
    if i < 0 and j < 0:
        return -1
    if j < 0 or (0 <= i < j):
        return i + 4
    return j + 2


def _check_request_line(buf: bytearray) -> bool:
    """Fail fast on bytes that cannot form an HTTP request line; True once it is complete."""
    nl = buf.find(b"\n")
    if nl < 0:
        # Only part of the line so far: visible ASCII and spaces, starting with a token byte.
        if _PARTIAL_LINE.fullmatch(buf) is None:
            raise _Reject(400)
        return False
    if _REQUEST_LINE.fullmatch(bytes(buf[:nl]).rstrip(b"\r")) is None:
        raise _Reject(400)
    return True


def _parse_head(head: bytes) -> _Request:
    lines = head.split(b"\n")
    request_line = lines[0].rstrip(b"\r")
    m = _REQUEST_LINE.fullmatch(request_line)
    if m is None:
        raise _Reject(400)
    method = m.group(1).decode("ascii")
    target = m.group(2).decode("ascii")
    if m.group(3) != b"1":
        raise _Reject(505)
    authorization: str | None = None
    for count, raw in enumerate(lines[1:], 1):
        line = raw.rstrip(b"\r")
        if not line:
            break
        if count > _MAX_HEADERS:
            raise _Reject(431)
        hm = _HEADER_LINE.fullmatch(line)
        if hm is None:  # includes obsolete line folding and "Name : value" (RFC 9112 5.1)
            raise _Reject(400)
        if hm.group(1).lower() == b"authorization":
            if authorization is not None:
                raise _Reject(400)  # two credentials: refuse rather than pick one
            authorization = hm.group(2).decode("latin-1")
    return _Request(method, _path_of(target), authorization)


def _path_of(target: str) -> str:
    """The path of an origin-form or absolute-form target; query and fragment ignored."""
    if not target.startswith("/"):
        scheme, sep, rest = target.partition("://")
        if sep and scheme.lower() in ("http", "https"):
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
        else:
            return target  # "*" or garbage: no route will match
    for stop in ("?", "#"):
        target = target.partition(stop)[0]
    return target


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


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats with None: JSON has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _json_body(obj: Any) -> bytes:
    try:
        text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_json_safe(obj), allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def _response(
    status: int,
    body: bytes = b"",
    content_type: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
    head_only: bool = False,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Cache-Control: no-store")
    lines.extend(f"{k}: {v}" for k, v in extra)
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def _error(status: int, extra: tuple[tuple[str, str], ...] = (), head_only: bool = False) -> bytes:
    body = _json_body({"error": _REASONS.get(status, "Error")})
    return _response(status, body, _JSON, extra, head_only)


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
                reader, writer, _error(503, (("Retry-After", "1"),)), _REFUSE_SECONDS
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
        head_only = False
        try:
            async with asyncio.timeout(self._timeout):
                head = await self._read_head(reader)
        except TimeoutError:
            response = _error(408)
        except _Reject as r:
            response = _error(r.status)
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()
            return
        else:
            if head is None:  # connected and closed without a byte: nothing to answer
                writer.close()
                return
            try:
                request = _parse_head(head)
            except _Reject as r:
                response = _error(r.status)
            else:
                head_only = request.method == "HEAD"
                response = self._route(request, head_only)
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
                raise _Reject(400)  # closed mid-head
            scanned = max(0, len(buf) - 3)
            buf += chunk
            end = _end_of_head(buf, scanned)
            if end >= 0:
                if end > self._max_bytes:
                    raise _Reject(431)
                return bytes(buf[:end])
            if not line_done:
                line_done = _check_request_line(buf)
            if len(buf) > self._max_bytes:
                raise _Reject(431 if line_done else 400)

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

    def _authorized(self, request: _Request) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = (request.authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = credentials.strip().encode("latin-1", errors="replace")
        return hmac.compare_digest(given, self._token)

    def _route(self, request: _Request, head_only: bool) -> bytes:
        if not self._authorized(request):
            return _response(401, extra=(("WWW-Authenticate", 'Bearer realm="edge-agent"'),))
        if request.path not in _ROUTES or (request.path == "/metrics" and self._metrics is None):
            return _error(404, head_only=head_only)
        if request.method not in ("GET", "HEAD"):
            return _error(405, (("Allow", _ALLOWED),))
        try:
            if request.path == "/readyz":
                ready = bool(self._ready())
                return _response(
                    200 if ready else 503, _json_body({"ready": ready}), _JSON, head_only=head_only
                )
            health = self._health()
            if request.path == "/metrics" and self._metrics is not None:
                body = self._metrics(health).encode("utf-8")
                return _response(200, body, METRICS_CONTENT_TYPE, head_only=head_only)
            status = 503 if health.get("status") == "failing" else 200
            return _response(status, _json_body(health), _JSON, head_only=head_only)
        except Exception:
            log.exception("health endpoint: %s failed", request.path)
            return _error(500, head_only=head_only)

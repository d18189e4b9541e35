"""Health endpoint (SPEC 5): status rules, Prometheus rendering, system probe, and the
HTTP server over real loopback sockets, hostile clients included."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edge_agent.health.server import HealthServer
from tests.helpers.agent_harness import apoll
from tests.helpers.health import Agent, _value, full_health, parse_prometheus

# ---------------------------------------------------------------------------------
# HealthServer over real sockets


class Response:
    def __init__(self, raw: bytes) -> None:
        head, sep, self.body = raw.partition(b"\r\n\r\n")
        assert sep, f"no complete response in {raw[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        version, code, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        self.status = int(code)
        self.headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}

    def json(self) -> Any:
        return json.loads(self.body)


async def send(port: int, raw: bytes, *, timeout: float = 3.0) -> Response:
    """Send raw bytes, read until the server closes, parse the response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(timeout):
            data = await reader.read()
        return Response(data)
    finally:
        writer.close()


async def get(port: int, path: str, method: str = "GET", headers: str = "") -> Response:
    return await send(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server(agent: Agent) -> AsyncIterator[ServerFactory]:
    servers: list[HealthServer] = []
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    async def factory(**kw: Any) -> HealthServer:
        kw.setdefault("request_timeout", 1.0)
        srv = HealthServer("127.0.0.1", 0, health=agent.get_health, ready=agent.is_ready, **kw)
        await srv.start()
        servers.append(srv)
        return srv

    yield factory
    for srv in servers:
        await srv.close()
    assert errors == [], errors


@pytest.fixture
async def server(make_server: ServerFactory) -> HealthServer:
    srv: HealthServer = await make_server()
    return srv


async def test_healthz_ok_json(server: HealthServer, agent: Agent) -> None:
    r = await get(server.port, "/healthz")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["connection"] == "close"
    assert int(r.headers["content-length"]) == len(r.body)
    body = r.json()
    assert body == agent.health
    for key in (
        "status",
        "reasons",
        "agent",
        "version",
        "config",
        "uptime_s",
        "local",
        "upstream",
        "buffer",
        "counters",
        "system",
    ):
        assert key in body


async def test_healthz_status_codes(server: HealthServer, agent: Agent) -> None:
    agent.health = full_health(status="degraded", reasons=["upstream unreachable for 42 s"])
    r = await get(server.port, "/healthz")
    assert (r.status, r.json()["reasons"]) == (200, ["upstream unreachable for 42 s"])
    agent.health = full_health(status="failing", reasons=["disk full"])
    r = await get(server.port, "/healthz")
    assert (r.status, r.json()["status"]) == (503, "failing")


async def test_healthz_non_finite_numbers_stay_valid_json(
    server: HealthServer, agent: Agent
) -> None:
    agent.health = full_health(uptime_s=math.inf, system={"cpu_percent": math.nan})
    r = await get(server.port, "/healthz")
    assert r.status == 200
    assert r.json()["uptime_s"] is None
    assert r.json()["system"]["cpu_percent"] is None


async def test_readyz(server: HealthServer, agent: Agent) -> None:
    r = await get(server.port, "/readyz")
    assert (r.status, r.json()) == (200, {"ready": True})
    agent.ready = False
    r = await get(server.port, "/readyz")
    assert (r.status, r.json()) == (503, {"ready": False})


async def test_metrics_endpoint(server: HealthServer, agent: Agent) -> None:
    agent.health = full_health(status="failing")
    r = await get(server.port, "/metrics")
    assert r.status == 200  # a failing agent is still scraped
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    _, samples = parse_prometheus(r.body.decode())
    assert _value(samples, "edge_agent_up") == 0
    assert _value(samples, "edge_agent_readings_in_total") == 10


@pytest.mark.parametrize(
    "path", ["/", "/healthz/", "/health", "/HEALTHZ", "/metrics.txt", "*", "/%2e%2e/etc"]
)
async def test_unknown_paths_are_404(server: HealthServer, path: str) -> None:
    for method in ("GET", "POST"):
        r = await get(server.port, path, method)
        assert r.status == 404


@pytest.mark.parametrize(
    "method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW", "HEAD"]
)
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_other_methods_are_405(server: HealthServer, path: str, method: str) -> None:
    r = await get(server.port, path, method)
    assert r.status == 405
    assert r.headers["allow"] == "GET"


async def test_post_with_body_still_gets_its_405(server: HealthServer) -> None:
    body = b"x" * 20000  # more than is read: the drain keeps the answer from a RST
    r = await send(
        server.port,
        b"POST /healthz HTTP/1.1\r\nContent-Length: 20000\r\n\r\n" + body,
    )
    assert r.status == 405


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_is_another_method_and_its_405_has_no_body(
    server: HealthServer, path: str
) -> None:
    """SPEC 5 names GET only: "any other method: 405". A response to HEAD never has a
    body, so its 405 has none."""
    r = await get(server.port, path, "HEAD")
    assert r.status == 405
    assert r.body == b""
    assert r.headers["allow"] == "GET"


async def test_query_strings_and_absolute_form_are_ignored(server: HealthServer) -> None:
    assert (await get(server.port, "/healthz?verbose=1&x=%00")).status == 200
    assert (await get(server.port, "/readyz#frag")).status == 200
    assert (await get(server.port, "http://example.com/metrics?a")).status == 200
    assert (await send(server.port, b"GET /healthz HTTP/1.0\n\n")).status == 200  # bare LF, 1.0


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(40)),  # a TLS ClientHello
        b"\x00\x00\x00\x00",
        b"\xff\xfe\r\n\r\n",
        b"hello\r\n\r\n",
        b"GET\x00/healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz\r\n\r\n",  # HTTP/0.9
        b"GET  /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX-A: b\r\n folded\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Name: v\r\n\r\n",
        b"GET /hea\x7fthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    ],
)
async def test_garbage_gets_400_at_once(make_server: ServerFactory, garbage: bytes) -> None:
    # Decided on the bytes, not by the timeout: a server that waited for more would
    # answer 408 after request_timeout (30 s), long after send() gives up (10 s).
    srv = await make_server(request_timeout=30.0)
    r = await send(srv.port, garbage, timeout=10.0)
    assert r.status == 400


async def test_http2_preface_is_refused(server: HealthServer) -> None:
    r = await send(server.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert r.status == 505


@pytest.mark.parametrize("size", [9000, 200_000])
async def test_oversized_head_is_431(server: HealthServer, size: int) -> None:
    raw = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    r = await send(server.port, raw)
    assert r.status == 431


async def test_oversized_request_line_is_refused(server: HealthServer) -> None:
    r = await send(server.port, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n")
    assert r.status in (400, 431)


async def test_too_many_headers_is_431(server: HealthServer) -> None:
    raw = b"GET /healthz HTTP/1.1\r\n" + b"A: b\r\n" * 150 + b"\r\n"
    assert (await send(server.port, raw)).status == 431


async def test_head_just_under_the_limit_is_served(make_server: ServerFactory) -> None:
    srv = await make_server(max_request_bytes=1024)
    start = b"GET /healthz HTTP/1.1\r\nX-Pad: "
    raw = start + b"p" * (1024 - len(start) - 4) + b"\r\n\r\n"
    assert len(raw) == 1024
    assert (await send(srv.port, raw)).status == 200
    assert (await send(srv.port, raw[:-4] + b"p\r\n\r\n")).status == 431


async def test_slow_client_times_out_while_others_are_served(make_server: ServerFactory) -> None:
    server = await make_server(request_timeout=3.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 50 + b"\r\n"
    received = bytearray()

    async def dribble() -> None:
        try:
            for b in request:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass

    async def read_all() -> None:
        received.extend(await reader.read())

    t0 = time.monotonic()
    dribbler = asyncio.create_task(dribble())
    reading = asyncio.create_task(read_all())
    # Meanwhile another client is served, several times, while the slow one still waits.
    for _ in range(3):
        assert (await get(server.port, "/readyz")).status == 200
        await asyncio.sleep(0.1)
    served_while_waiting = not reading.done()
    async with asyncio.timeout(30.0):
        await reading
    elapsed = time.monotonic() - t0
    dribbler.cancel()
    writer.close()
    assert served_while_waiting
    assert elapsed >= 2.9  # request_timeout is 3.0 s: not cut short
    assert Response(bytes(received)).status == 408


async def test_silent_client_gets_408(server: HealthServer) -> None:
    t = time.monotonic()
    r = await send(server.port, b"", timeout=30.0)
    assert r.status == 408
    assert time.monotonic() - t >= 0.9  # after request_timeout (1.0 s), not before


async def test_connect_and_close_and_half_requests_are_harmless(server: HealthServer) -> None:
    for raw in (b"", b"GET /hea", b"GET /healthz HTTP/1.1\r\nHost"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    # a half-closed client that sent part of a head gets a 400
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    writer.write_eof()
    async with asyncio.timeout(2):
        assert Response(await reader.read()).status == 400
    writer.close()
    assert (await get(server.port, "/healthz")).status == 200


async def test_many_concurrent_clients_are_all_served(server: HealthServer) -> None:
    results = await asyncio.gather(*(get(server.port, "/healthz") for _ in range(32)))
    assert [r.status for r in results] == [200] * 32


async def test_connection_cap_refuses_excess_at_once(make_server: ServerFactory) -> None:
    now = [0.0]
    srv = await make_server(max_connections=4, request_timeout=5.0, clock=lambda: now[0])
    idle = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(4)]
    try:
        # Let the server accept them all before the fifth arrives.
        await apoll(lambda: len(srv._conns) >= 4, 15, what="4 connections accepted")
        # Refused at once, not after waiting for a slot: one frees only when an idle
        # connection times out (request_timeout, 5 s), and send() gives up before that.
        r = await send(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=4.0)
        assert r.status == 503
        assert r.headers["retry-after"] == "1"
        # Once the idle ones have dribbled for a while, a newcomer evicts the oldest.
        now[0] = 10.0
        assert (await get(srv.port, "/healthz")).status == 200
        async with asyncio.timeout(2):
            assert await idle[0][0].read() == b""  # the oldest was dropped without an answer
    finally:
        for _, w in idle:
            w.close()


async def test_a_burst_beyond_the_cap_never_hangs(make_server: ServerFactory) -> None:
    srv = await make_server(max_connections=8)
    results = await asyncio.gather(
        *(get(srv.port, "/metrics") for _ in range(100)), return_exceptions=True
    )
    statuses = [r.status for r in results if isinstance(r, Response)]
    assert statuses.count(200) >= 8
    assert set(statuses) <= {200, 503}
    assert all(isinstance(r, Response | ConnectionError) for r in results)
    assert (await get(srv.port, "/healthz")).status == 200
    # every slot comes back once the clients are gone
    await apoll(lambda: not (srv._conns or srv._refusing), 15, what="every slot free")


async def test_token_auth(make_server: ServerFactory, agent: Agent) -> None:
    srv = await make_server(token="s3cret")
    calls = agent.calls
    for headers in (
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Basic czNjcmV0\r\n",
        "Authorization: Bearer s3cret2\r\n",
        "Authorization: s3cret\r\n",
    ):
        for path in ("/healthz", "/metrics", "/readyz", "/nope"):
            r = await get(srv.port, path, headers=headers)
            assert r.status == 401
            assert r.body == b""
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert agent.calls == calls  # nothing was computed for them
    assert (
        await get(srv.port, "/healthz", headers="Authorization: Bearer s3cret\r\n")
    ).status == 200
    assert (
        await get(srv.port, "/metrics", headers="authorization: bearer s3cret\r\n")
    ).status == 200
    assert (await get(srv.port, "/nope", headers="Authorization: Bearer s3cret\r\n")).status == 404
    r = await get(srv.port, "/healthz", "POST", headers="Authorization: Bearer s3cret\r\n")
    assert r.status == 405
    two = "Authorization: Bearer s3cret\r\nAuthorization: Bearer s3cret\r\n"
    assert (await get(srv.port, "/healthz", headers=two)).status == 400


async def test_failing_health_callback_is_500_and_server_survives(
    make_server: ServerFactory, agent: Agent
) -> None:
    def boom() -> dict[str, Any]:
        raise RuntimeError("broken")

    srv = HealthServer("127.0.0.1", 0, health=boom, ready=agent.is_ready, request_timeout=1.0)
    await srv.start()
    try:
        assert (await get(srv.port, "/healthz")).status == 500
        assert (await get(srv.port, "/metrics")).status == 500
        assert (await get(srv.port, "/readyz")).status == 200
    finally:
        await srv.close()


async def test_close_drops_open_connections_promptly(make_server: ServerFactory) -> None:
    srv: HealthServer = await make_server(request_timeout=30.0)
    conns = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(3)]
    await apoll(lambda: len(srv._conns) >= 3, 15, what="3 connections accepted")
    # Promptly: without waiting for the clients' request_timeout (30 s).
    async with asyncio.timeout(10.0):
        await srv.close()
    for r, w in conns:
        async with asyncio.timeout(1):
            assert await r.read() == b""
        w.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", srv.port)


async def test_start_fails_on_a_taken_port(server: HealthServer, agent: Agent) -> None:
    other = HealthServer("127.0.0.1", server.port, health=agent.get_health, ready=agent.is_ready)
    with pytest.raises(OSError):
        await other.start()
    await other.close()


async def test_answered_clients_that_linger_make_room(make_server: ServerFactory) -> None:
    now = [0.0]
    srv = await make_server(max_connections=2, request_timeout=5.0, clock=lambda: now[0])
    lingering = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /readyz HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(2):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        lingering.append(writer)  # answered, but keeps the connection open
    try:
        assert len(srv._conns) == 2
        assert (await get(srv.port, "/healthz")).status == 200  # no 503: one was evicted
    finally:
        for w in lingering:
            w.close()


async def test_cancelled_handler_ends_quietly(make_server: ServerFactory) -> None:
    srv = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    await apoll(lambda: srv._conns, 15, what="the connection accepted")
    (conn,) = srv._conns.values()
    assert conn.task is not None
    conn.task.cancel()  # what asyncio.run does to leftover tasks at exit
    async with asyncio.timeout(15):
        assert await reader.read() == b""
    await apoll(lambda: not srv._conns, 15, what="the connection gone")
    writer.close()
    assert (await get(srv.port, "/healthz")).status == 200  # and the fixture saw no loop error

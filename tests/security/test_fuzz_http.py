"""Issue 13: HTTP requests fuzzed against both servers, over real sockets.

The agent's health server (edge_agent.health.server) and the firmware bridge's
(the same server, without /metrics, serving the bridge's figures). Whatever a client sends, the server answers with a
well-formed HTTP/1.1 status line or closes, within its timeout; no exception
reaches the event loop; and a normal poll is answered afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_agent.health.server import HealthServer

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
AGENT_STATUSES = {200, 400, 401, 404, 405, 408, 431, 503, 505}
BRIDGE_STATUSES = AGENT_STATUSES  # the bridge serves through the same HealthServer


def _health() -> dict[str, Any]:
    return {"status": "ok", "reasons": [], "agent": "a", "counters": {"readings_in": 1}}


class _LoopThread:
    """A server on its own event loop in a thread; loop errors are collected."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _l, ctx: self.errors.append(ctx))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port: int = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def agent_server() -> Iterator[_LoopThread]:
    holder: dict[str, HealthServer] = {}

    async def start() -> int:
        srv = HealthServer(
            "127.0.0.1", 0, health=_health, ready=lambda: True, token="t0k", request_timeout=0.5
        )
        await srv.start()
        holder["srv"] = srv
        return srv.port

    lt = _LoopThread(start)
    yield lt
    lt.run(holder["srv"].close())
    lt.stop()


@pytest.fixture(scope="module")
def bridge_server() -> Iterator[_LoopThread]:
    holder: dict[str, HealthServer] = {}

    async def start() -> int:
        # as firmware_bridge.bridge.Bridge builds it
        srv = HealthServer("127.0.0.1", 0, health=_health, ready=lambda: True, metrics=None)
        await srv.start()
        holder["srv"] = srv
        return srv.port

    lt = _LoopThread(start)
    yield lt
    lt.run(holder["srv"].close())
    lt.stop()


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before we finish sending
        out = bytearray()
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return bytes(out)


def _status(response: bytes) -> int | None:
    if not response:
        return None
    line = response.split(b"\r\n", 1)[0]
    version, code, *_ = line.split(b" ", 2)
    assert version == b"HTTP/1.1", response[:100]
    return int(code)


methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PRI", "G ET", ""])
paths = st.sampled_from(
    [
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "*",
        "/../etc/passwd",
        "http://x/healthz",
        "/healthz?x=1#y",
        "/%00",
        "",
    ]
) | st.text(max_size=30)
header_names = st.sampled_from(
    ["Host", "Authorization", "Content-Length", "Transfer-Encoding", "X", ""]
) | st.text(max_size=10)
header_values = st.sampled_from(
    ["Bearer t0k", "Bearer x", "chunked", "-1", "99999999999", "Bearer " + "t" * 9000]
) | st.text(max_size=40)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    line = f"{draw(methods)} {draw(paths)} {draw(st.sampled_from(['HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/1', '']))}"
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    sep = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    text = line + sep + "".join(f"{k}: {v}{sep}" for k, v in headers) + sep
    raw = text.encode("utf-8", "surrogatepass")
    return raw + draw(st.binary(max_size=50))


@FUZZ
@given(st.binary(max_size=2000) | requests())
@example(b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer t0k\r\n\r\n")
@example(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello
@example(b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n")
@example(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
def test_agent_health_server_answers_anything(agent_server: _LoopThread, data: bytes) -> None:
    status = _status(_exchange(agent_server.port, data))
    assert status is None or status in AGENT_STATUSES, status
    if data.startswith(b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer t0k\r\n\r\n"):
        assert status == 200
    assert agent_server.errors == []


@FUZZ
@given(st.binary(max_size=2000) | requests())
@example(b"GET /healthz HTTP/1.1\r\n\r\n")
@example(b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 10000 + b"\r\n\r\n")
def test_bridge_health_server_answers_anything(bridge_server: _LoopThread, data: bytes) -> None:
    status = _status(_exchange(bridge_server.port, data, timeout=5.0))
    assert status is None or status in BRIDGE_STATUSES, status
    assert bridge_server.errors == []


def test_both_still_answer_after_the_fuzzing(
    agent_server: _LoopThread, bridge_server: _LoopThread
) -> None:
    ok = b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer t0k\r\n\r\n"
    assert _status(_exchange(agent_server.port, ok)) == 200
    assert _status(_exchange(bridge_server.port, b"GET /healthz HTTP/1.1\r\n\r\n")) == 200

"""Issue 13, items 4 and 6: the health endpoint under a flood, and a port that cannot be bound."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.health.server import HealthServer
from tests.helpers.agent_harness import AgentProcess, http, poll, write_config
from tests.helpers.brokers import Broker


def _health() -> dict[str, Any]:
    return {"status": "ok", "reasons": []}


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    """The agent's health server with its default caps and timeouts."""
    srv = HealthServer("127.0.0.1", 0, health=_health, ready=lambda: True)
    await srv.start()
    yield srv
    await srv.close()


async def _open_idle(
    port: int, source: str, n: int, settle: float = 0.2
) -> list[asyncio.StreamWriter]:
    """n connections from `source` that send nothing; the ones refused are let go."""
    out = []
    for _ in range(n):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            continue
        out.append(w)
    await asyncio.sleep(settle)  # let the server accept (and evict) them all
    return out


async def _poll(port: int, source: str = "127.0.0.1") -> tuple[int, float]:
    t = time.monotonic()
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        w.write(b"GET /healthz HTTP/1.1\r\nHost: pi\r\n\r\n")
        async with asyncio.timeout(3):
            data = await r.read()
    finally:
        w.close()
    return int(data.split(b" ", 2)[1]), time.monotonic() - t


async def test_idle_flood_from_one_host_leaves_the_fleet_manager_answered(
    server: HealthServer,
) -> None:
    flood = await _open_idle(server.port, "127.0.0.2", 200)
    try:
        for _ in range(5):
            status, took = await _poll(server.port)
            assert status == 200
            assert took < 1.0
    finally:
        for w in flood:
            w.close()


async def test_idle_flood_from_several_hosts_leaves_the_fleet_manager_answered(
    server: HealthServer,
) -> None:
    flood: list[asyncio.StreamWriter] = []
    try:
        for i in range(2, 10):  # 8 addresses x 10 idle connections: more than every slot
            flood += await _open_idle(server.port, f"127.0.0.{i}", 10, settle=0.0)
        await asyncio.sleep(0.05)
        # within the second in which a dribbling head is not yet evictable
        for _ in range(5):
            status, took = await _poll(server.port)
            assert status == 200
            assert took < 1.0
    finally:
        for w in flood:
            w.close()


async def test_one_host_cannot_hold_more_than_its_share() -> None:
    server = HealthServer("127.0.0.1", 0, health=_health, ready=lambda: True, max_connections=64)
    await server.start()
    flood = await _open_idle(server.port, "127.0.0.2", 100)
    try:
        assert 0 < len(server._conns) <= 32  # of 64: half stays free for other hosts
    finally:
        for w in flood:
            w.close()
        await server.close()


@pytest.mark.slow
def test_a_health_port_that_cannot_be_bound_does_not_stop_the_agent(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = write_config(tmp_path, broker.port, broker.port)
    assert cfg.health_port is not None
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", cfg.health_port))
    squatter.listen()
    try:
        with AgentProcess(cfg) as agent:
            poll(lambda: "cannot listen" in agent.log(), 15, what="the reason in the log")
            poll(lambda: "subscribed on" in agent.log(), 15, what="the data path running")
            assert agent.alive(), agent.log()
            squatter.close()
            # it keeps trying, and takes the port once it is free
            poll(lambda: _readyz(cfg.base_url) == 200, 40, what="/readyz after the port is freed")
            assert agent.alive()
    finally:
        squatter.close()


def _readyz(base_url: str) -> int:
    try:
        return http(base_url + "/readyz", timeout=1.0)[0]
    except OSError:
        return 0


def test_the_per_client_cap_counts_an_ipv6_client_by_its_64() -> None:
    from edge_agent.health.server import client_key

    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("fe80::1%eth0") == client_key("fe80::2")
    assert client_key("::1") == "::1"


@pytest.mark.slow
def test_the_running_agent_answers_its_fleet_manager_under_an_idle_flood(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = write_config(tmp_path, broker.port, broker.port)
    assert cfg.health_port is not None
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        flood: list[socket.socket] = []
        try:
            for _ in range(300):
                with contextlib.suppress(OSError):
                    flood.append(
                        socket.create_connection(
                            ("127.0.0.1", cfg.health_port),
                            timeout=2,
                            source_address=("127.0.0.2", 0),
                        )
                    )
            for _ in range(5):
                t = time.monotonic()
                status, _, body = http(cfg.base_url + "/healthz", timeout=3.0)
                assert status == 200, (status, body[:200])
                assert time.monotonic() - t < 2.0
        finally:
            for s in flood:
                s.close()

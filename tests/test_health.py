"""Health endpoint (SPEC 5): status rules, Prometheus rendering, system probe, and the
HTTP server over real loopback sockets, hostile clients included."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from collections import namedtuple
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.health import system as system_mod
from edge_agent.health.metrics import render_metrics
from edge_agent.health.server import HealthServer
from edge_agent.health.status import HealthFacts, evaluate
from edge_agent.health.system import SystemProbe, existing_parent, state_dir_writable
from tests.agent_harness import apoll

# ---------------------------------------------------------------------------------
# evaluate(): the rule table

T0 = 1000.0


def facts(now: float = T0 + 100.0, **kw: Any) -> HealthFacts:
    base = HealthFacts(
        now=now,
        started_at=T0,
        local_connected=True,
        local_ever_connected=True,
        local_lost_since=None,
        upstream_connected=True,
        upstream_lost_since=None,
        last_drop_at=None,
        state_dir_writable=True,
        disk_full=False,
    )
    return replace(base, **kw)


def test_all_well_is_ok_with_no_reasons() -> None:
    assert evaluate(facts()) == ("ok", [])


def test_upstream_unreachable_is_degraded_in_whole_seconds() -> None:
    f = facts(upstream_connected=False, upstream_lost_since=T0 + 100.0 - 42.9)
    assert evaluate(f) == ("degraded", ["upstream unreachable for 42 s"])


def test_upstream_never_reached_counts_from_start() -> None:
    f = facts(now=T0 + 7.5, upstream_connected=False, upstream_lost_since=None)
    assert evaluate(f) == ("degraded", ["upstream unreachable for 7 s"])


def test_upstream_lost_just_now_reads_zero_seconds() -> None:
    f = facts(upstream_connected=False, upstream_lost_since=T0 + 100.0)
    assert evaluate(f) == ("degraded", ["upstream unreachable for 0 s"])


@pytest.mark.parametrize(
    ("ago", "expected"),
    [(0.0, "degraded"), (59.999, "degraded"), (60.0, "ok"), (60.001, "ok"), (3600.0, "ok")],
)
def test_drop_degrades_for_60_s(ago: float, expected: str) -> None:
    status, reasons = evaluate(facts(last_drop_at=T0 + 100.0 - ago))
    assert status == expected
    if expected == "ok":
        assert reasons == []
    else:
        assert reasons == [f"buffer dropped a batch {int(ago)} s ago"]


@pytest.mark.parametrize(
    ("down_for", "expected"),
    [
        (0.0, "degraded"),
        (29.9, "degraded"),
        (30.0, "degraded"),
        (30.001, "failing"),
        (300.0, "failing"),
    ],
)
def test_local_lost_fails_past_30_s(down_for: float, expected: str) -> None:
    f = facts(local_connected=False, local_lost_since=T0 + 100.0 - down_for)
    status, reasons = evaluate(f)
    assert status == expected
    assert reasons == [f"local broker unreachable for {int(down_for)} s"]


@pytest.mark.parametrize(
    ("since_start", "expected"),
    [(0.0, "degraded"), (30.0, "degraded"), (30.5, "failing"), (100.0, "failing")],
)
def test_local_not_reached_within_30_s_of_start_fails(since_start: float, expected: str) -> None:
    f = facts(
        now=T0 + since_start,
        local_connected=False,
        local_ever_connected=False,
        local_lost_since=None,  # never connected: counts from start
    )
    status, reasons = evaluate(f)
    assert status == expected
    assert len(reasons) == 1
    assert "local broker not reached" in reasons[0]


def test_state_dir_and_disk_full_fail() -> None:
    assert evaluate(facts(state_dir_writable=False)) == ("failing", ["state dir not writable"])
    assert evaluate(facts(disk_full=True)) == ("failing", ["disk full"])


def test_failing_wins_and_reasons_list_every_cause() -> None:
    f = facts(
        upstream_connected=False,
        upstream_lost_since=T0 + 90.0,
        last_drop_at=T0 + 95.0,
        disk_full=True,
        local_connected=False,
        local_lost_since=T0 + 50.0,
    )
    status, reasons = evaluate(f)
    assert status == "failing"
    assert reasons == [
        "local broker unreachable for 50 s",
        "disk full",
        "upstream unreachable for 10 s",
        "buffer dropped a batch 5 s ago",
    ]


def _reference(f: HealthFacts) -> tuple[str, int]:
    """Brute-force restatement of SPEC 5: (status, number of causes)."""
    local_since = f.local_lost_since if f.local_lost_since is not None else f.started_at
    local_down = not f.local_connected
    local_failing = local_down and f.now - local_since > 30
    fail = local_failing or not f.state_dir_writable or f.disk_full
    causes = [
        local_down,
        not f.state_dir_writable,
        f.disk_full,
        not f.upstream_connected,
        f.last_drop_at is not None and f.now - f.last_drop_at < 60,
    ]
    n = sum(causes)
    return ("failing" if fail else "degraded" if n else "ok"), n


_times = st.floats(min_value=0.0, max_value=200.0, allow_nan=False)


@given(
    now=_times,
    local=st.booleans(),
    ever=st.booleans(),
    local_lost=st.none() | _times,
    up=st.booleans(),
    up_lost=st.none() | _times,
    drop=st.none() | _times,
    writable=st.booleans(),
    full=st.booleans(),
)
def test_evaluate_matches_reference(
    now: float,
    local: bool,
    ever: bool,
    local_lost: float | None,
    up: bool,
    up_lost: float | None,
    drop: float | None,
    writable: bool,
    full: bool,
) -> None:
    f = HealthFacts(
        now=T0 + now,
        started_at=T0,
        local_connected=local,
        local_ever_connected=ever,
        local_lost_since=None if local_lost is None else T0 + local_lost,
        upstream_connected=up,
        upstream_lost_since=None if up_lost is None else T0 + up_lost,
        last_drop_at=None if drop is None else T0 + drop,
        state_dir_writable=writable,
        disk_full=full,
    )
    status, reasons = evaluate(f)
    assert (status, len(reasons)) == _reference(f)
    assert (status == "ok") == (reasons == [])
    for r in reasons:
        for n in re.findall(r"-?\d+(?:\.\d+)?", r):
            assert not n.startswith("-") and "." not in n  # whole, non-negative seconds


# ---------------------------------------------------------------------------------
# render_metrics(): parse the text back

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], v)


def parse_prometheus(
    text: str,
) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """A strict little parser for the 0.0.4 text format: (types, samples)."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"duplicate HELP for {name}"
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"duplicate TYPE for {name}"
            assert kind in ("counter", "gauge")
            types[name] = kind
        else:
            m = _SAMPLE.fullmatch(line)
            assert m is not None, f"bad sample line {line!r}"
            name, _, body, value = m.groups()
            assert name in types and name in helps, f"{name} lacks HELP/TYPE"
            labels: list[tuple[str, str]] = []
            pos = 0
            while body and pos < len(body):
                lm = _LABEL.match(body, pos)
                assert lm is not None, f"bad labels {body!r}"
                labels.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
            key = (name, frozenset(labels))
            assert key not in samples
            samples[key] = float(value)
    return types, samples


def full_health(**over: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "status": "ok",
        "reasons": [],
        "agent": "pi-7",
        "version": "0.1.0",
        "config": "0123456789ab",
        "uptime_s": 12.5,
        "local": {"connected": True},
        "upstream": {"connected": False, "last_ack_age_s": None},
        "buffer": {"batches": 3, "bytes": 40960, "oldest_age_s": None},
        "counters": {
            "readings_in": 10,
            "readings_rejected": 1,
            "readings_late": 2,
            "windows_emitted": 4,
            "batches_sent": 5,
            "batches_dropped": 0,
        },
        "system": {
            "cpu_percent": 3.25,
            "mem_percent": 41.0,
            "disk_free_bytes": 123456789,
            "temperature_c": None,
        },
    }
    h.update(over)
    return h


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return samples[(name, frozenset())]


def test_metrics_counters_and_gauges() -> None:
    types, samples = parse_prometheus(render_metrics(full_health()))
    for counter, n in full_health()["counters"].items():
        assert types[f"edge_agent_{counter}_total"] == "counter"
        assert _value(samples, f"edge_agent_{counter}_total") == n
    expected = {
        "edge_agent_up": 1,
        "edge_agent_uptime_seconds": 12.5,
        "edge_agent_local_connected": 1,
        "edge_agent_upstream_connected": 0,
        "edge_agent_buffer_batches": 3,
        "edge_agent_buffer_bytes": 40960,
        "edge_agent_buffer_oldest_age_seconds": 0,  # null in /healthz, 0 here
        "edge_agent_cpu_percent": 3.25,
        "edge_agent_memory_percent": 41.0,
        "edge_agent_disk_free_bytes": 123456789,
    }
    for name, v in expected.items():
        assert types[name] == "gauge"
        assert _value(samples, name) == v
    assert "edge_agent_temperature_celsius" not in types  # unknown: left out
    assert "edge_agent_upstream_last_ack_age_seconds" not in types
    info = samples[
        (
            "edge_agent_info",
            frozenset({("version", "0.1.0"), ("config", "0123456789ab"), ("agent", "pi-7")}),
        )
    ]
    assert info == 1


@pytest.mark.parametrize(("status", "up"), [("ok", 1.0), ("degraded", 0.5), ("failing", 0.0)])
def test_metrics_up_gauge(status: str, up: float) -> None:
    text = render_metrics(full_health(status=status))
    _, samples = parse_prometheus(text)
    assert _value(samples, "edge_agent_up") == up
    assert re.search(rf"^edge_agent_up {up:g}$", text, re.M)


def test_metrics_known_temperature_and_ages() -> None:
    h = full_health(
        system={
            "cpu_percent": 0.0,
            "mem_percent": 1.0,
            "disk_free_bytes": 0,
            "temperature_c": 48.3,
        },
        buffer={"batches": 1, "bytes": 4096, "oldest_age_s": 17.25},
        upstream={"connected": True, "last_ack_age_s": 0.4},
    )
    _, samples = parse_prometheus(render_metrics(h))
    assert _value(samples, "edge_agent_temperature_celsius") == 48.3
    assert _value(samples, "edge_agent_buffer_oldest_age_seconds") == 17.25
    assert _value(samples, "edge_agent_upstream_last_ack_age_seconds") == 0.4


def test_metrics_pipeline_labels_are_escaped() -> None:
    nasty = 'we"ird\\name\nx'
    h = full_health(
        pipelines={
            "climate": {"readings_in": 7, "readings_late": 1},
            nasty: {"readings_in": 3},
        },
        agent='a"b',
    )
    types, samples = parse_prometheus(render_metrics(h))
    name = "edge_agent_pipeline_readings_in_total"
    assert types[name] == "counter"
    assert samples[(name, frozenset({("pipeline", "climate")}))] == 7
    assert samples[(name, frozenset({("pipeline", nasty)}))] == 3
    assert (
        samples[("edge_agent_pipeline_readings_late_total", frozenset({("pipeline", "climate")}))]
        == 1
    )
    # the agent-wide series keeps its plain name and value
    assert _value(samples, "edge_agent_readings_in_total") == 10
    assert any(("agent", 'a"b') in labels for (n, labels) in samples if n == "edge_agent_info")


def test_metrics_survive_sparse_and_odd_input() -> None:
    text = render_metrics(
        {"status": "weird", "counters": {"x-y": 1.5, "nan": math.nan, "s": "str"}}
    )
    types, samples = parse_prometheus(text)
    assert _value(samples, "edge_agent_up") == 0
    assert _value(samples, "edge_agent_x_y_total") == 1.5
    assert math.isnan(_value(samples, "edge_agent_nan_total"))
    assert "edge_agent_s_total" not in types


# ---------------------------------------------------------------------------------
# SystemProbe


def test_system_probe_sample_shape(tmp_path: Path) -> None:
    probe = SystemProbe(tmp_path / "not" / "made" / "yet")
    s = probe.sample()
    assert set(s) == {"cpu_percent", "mem_percent", "disk_free_bytes", "temperature_c", "throttled"}
    assert 0.0 <= s["cpu_percent"] <= 100.0
    assert 0.0 < s["mem_percent"] <= 100.0
    # The free space of the nearest existing ancestor (the dir is not made yet), from
    # statvfs directly; other processes write meanwhile, so within 1% of the disk.
    st = os.statvfs(tmp_path)
    assert abs(s["disk_free_bytes"] - st.f_bavail * st.f_frsize) <= max(st.f_blocks * st.f_frsize // 100, 1 << 20)
    assert s["temperature_c"] is None or isinstance(s["temperature_c"], float)
    assert s["throttled"] is None or isinstance(s["throttled"], str)
    json.dumps(s, allow_nan=False)


def test_system_probe_caches_for_its_ttl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    calls = [0]
    real = psutil.virtual_memory

    def counting() -> Any:
        calls[0] += 1
        return real()

    monkeypatch.setattr(psutil, "virtual_memory", counting)
    probe = SystemProbe(tmp_path, ttl=1.0, clock=lambda: now[0])
    probe.sample()
    now[0] = 0.99
    first = probe.sample()
    assert calls[0] == 1
    first["cpu_percent"] = -1  # a copy: callers cannot poison the cache
    assert probe.sample()["cpu_percent"] >= 0
    now[0] = 1.0
    probe.sample()
    assert calls[0] == 2


def test_temperature_prefers_cpu_sensors(monkeypatch: pytest.MonkeyPatch) -> None:
    # the shape psutil returns (its namedtuple moves between versions)
    entry = namedtuple("shwtemp", "label current high critical")

    monkeypatch.setattr(
        psutil,
        "sensors_temperatures",
        lambda: {
            "acpitz": [entry("", 27.8, None, None)],
            "nvme": [entry("Composite", 35.0, None, None)],
            "coretemp": [entry("Package id 0", 51.0, 90.0, 100.0)],
        },
        raising=False,
    )
    assert system_mod.read_temperature() == 51.0
    monkeypatch.setattr(
        psutil, "sensors_temperatures", lambda: {"nvme": [entry("", 35.0, None, None)]}
    )
    assert system_mod.read_temperature() == 35.0


def test_existing_parent_and_writable(tmp_path: Path) -> None:
    assert existing_parent(tmp_path / "a" / "b") == tmp_path
    assert state_dir_writable(tmp_path / "a" / "b")
    assert state_dir_writable(tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert not state_dir_writable(ro)


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


class Agent:
    """Stand-in for the runtime: mutable health and readiness."""

    def __init__(self) -> None:
        self.health = full_health()
        self.ready = True
        self.calls = 0

    def get_health(self) -> dict[str, Any]:
        self.calls += 1
        return self.health

    def is_ready(self) -> bool:
        return self.ready


@pytest.fixture
def agent() -> Agent:
    return Agent()


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


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_other_methods_are_405(server: HealthServer, path: str, method: str) -> None:
    r = await get(server.port, path, method)
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD"


async def test_post_with_body_still_gets_its_405(server: HealthServer) -> None:
    body = b"x" * 20000  # more than is read: the drain keeps the answer from a RST
    r = await send(
        server.port,
        b"POST /healthz HTTP/1.1\r\nContent-Length: 20000\r\n\r\n" + body,
    )
    assert r.status == 405


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_has_headers_and_no_body(server: HealthServer, path: str) -> None:
    full = await get(server.port, path)
    r = await get(server.port, path, "HEAD")
    assert r.status == full.status == 200
    assert r.body == b""
    assert r.headers["content-length"] == full.headers["content-length"]
    assert r.headers["content-type"] == full.headers["content-type"]


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

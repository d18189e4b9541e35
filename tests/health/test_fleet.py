"""What a fleet manager sees: /healthz and /metrics figures, the bearer token, `edge-agent health`.

Real agent processes, real brokers, real HTTP. A fleet manager runs
`edge-agent health URL --token T` over SSH, or scrapes /metrics, so these check
the figures it needs (status and why, version, config hash, uptime, uplink and
buffer, system) and that an endpoint listening beyond loopback with a token gives
nothing away without it.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edge_agent import __version__
from edge_agent.health.metrics import render_metrics
from tests.helpers.agent_harness import (
    HEX12,
    REPO,
    AgentConfig,
    AgentProcess,
    Consumer,
    Publisher,
    agent_env,
    counted,
    http,
    poll,
    running_agent,
    write_config,
)
from tests.helpers.brokers import Broker

TOKEN = "fleet-7f3a9c2e-Token-d41d8cd98f00"  # distinctive, so a grep of the output cannot miss it


def _edit(cfg: AgentConfig, section: str, **keys: str) -> None:
    """Set string keys in one table of the written config file (render_config has no hook)."""
    lines = cfg.path.read_text().splitlines()
    start = lines.index(f"[{section}]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    body = [ln for ln in lines[start:end] if ln.split(" = ")[0] not in keys]
    body[:0] = [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    cfg.path.write_text("\n".join(lines[:start] + body + lines[end:]) + "\n")


def _token_config(
    tmp_path: Path, local: Broker, upstream: Broker, token: str = TOKEN
) -> AgentConfig:
    cfg = write_config(tmp_path, local.port, upstream.port)
    tf = tmp_path / "health.token"
    tf.write_text(token + "\n")
    tf.chmod(0o600)
    # Beyond loopback, where a token matters; tests reach it on 127.0.0.1.
    _edit(cfg, "health", listen=f"0.0.0.0:{cfg.health_port}", token_file=str(tf))
    _edit(cfg, "agent", log_level="debug", log_format="json")
    return cfg


def _get(
    url: str, token: str | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5.0) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def _health_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = agent_env()
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "health", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=REPO,
    )


def machine_temperature() -> float | None:
    """A temperature this machine exposes, read here without the agent's code: any
    finite psutil sensor reading, else sysfs thermal_zone0 (millidegrees)."""
    import math

    import psutil

    sensors = getattr(psutil, "sensors_temperatures", lambda: {})() or {}
    for entries in sensors.values():
        for e in entries:
            if math.isfinite(e.current):
                return float(e.current)
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text().strip()) / 1000
    except (OSError, ValueError):
        return None


def _metrics(text: str) -> dict[str, float]:
    """`name{labels} value` samples of a Prometheus text page (labels kept in the key)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# -- /healthz and /metrics carry what a fleet manager needs -----------------------------------


def test_healthz_and_metrics_carry_the_fleet_figures(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    with Consumer(upstream_broker.port) as consumer, running_agent(cfg) as agent:
        with Publisher(broker.port) as pub:
            for v in (1.0, 2.0, 3.0):
                pub.publish("s/a", f"{v}")
        consumer.wait_for(lambda c: counted(c.records()) == 3, what="3 readings delivered")
        h = poll(
            lambda: (
                (d := agent.health())["upstream"]["last_ack_age_s"] is not None
                and d["status"] == "ok"
                and d
            ),
            what="an acknowledged batch and status ok",
        )
        later = poll(
            lambda: (d := agent.health())["uptime_s"] > h["uptime_s"] and d, what="uptime grows"
        )
        status, headers, body = http(cfg.base_url + "/metrics")

    # Identity and lineage: the same config hash as the batches carry.
    assert h["agent"] == cfg.agent_id
    assert h["version"] == __version__
    assert HEX12.fullmatch(h["config"])
    assert {b.doc["config"] for b in consumer.unique()} == {h["config"]}
    # Status in words.
    assert h["status"] == "ok" and h["reasons"] == []
    assert 0 < h["uptime_s"] < later["uptime_s"] < 120
    # Uplink and buffer.
    assert h["upstream"]["connected"] is True
    assert 0 <= h["upstream"]["last_ack_age_s"] < 30
    assert h["counters"]["batches_sent"] >= 1
    assert h["counters"]["readings_in"] == 3
    assert set(h["buffer"]) >= {"batches", "bytes", "oldest_age_s"}
    assert h["buffer"]["bytes"] > 0  # the SQLite file on disk
    # System figures: whole-system CPU and memory, the state dir's free space, and
    # the temperature exactly when this machine exposes one.
    sysf = h["system"]
    assert 0 <= sysf["cpu_percent"] <= 100
    assert 0 < sysf["mem_percent"] <= 100
    assert sysf["disk_free_bytes"] > 0
    assert (sysf["temperature_c"] is None) == (machine_temperature() is None)
    if sysf["temperature_c"] is not None:
        assert -40 <= sysf["temperature_c"] <= 150
    assert "throttled" in sysf

    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    m = _metrics(text)
    info = [k for k in m if k.startswith("edge_agent_info{")]
    assert len(info) == 1 and m[info[0]] == 1
    assert f'version="{__version__}"' in info[0]
    assert f'config="{h["config"]}"' in info[0] and f'agent="{cfg.agent_id}"' in info[0]
    assert m["edge_agent_up"] == 1
    assert m["edge_agent_uptime_seconds"] > 0
    assert m["edge_agent_upstream_connected"] == 1 and m["edge_agent_local_connected"] == 1
    assert m["edge_agent_batches_sent_total"] >= 1
    assert m["edge_agent_readings_in_total"] == 3
    assert m["edge_agent_buffer_bytes"] > 0
    for gauge in (
        "edge_agent_buffer_batches",
        "edge_agent_buffer_oldest_age_seconds",
        "edge_agent_cpu_percent",
        "edge_agent_memory_percent",
        "edge_agent_disk_free_bytes",
    ):
        assert gauge in m, gauge
    assert ("edge_agent_temperature_celsius" in m) == (sysf["temperature_c"] is not None)


def test_degraded_says_why_and_buffer_figures_grow_while_upstream_is_down(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    upstream_broker.stop()
    with running_agent(cfg) as agent:
        with Publisher(broker.port) as pub:
            for v in (1.0, 2.0):
                pub.publish("s/a", f"{v}")
        h = poll(
            lambda: (d := agent.health())["buffer"]["batches"] > 0 and d, what="buffered batches"
        )
        assert h["status"] == "degraded"
        assert any(re.fullmatch(r"upstream unreachable for \d+ s", r) for r in h["reasons"]), h[
            "reasons"
        ]
        assert h["upstream"] == {"connected": False, "last_ack_age_s": None}
        assert h["buffer"]["oldest_age_s"] is not None and h["buffer"]["oldest_age_s"] >= 0
        m = _metrics(http(cfg.base_url + "/metrics")[2].decode())
        assert m["edge_agent_up"] == 0.5
        assert m["edge_agent_upstream_connected"] == 0
        assert m["edge_agent_buffer_batches"] >= 1
        # `edge-agent health` exits 1 for degraded and prints the reasons.
        r = _health_cli(cfg.base_url)
        assert r.returncode == 1, r
        assert any(x.startswith("upstream unreachable") for x in json.loads(r.stdout)["reasons"])


# -- the bearer token ----------------------------------------------------------------------------


def test_token_guards_every_path_and_the_cli_passes_it(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = _token_config(tmp_path, broker, upstream_broker)
    with running_agent_with_token(cfg) as agent:
        for path in ("/healthz", "/metrics", "/readyz", "/nope"):
            for token in (None, "wrong", TOKEN + "x", TOKEN[:-1], ""):
                status, headers, body = _get(cfg.base_url + path, token)
                assert status == 401, (path, token, status)
                assert headers.get("WWW-Authenticate", "").lower().startswith("bearer")
                # No data: not the agent id, not a status, not a figure.
                assert cfg.agent_id.encode() not in body and b"status" not in body, body
                assert b"edge_agent_" not in body
        # A scheme other than Bearer is refused too.
        req = urllib.request.Request(cfg.base_url + "/healthz", headers={"Authorization": TOKEN})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5.0)
        assert err.value.code == 401
        err.value.close()

        status, _, body = _get(cfg.base_url + "/healthz", TOKEN)
        assert status == 200 and json.loads(body)["agent"] == cfg.agent_id
        status, _, body = _get(cfg.base_url + "/metrics", TOKEN)
        assert status == 200 and b"edge_agent_up " in body
        assert _get(cfg.base_url + "/readyz", TOKEN)[0] == 200
        assert _get(cfg.base_url + "/healthz", TOKEN, method="HEAD")[0] == 405
        assert _get(cfg.base_url + "/healthz", None, method="HEAD")[0] == 401

        # The CLI, as a fleet manager runs it over SSH: URL and --token, or --token-file.
        ok = _health_cli(cfg.base_url, "--token", TOKEN)
        assert ok.returncode == 0, ok
        assert json.loads(ok.stdout)["agent"] == cfg.agent_id
        full = _health_cli(
            cfg.base_url + "/healthz", "--token-file", str(tmp_path / "health.token")
        )
        assert full.returncode == 0, full
        missing = _health_cli(cfg.base_url)
        assert missing.returncode == 2 and "401" in missing.stderr, missing
        wrong = _health_cli(cfg.base_url, "--token", "wrong")
        assert wrong.returncode == 2 and "401" in wrong.stderr, wrong
        for r in (ok, full, missing, wrong):
            assert TOKEN not in r.stderr
        log = agent.log()

    # Logs: one JSON object per line (one line per event), the token nowhere, even at debug.
    assert TOKEN not in log
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert lines, "the agent logged nothing"
    for ln in lines:
        event = json.loads(ln)
        assert {"ts", "level", "logger", "msg"} <= set(event), ln


@contextmanager
def running_agent_with_token(cfg: AgentConfig) -> Iterator[AgentProcess]:
    """running_agent waits on /readyz, which the token now guards: wait with the token."""
    with AgentProcess(cfg) as agent:

        def up() -> bool:
            if not agent.alive():
                raise AssertionError(f"agent exited:\n{agent.log()}")
            try:
                return _get(cfg.base_url + "/readyz", TOKEN)[0] == 200
            except OSError:
                return False

        poll(up, 15.0, what="/readyz 200 with the token")
        yield agent


def test_without_token_file_the_endpoint_is_open(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    with running_agent(cfg):
        # A token sent to an endpoint that needs none is ignored, not refused.
        assert _get(cfg.base_url + "/healthz", "anything")[0] == 200
        assert _health_cli(cfg.base_url, "--token", "anything").returncode in (0, 1)


def test_sighup_rotates_the_token(broker: Broker, upstream_broker: Broker, tmp_path: Path) -> None:
    cfg = _token_config(tmp_path, broker, upstream_broker)
    with running_agent_with_token(cfg) as agent:
        new = TOKEN[::-1]
        (tmp_path / "health.token").write_text(new + "\n")
        agent.send(signal.SIGHUP)
        poll(lambda: "config reloaded" in agent.log(), what="reload")
        assert poll(
            lambda: _get(cfg.base_url + "/healthz", new)[0] == 200, timeout=3.0, what="new token"
        )
        assert _get(cfg.base_url + "/healthz", TOKEN)[0] == 401
        assert new not in agent.log()


# -- board figures /metrics renders when the board exposes them ----------------------------------


def _health_doc(**system: Any) -> dict[str, Any]:
    return {
        "status": "ok",
        "reasons": [],
        "agent": "a",
        "version": __version__,
        "config": "0" * 12,
        "uptime_s": 1.0,
        "local": {"connected": True},
        "upstream": {"connected": True, "last_ack_age_s": None},
        "buffer": {"batches": 0, "bytes": 4096, "oldest_age_s": None},
        "counters": {},
        "system": {
            "cpu_percent": 1.0,
            "mem_percent": 2.0,
            "disk_free_bytes": 3,
            "temperature_c": None,
            "throttled": None,
            **system,
        },
    }


def test_metrics_carry_the_temperature_when_the_board_has_one() -> None:
    assert (
        _metrics(render_metrics(_health_doc(temperature_c=48.3)))["edge_agent_temperature_celsius"]
        == 48.3
    )
    assert "edge_agent_temperature_celsius" not in _metrics(render_metrics(_health_doc()))


def test_metrics_carry_the_pi_throttling_flags_when_the_board_has_them() -> None:
    m = _metrics(render_metrics(_health_doc(throttled="0x50005")))
    assert m["edge_agent_throttled_flags"] > 0
    assert "edge_agent_throttled_flags" not in _metrics(render_metrics(_health_doc()))

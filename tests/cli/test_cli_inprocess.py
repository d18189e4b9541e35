"""The command lines' main() functions in-process: argument handling, exit codes and
what they print, without a subprocess in between (the process tests in test_cli.py
check the same commands as a user runs them)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import __version__
from edge_agent.cli import control
from edge_agent.cli.main import main
from firmware_bridge.cli import main as bridge_main
from tests.helpers.agent_harness import AgentProcess, healthz, write_config
from tests.helpers.brokers import Broker, free_port


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"edge-agent {__version__}"
    for argv in (
        [],
        ["bogus"],
        ["check"],
        ["start", "-c", "x", "--timeout", "0"],
        ["consume", "--broker", "nohost", "--db", "x"],
        ["demo", "--rate", "fast"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
        assert "usage:" in capsys.readouterr().err, argv


def test_check_ok_and_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, 1883, 1884, health=False)
    assert main(["check", "-c", str(cfg.path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{cfg.path}: ok") and cfg.agent_id in out
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.path.read_text() + "\n[agent2]\nx = 1\n")
    assert main(["check", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(bad))}:\d+:", err), err  # FILE:LINE
    assert main(["check", "-c", str(tmp_path / "missing.toml")]) == 2


def test_scaffold_writes_a_config_that_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "new"
    assert main(["scaffold", str(out_dir)]) == 0
    written = sorted(p.name for p in out_dir.iterdir())
    assert any(n.endswith(".toml") for n in written) and any(
        n.endswith(".service") for n in written
    )
    toml = next(p for p in out_dir.iterdir() if p.name.endswith(".toml"))
    capsys.readouterr()
    assert main(["check", "-c", str(toml)]) == 0, capsys.readouterr().err
    assert main(["scaffold", str(out_dir)]) != 0  # never overwrites


def test_status_stop_and_health_without_an_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, 1883, 1884)
    assert main(["status", "-c", str(cfg.path)]) == 3
    assert "not running" in capsys.readouterr().out
    assert main(["stop", "-c", str(cfg.path)]) == 0
    assert main(["health", f"127.0.0.1:{free_port()}", "--timeout", "2"]) == 2
    assert "unreachable" in capsys.readouterr().err


def test_health_and_status_of_a_running_agent(
    tmp_path: Path, broker: Broker, upstream_broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        want = healthz(cfg.base_url)
        assert main(["health", "-c", str(cfg.path)]) == {"ok": 0, "degraded": 1}[want["status"]]
        doc = json.loads(capsys.readouterr().out)
        assert doc["agent"] == cfg.agent_id and doc["config"] == want["config"]
        assert main(["health", cfg.base_url + "/", "--timeout", "5"]) in (0, 1)
        assert json.loads(capsys.readouterr().out)["agent"] == cfg.agent_id
        # `run` in the foreground writes the pid file `status` reads, as `start` does.
        assert main(["status", "-c", str(cfg.path)]) == 0
        out = capsys.readouterr().out
        assert f"pid {agent.pid}" in out, out
        m = re.search(r"^health: (\w+)", out, re.M)
        assert m is not None and m.group(1) == healthz(cfg.base_url)["status"], out


def test_consume_refuses_bad_flags_before_connecting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = str(tmp_path / "c.db")
    assert main(["consume", "--broker", "127.0.0.1:1", "--db", db, "--ca-file", "x"]) == 2
    assert "needs --tls" in capsys.readouterr().err
    assert main(["consume", "--broker", "127.0.0.1:1", "--db", db, "--topic", "a/#/b"]) == 2
    assert "--topic" in capsys.readouterr().err
    assert main(["consume", "--broker", "127.0.0.1:1", "--db", db, "--share", "a/b"]) == 2
    assert "--share" in capsys.readouterr().err
    # SPEC 6: a bad --db is a usage error (2), said before any connection is tried
    for bad in ("mysql://u@h/db", "sqlite://"):
        assert main(["consume", "--broker", "127.0.0.1:1", "--db", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("edge-agent consume: --db ") and "connecting" not in err, err


def test_bridge_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "bridge.toml"
    good.write_text('[source]\nkind = "udp"\nlisten = "127.0.0.1:5005"\n')
    assert bridge_main(["check", "-c", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok"
    bad = tmp_path / "bad.toml"
    bad.write_text('[source]\nkind = "carrier-pigeon"\n')
    assert bridge_main(["check", "-c", str(bad)]) == 2
    assert re.search(rf"{re.escape(str(bad))}:2: source.kind", capsys.readouterr().err)
    with pytest.raises(SystemExit) as e:
        bridge_main(["nope"])
    assert e.value.code == 2


def test_bridge_cli_simulate_counts_what_it_sent(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        bridge_main(
            [
                "simulate",
                "--count",
                "25",
                "--rate",
                "500",
                "--seed",
                "4",
                "--noise",
                "0",
                "--dropout",
                "0",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    summary = json.loads(captured.err.strip().splitlines()[-1])
    assert summary["sent"] == 25 and summary["lost"] == 0 and summary["noisy"] == 0
    assert captured.out.strip().startswith("/dev/pts/")


@pytest.mark.slow
def test_demo_in_process_runs_the_whole_path_and_loses_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    names = ("", "edge_agent", "firmware_bridge")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        assert main(["demo", "--duration", "8", "--sensors", "2", "--rate", "4"]) == 0
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
    out = capsys.readouterr().out
    assert "batch seq=0 " in out, out
    m = re.search(
        r"^published (\d+) readings; upstream counted (\d+) in (\d+) batches; lost (\d+)$",
        out,
        re.M,
    )
    assert m is not None, out
    published, counted, batches, lost = map(int, m.groups())
    # 2 sensors x 4/s for 8 s, plus the simulated board's frames: certainly some.
    assert published > 0 and counted == published and lost == 0 and batches > 0, m.group(0)


# A child that installs its SIGTERM handling, says so, then waits for signals.
_CHILD = """
import signal, sys, time
mode = sys.argv[1]
terms = []
def on_term(*_):
    terms.append(1)
    if mode == "second" and len(terms) == 2:
        sys.exit(7)  # as the agent's second signal: stop at once
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "deaf" else on_term)
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


@pytest.mark.parametrize(("mode", "code"), [("second", 7), ("deaf", -signal.SIGKILL)])
def test_start_stops_an_agent_it_gave_up_on_for_sure(mode: str, code: int) -> None:
    # `start` once sent one SIGTERM, waited 10 s and said "stopped it" while the agent,
    # slow in its graceful stages on a loaded machine, still ran (seen in CI under load).
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        control.stop_child(proc, grace=0.5)
        assert proc.returncode == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

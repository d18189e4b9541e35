"""Issue 13, items 2, 3 and 7 (files): per-machine agent id, isolated child, private files."""

from __future__ import annotations

import hashlib
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.config import config_from_text, default_agent_id
from tests.helpers.agent_harness import (
    AgentProcess,
    agent_env,
    kill_from_pid_file,
    poll,
    write_config,
)
from tests.helpers.brokers import Broker

PIPE = '[[pipeline]]\nname = "p"\ntopics = ["s/#"]\n'


def test_agent_id_default_is_hostname_and_hash_of_the_machine_id(tmp_path: Path) -> None:
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    expected = hashlib.sha256(b"edge-agent:0123456789abcdef0123456789abcdef").hexdigest()[:8]
    assert default_agent_id("raspberrypi", str(mid)) == f"raspberrypi-{expected}"
    # cloned SD cards differ in their machine id, so their agent ids differ too
    mid.write_text("fedcba9876543210fedcba9876543210\n")
    assert default_agent_id("raspberrypi", str(mid)) != f"raspberrypi-{expected}"
    # the raw machine id is not published (machine-id(5)): only an app-specific hash
    assert "fedcba98" not in default_agent_id("raspberrypi", str(mid))


def test_agent_id_is_the_hostname_alone_without_a_machine_id(tmp_path: Path) -> None:
    assert default_agent_id("pi", str(tmp_path / "missing")) == "pi"
    (tmp_path / "empty").write_text("\n")
    assert default_agent_id("pi", str(tmp_path / "empty")) == "pi"


def test_config_default_uses_this_machine(tmp_path: Path) -> None:
    cfg = config_from_text(PIPE, str(tmp_path / "a.toml"), {})
    assert cfg.agent.id == default_agent_id(socket.gethostname())
    if Path("/etc/machine-id").is_file() and Path("/etc/machine-id").read_text().strip():
        assert cfg.agent.id != socket.gethostname()
        assert cfg.agent.id.startswith(socket.gethostname() + "-")


@pytest.mark.slow
def test_default_agent_id_is_shown_in_health(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path, broker.port, broker.port)
    # the same config without agent.id
    cfg.path.write_text(
        "\n".join(
            line for line in cfg.path.read_text().splitlines() if not line.startswith("id = ")
        )
    )
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        assert agent.health()["agent"] == default_agent_id(socket.gethostname())


@pytest.mark.slow
def test_start_does_not_import_a_module_planted_in_the_working_directory(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = write_config(tmp_path, broker.port, broker.port)
    cwd = tmp_path / "where-the-admin-stands"
    cwd.mkdir()
    marker = tmp_path / "pwned"
    (cwd / "edge_agent.py").write_text(
        f"open({str(marker)!r}, 'w').write('planted code ran')\nraise SystemExit(0)\n"
    )
    # The console script, as an admin runs it: its own directory, not the cwd, is on sys.path.
    script = Path(sys.executable).with_name("edge-agent")
    assert script.exists(), "the worktree's venv has no edge-agent script"
    try:
        proc = subprocess.run(
            [str(script), "start", "-c", str(cfg.path)],
            cwd=cwd,
            env=agent_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert not marker.exists(), "start imported edge_agent.py from the working directory"
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        kill_from_pid_file(cfg.state_dir)


@pytest.mark.slow
def test_state_dir_database_and_log_file_are_private(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path, broker.port, broker.port)
    script = Path(sys.executable).with_name("edge-agent")
    env = agent_env()
    try:
        proc = subprocess.run(
            # the usual umask, whatever the test runner's is
            ["/bin/sh", "-c", f'umask 022; exec "{script}" start -c "{cfg.path}"'],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
        assert mode(cfg.state_dir) == 0o700
        log_file = cfg.state_dir / "edge-agent.log"
        poll(lambda: log_file.exists() and log_file.stat().st_size > 0, 10, what="log lines")
        assert mode(log_file) == 0o600
        dbs = [
            p
            for p in cfg.state_dir.iterdir()
            if p.suffix in (".db", ".sqlite", ".sqlite3") or p.name.endswith(("-wal", "-shm"))
        ]
        assert dbs, list(cfg.state_dir.iterdir())
        for p in cfg.state_dir.iterdir():
            if p.is_file():
                assert mode(p) & 0o077 == 0, f"{p.name} is {oct(mode(p))}"
    finally:
        kill_from_pid_file(cfg.state_dir)


def test_log_file_rotates_by_size(tmp_path: Path) -> None:
    """`start`'s log file is size-bounded: a flood of log lines rotates it."""
    log_file = tmp_path / "edge-agent.log"
    code = textwrap.dedent(f"""
        import logging
        import edge_agent.logs as logs
        logs.LOG_FILE_MAX_BYTES = 10_000
        logs.setup_logging("info", "text", log_file={str(log_file)!r})
        for i in range(2000):
            logging.getLogger("edge_agent").info("line %d %s", i, "x" * 80)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["edge-agent.log", "edge-agent.log.1", "edge-agent.log.2"], files
    for name in files:
        assert (tmp_path / name).stat().st_size <= 10_000 + 200
    assert "line 1999" in log_file.read_text()

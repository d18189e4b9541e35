"""#11.4: one agent per state_dir, known by a lock the kernel releases on any death.

Real processes: agents run with `python -m edge_agent run`, decoys are plain
Python processes whose command line looks like an agent's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.agent_harness import AgentProcess, cli, pid_alive, poll, write_config
from tests.helpers.brokers import Broker, free_port


def _decoy() -> subprocess.Popen[bytes]:
    """A live process that is not an agent but whose command line says edge_agent."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "edge_agent", "run"],
        stdin=subprocess.DEVNULL,
    )


def test_a_second_agent_on_the_same_state_dir_exits_1_naming_the_holder(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        r = cli("run", "-c", str(cfg.path), timeout=30)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"pid {agent.pid}" in r.stderr and "state_dir" in r.stderr, r.stderr
        assert agent.alive()
        # The pid file is information only; the lock file names the holder too.
        assert (cfg.state_dir / "edge-agent.lock").read_text().split()[0] == str(agent.pid)


def test_a_stale_pid_file_naming_a_live_lookalike_blocks_nothing_and_is_never_signalled(
    tmp_path: Path,
) -> None:
    """A reused pid whose command line contains "edge_agent": `status` says not running,
    `stop` signals nothing, and a new agent starts (it used to be refused, or killed)."""
    cfg = write_config(tmp_path, free_port(), free_port())
    decoy = _decoy()
    try:
        cfg.state_dir.mkdir(parents=True)
        (cfg.state_dir / "edge-agent.pid").write_text(f"{decoy.pid}\n")
        (cfg.state_dir / "edge-agent.lock").write_text(f"{decoy.pid}\n")  # left by a dead agent
        r = cli("status", "-c", str(cfg.path))
        assert r.returncode == 3, r.stdout + r.stderr
        r = cli("stop", "-c", str(cfg.path))
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(0.2)
        assert decoy.poll() is None, "stop signalled a process that is not the agent"
    finally:
        decoy.kill()
        decoy.wait()


def test_start_status_stop_follow_the_lock_across_a_kill_9(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    agent = AgentProcess(cfg).start()
    try:
        agent.wait_ready()
        r = cli("status", "-c", str(cfg.path))
        assert r.returncode == 0 and str(agent.pid) in r.stdout, r.stdout + r.stderr
        agent.send(signal.SIGKILL)
        assert agent.proc is not None
        agent.proc.wait(10)
        # The kernel released the lock; the pid and lock files still name the dead pid.
        r = cli("status", "-c", str(cfg.path))
        assert r.returncode == 3, r.stdout + r.stderr
        r = cli("start", "-c", str(cfg.path), timeout=40)
        assert r.returncode == 0, r.stdout + r.stderr
        pid = int((cfg.state_dir / "edge-agent.lock").read_text().split()[0])
        assert pid != agent.pid and pid_alive(pid)
        r = cli("status", "-c", str(cfg.path))
        assert r.returncode == 0 and str(pid) in r.stdout, r.stdout + r.stderr
        r = cli("stop", "-c", str(cfg.path), timeout=70)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not pid_alive(pid)
    finally:
        agent.kill()
        lock = cfg.state_dir / "edge-agent.lock"
        if lock.exists():
            pid = int(lock.read_text().split()[0] or 0)
            if pid and pid != os.getpid() and pid_alive(pid) and pid != agent.pid:
                r = cli("status", "-c", str(cfg.path))
                if r.returncode == 0:
                    os.kill(pid, signal.SIGKILL)


def test_agents_racing_for_one_state_dir_leave_exactly_one_running(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    """A check-then-write pid guard races; the lock does not."""
    cfg = write_config(tmp_path, broker.port, upstream_broker.port, health=False)
    agents = [AgentProcess(cfg).start() for _ in range(3)]
    try:
        poll(lambda: sum(a.alive() for a in agents) == 1, timeout=30, what="exactly one agent left")
        time.sleep(1.0)
        assert sum(a.alive() for a in agents) == 1
        assert sorted(a.proc.returncode for a in agents if a.proc and not a.alive()) == [1, 1]
    finally:
        for a in agents:
            a.kill()

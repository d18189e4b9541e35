"""start / stop / status: the agent as a background process, from the shell.

Who runs is decided by the state dir's lock (lock.py), not by a pid file. `start`
spawns `run` (daemon.py) in a new session and waits for the sd_notify READY=1
datagram it sends once subscribed on the local broker: the same signal systemd's
Type=notify waits for. `health` and the health lines of `status` are
health_client.py's; `run` and `health` are importable from here too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.cli.daemon import run
from edge_agent.cli.health_client import health, print_health_summary
from edge_agent.cli.lock import read_pid
from edge_agent.config import load_config
from edge_agent.errors import EdgeAgentError

__all__ = ["health", "run", "start", "status", "stop", "stop_child"]

LOG_NAME = "edge-agent.log"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not running.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def start(config_path: str, timeout: float = START_TIMEOUT) -> int:
    cfg = load_config(config_path)
    from edge_agent.safety import config_warnings

    for warning in config_warnings(cfg):
        print(f"edge-agent: warning: {warning}", file=sys.stderr)
    pid = read_pid(cfg)
    if pid is not None:
        print(f"edge-agent already running (pid {pid})")
        return 0
    state_dir = Path(cfg.agent.state_dir)
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = state_dir / LOG_NAME
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        log_out = open(fd, "ab")  # noqa: SIM115 (handed to the child)
    except OSError as exc:
        raise EdgeAgentError(f"state_dir {state_dir}: {exc.strerror}") from exc
    import tempfile  # here, not at the top: `run` starts faster without it

    with tempfile.TemporaryDirectory(prefix="edge-agent-start-") as tmp:
        sock_path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": sock_path}
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        # -I (isolated mode): neither the working directory nor PYTHON* variables nor
        # the user's site-packages go on sys.path, so a file edge_agent.py planted where
        # an admin runs `sudo edge-agent start` is not imported as root. The child logs
        # to the same file through a size-bounded rotating handler; its stdout and
        # stderr (a crash before logging is set up) go there too.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-m",
                "edge_agent",
                "run",
                "-c",
                config_path,
                "--log-file",
                str(log_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        log_out.close()
        deadline = time.monotonic() + timeout
        with sock:
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    data = sock.recv(4096)
                    if b"READY=1" in data.split(b"\n"):
                        print(f"edge-agent started (pid {proc.pid})")
                        return 0
                code = proc.poll()
                if code is not None:
                    raise EdgeAgentError(
                        f"exited with code {code} before it was ready: {_log_tail(state_dir)}"
                    )
        stop_child(proc)
        raise EdgeAgentError(
            f"not ready within {timeout:g} s (not subscribed on the local broker "
            f"{cfg.local.host}:{cfg.local.port}); stopped it. {_log_tail(state_dir)}"
        )


def stop_child(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop an agent `start` gave up on, for sure: SIGTERM (its graceful stages), then
    after `grace` s a second SIGTERM (it stops at once), then SIGKILL (safe: nothing
    acknowledged is lost across a kill -9). Returns once the process is gone."""
    for stop in (proc.terminate, proc.terminate, proc.kill):
        stop()
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _log_tail(state_dir: Path, lines: int = 5) -> str:
    try:
        text = (state_dir / LOG_NAME).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def stop(config_path: str) -> int:
    cfg = load_config(config_path)
    pid = read_pid(cfg)
    if pid is None:
        print("edge-agent is not running")
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if read_pid(cfg) != pid:  # the lock is released as the agent's process ends
            # ... a moment before the process is gone: wait for that too (briefly,
            # as the pid may be reused once the lock no longer vouches for it).
            gone = time.monotonic() + 2.0
            while _alive(pid) and time.monotonic() < gone:
                time.sleep(0.01)
            print(f"edge-agent stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    raise EdgeAgentError(f"pid {pid} did not stop within {STOP_TIMEOUT:.0f} s")


def status(config_path: str) -> int:
    cfg = load_config(config_path)
    pid = read_pid(cfg)
    if pid is None:
        print("edge-agent is not running")
        return 3
    print(f"edge-agent is running (pid {pid})")
    addr = cfg.health.address
    if addr is not None:
        print_health_summary(cfg)
    return 0

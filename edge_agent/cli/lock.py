"""The state dir's lock: who runs is decided by it, not by a pid file.

`run` holds an exclusive `flock` on `<state_dir>/edge-agent.lock` for the life of
its process (the kernel releases it on any death, kill -9 included), so two agents
never share a state dir, and `start`, `stop` and `status` ask the lock whether an
agent runs. The holder writes its pid into the lock file; the pid file
`<state_dir>/edge-agent.pid` is information only.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from edge_agent.config import Config
from edge_agent.errors import EdgeAgentError

__all__ = [
    "LOCK_NAME",
    "PID_NAME",
    "acquire_lock",
    "lock_file",
    "lock_holder",
    "pid_file",
    "read_pid",
]

PID_NAME = "edge-agent.pid"
LOCK_NAME = "edge-agent.lock"


def pid_file(cfg: Config) -> Path:
    return Path(cfg.agent.state_dir) / PID_NAME


def lock_file(cfg: Config) -> Path:
    return Path(cfg.agent.state_dir) / LOCK_NAME


def read_pid(cfg: Config) -> int | None:
    """The pid of the agent holding this config's state_dir lock, or None."""
    return lock_holder(lock_file(cfg))


def lock_holder(path: Path, wait: float = 1.0) -> int | None:
    """The pid that holds the lock at `path`, None when nobody does.

    A pid file can name a dead process or, after pid reuse, an unrelated one; the
    lock cannot: it is held exactly while its agent lives.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no agent ever ran on this state dir (or we cannot see it)
    try:
        try:
            # A probe: taken and given back at once. A shared lock, so two probes
            # never collide; an agent starting in between retries (acquire_lock).
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        deadline = time.monotonic() + wait
        while True:  # held: its holder wrote its pid right after taking it
            pid = _pid_in(fd)
            if pid is not None:
                return pid
            if time.monotonic() >= deadline:
                raise EdgeAgentError(f"{path} is locked by a process that did not write its pid")
            time.sleep(0.02)
    finally:
        os.close(fd)


def _pid_in(fd: int) -> int | None:
    try:
        pid = int(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def acquire_lock(state_dir: Path, wait: float = 0.5) -> int:
    """Take the state dir's exclusive lock for the life of this process; return its fd.

    Raises EdgeAgentError naming the holder when another agent has it.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise EdgeAgentError(
            f"state_dir {state_dir}: not writable by this user (cannot create its lock file: {exc.strerror})"
        ) from exc
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            # Held: by another agent, or for an instant by a status/stop probe.
            if time.monotonic() >= deadline:
                holder = _pid_in(fd)
                os.close(fd)
                who = f"pid {holder}" if holder is not None else "another process"
                raise EdgeAgentError(
                    f"already running as {who}: it holds the lock on state_dir {state_dir}"
                ) from None
            time.sleep(0.02)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd

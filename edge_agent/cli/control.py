"""run / start / stop / status / health: the agent's life cycle from the shell.

Who runs is decided by a lock, not by a pid file: `run` holds an exclusive
`flock` on `<state_dir>/edge-agent.lock` for the life of its process (the kernel
releases it on any death, kill -9 included), so two agents never share a state
dir, and `start`, `stop` and `status` ask the lock whether an agent runs. The
holder writes its pid into the lock file; the pid file `<state_dir>/edge-agent.pid`
is information only. `start` spawns `run` in a new session and waits for the
sd_notify READY=1 datagram it sends once subscribed on the local broker: the
same signal systemd's Type=notify waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.config import Config, load_config
from edge_agent.errors import EdgeAgentError

__all__ = ["health", "run", "start", "status", "stop"]

TOKEN_ENV = "EDGE_HEALTH_TOKEN"  # `health`'s bearer token (not EDGE_AGENT_: those are config keys)
PID_NAME = "edge-agent.pid"
LOCK_NAME = "edge-agent.lock"
LOG_NAME = "edge-agent.log"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


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


# -- run ----------------------------------------------------------------------


def run(config_path: str, log_file: str | None = None) -> int:
    """`log_file`: log there, rotated by size (what `start` asks for), instead of stderr."""
    cfg = load_config(config_path)
    from edge_agent.logs import setup_logging

    # Everything the agent creates (state dir, databases, pid and log files) is
    # private to its user: 0700 directories, 0600 files.
    os.umask(0o077)
    setup_logging(cfg.agent.log_level, cfg.agent.log_format, log_file=log_file)
    from edge_agent.safety import config_warnings

    for warning in config_warnings(cfg):
        logging.getLogger("edge_agent").warning("%s", warning)
    # Held until this process ends (never closed: the kernel releases it at exit).
    acquire_lock(Path(cfg.agent.state_dir))
    return asyncio.run(_run(cfg))


async def _run(cfg: Config) -> int:
    from edge_agent.runtime import Agent

    agent = Agent(cfg)
    tune_gc()
    loop = asyncio.get_running_loop()
    signals = {"n": 0}

    def on_stop() -> None:
        signals["n"] += 1
        if signals["n"] > 1:  # a second signal: stop now, without the graceful stages
            os._exit(1)
        agent.request_stop()

    loop.add_signal_handler(signal.SIGTERM, on_stop)
    loop.add_signal_handler(signal.SIGINT, on_stop)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    pf = pid_file(cfg)
    try:
        await agent.run(lambda: _write_pid(pf))
    finally:
        with contextlib.suppress(OSError):
            if pf.read_text().split()[0] == str(os.getpid()):
                pf.unlink()
    return 0


GC_GEN0_THRESHOLD = 20_000  # CPython's default is 700


def tune_gc() -> None:
    """The cyclic garbage collector, tuned for a daemon that holds many live objects.

    With CPython's defaults (700, 10, 10) the agent spent ~13 % of its CPU in the
    collector on the bench's 5k-60k readings/s ramp with 1,000 keys (0.95 s of
    7.1 s; full collections of ~0.1 s each): queued messages live long enough to be
    promoted, and every full collection walked the modules, the config and the
    window state again. Objects alive now (imports, config, pipelines) are moved
    out of the collector's sight (gc.freeze), and a young collection waits for
    20,000 net new container objects instead of 700: 0.1 s on the same ramp. The
    hot path makes no reference cycles, so garbage waits at most that long.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)


def _write_pid(pf: Path) -> None:
    tmp = pf.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(pf)


# -- start / stop / status --------------------------------------------------------


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
        _, body = _fetch(_base_url(cfg.health.listen) + "/healthz", _config_token(cfg), 3.0)
        if isinstance(body, dict):
            reasons = "; ".join(body.get("reasons") or []) or "-"
            print(f"health: {body.get('status')} ({reasons})")
            c = body.get("counters", {})
            print("counters: " + ", ".join(f"{k}={v}" for k, v in c.items()))
            print(_buffer_line(body.get("buffer", {})))
        else:
            print(f"health: unreachable ({body})")
    return 0


# -- health -------------------------------------------------------------------------


def _base_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = host or "127.0.0.1"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    return f"http://{host}:{port}"


def health_url(url: str | None, config_path: str | None) -> str:
    if url:
        if "://" not in url:
            url = "http://" + url
        url = url.rstrip("/")
        return url if url.endswith("/healthz") else url + "/healthz"
    listen = "127.0.0.1:9100"
    if config_path:
        cfg = load_config(config_path)
        listen = cfg.health.listen or listen
    return _base_url(listen) + "/healthz"


def _config_token(cfg: Config) -> str | None:
    """The bearer token the config's endpoint requires (health.token_file), if readable."""
    path = getattr(cfg.health, "token_file", "")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None  # not ours to read (e.g. root-only): the endpoint answers 401


def _fetch(url: str, token: str | None, timeout: float) -> tuple[int, object]:
    # here, not at the top: urllib.request brings http.client and email (~8 MiB, ~20 ms),
    # which `run` never needs
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except (ValueError, OSError):
            return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return 0, str(reason)


def health(
    url: str | None,
    config_path: str | None,
    token: str | None,
    timeout: float,
    token_file: str | None = None,
) -> int:
    target = health_url(url, config_path)
    if token is None and token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:  # its message would quote a byte of the file
            raise EdgeAgentError(f"--token-file {token_file}: not UTF-8 text") from None
        except OSError as exc:
            raise EdgeAgentError(f"--token-file {token_file}: {exc.strerror}") from None
    if token is None:
        # Not on the command line, where every user's `ps` shows it.
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is None and config_path:
        token = _config_token(load_config(config_path))
    _, body = _fetch(target, token, timeout)
    if not isinstance(body, dict) or "status" not in body:
        print(f"{target}: unreachable or not an edge-agent ({body})", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2))
    return {"ok": 0, "degraded": 1}.get(str(body["status"]), 2)


def _buffer_line(buf: dict[str, Any]) -> str:
    """What waits to go upstream. `bytes` is the database's size on disk, which an empty
    buffer has too (tables, free pages): shown as that, never as data waiting."""
    size = buf.get("bytes")
    on_disk = f" (database {_human_size(size)} on disk)" if isinstance(size, int) else ""
    batches = buf.get("batches")
    if not batches:
        return f"buffer: empty, nothing waiting to go upstream{on_disk}"
    age = buf.get("oldest_age_s")
    oldest = f", the oldest {age:.0f} s old" if isinstance(age, (int, float)) else ""
    return f"buffer: {batches} batch(es) waiting to go upstream{oldest}{on_disk}"


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.1f} MiB"

"""The agent as systemd sees it: sd_notify datagrams on a real socket (Type=notify, WatchdogSec=)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.agent_harness import REPO, agent_env, http, poll, write_config
from tests.helpers.brokers import Broker


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def seen(self, line: str) -> bool:
        return any(line in m.split("\n") for m in self.drain())

    def close(self) -> None:
        self.sock.close()


def test_ready_status_watchdog_reloading_stopping(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    notify = NotifySocket(tmp_path / "notify")
    env = {**agent_env(), "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg.path)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll(lambda: notify.seen("READY=1"), 15, what="READY=1")
        # READY only once subscribed: /readyz agrees at that moment.
        assert http(cfg.base_url + "/readyz")[0] == 200
        assert any(m.startswith("STATUS=") for m in notify.drain())

        # Watchdog pings from the event loop at half the interval (0.2 s): they keep coming,
        # and never faster than that (a loaded machine may send fewer, never more).
        def pings() -> int:
            return sum(m == "WATCHDOG=1" for m in notify.drain())

        t0, before = time.monotonic(), pings()
        poll(lambda: pings() >= before + 3, 30, what="three more WATCHDOG=1")
        n, elapsed = pings() - before, time.monotonic() - t0
        assert n <= elapsed / 0.2 + 2, (n, elapsed)

        def readies() -> int:
            return sum("READY=1" in m.split("\n") for m in notify.drain())

        n_ready = readies()
        proc.send_signal(signal.SIGHUP)
        poll(
            lambda: any(m.startswith("RELOADING=1") for m in notify.drain()), 10, what="RELOADING=1"
        )
        poll(lambda: readies() > n_ready, 10, what="READY=1 after the reload")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert "STOPPING=1" in notify.drain()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()

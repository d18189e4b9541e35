"""`edge-agent demo` as a new user runs it: in a terminal, stopped with Ctrl-C.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group; the test
starts the demo in a group of its own and signals that group the same way.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.brokers import find_mosquitto

pytestmark = pytest.mark.slow


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (the demo's brokers do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(path) in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


class DemoRun:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "demo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # its own process group, as a shell gives a job
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"demo exited before {needle!r}:\n{''.join(self.output)}")
            self.output.append(line)
            if needle in line:
                return
        pytest.fail(f"no {needle!r} within {timeout} s:\n{''.join(self.output)}")

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait_exit(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        while (line := self.lines.get(timeout=5)) is not None:
            self.output.append(line)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for entry in _processes_under(self.tmp):  # brokers in their own sessions
            os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)
        self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def demo_run(tmp_path: Path) -> Iterator[DemoRun]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run .ci/run or apt-get install mosquitto")
    run = DemoRun(tmp_path)
    try:
        yield run
    finally:
        run.kill()


@pytest.mark.parametrize(
    "when", ["batch seq=", ">>> upstream broker stopped"], ids=["running", "during-the-outage"]
)
def test_ctrl_c_drains_and_exits_within_seconds_with_nothing_lost(
    demo_run: DemoRun, tmp_path: Path, when: str
) -> None:
    demo_run.wait_for_line(when)
    time.sleep(0.5)  # mid-stream: sensors are publishing, windows are open
    demo_run.ctrl_c()
    t0 = time.monotonic()
    rc = demo_run.wait_exit(timeout=10)
    took = time.monotonic() - t0
    out = "".join(demo_run.output)
    assert rc == 0, out
    assert took < 10, out
    totals = out.strip().splitlines()[-1]
    assert totals.startswith("published ") and totals.endswith("; lost 0"), out
    published = int(totals.split()[1])
    assert published > 0 and f"upstream counted {published} " in totals, totals
    # Its brokers are gone too, though they ran in sessions of their own.
    assert not _processes_under(tmp_path), _processes_under(tmp_path)
    # Nothing in the output alarms a first-time user; what went wrong would be an ERROR.
    for word in ("WARNING", "ERROR", "Traceback", "overloaded"):
        assert word not in out, out


def test_demo_logging_keeps_a_hosts_hiccup_out_of_the_output(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from edge_agent import runtime
    from edge_agent.cli.demo import _demo_logging

    names = ("edge_agent", "firmware_bridge")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        _demo_logging()
        with caplog.at_level(logging.DEBUG, logger="nothing-else"):
            # What the agent logs when the event loop was late for a moment.
            runtime.log.warning("ingest overloaded (event loop 0.8 s late, 0 uncommitted records)")
            runtime.log.error("state dir not writable")
        assert [r.levelname for r in caplog.records] == ["ERROR"]
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

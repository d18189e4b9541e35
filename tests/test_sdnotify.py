"""sd_notify over real AF_UNIX datagram sockets (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.sdnotify import SdNotifier, watchdog_interval


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = _receiver(path)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    sock = _receiver(b"\0" + name.encode())
    yield "@" + name, sock
    sock.close()


def test_exact_datagrams_on_path_socket(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, rx = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with SdNotifier() as notifier:  # picks $NOTIFY_SOCKET up at construction
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.status("buffering: 3 batches\nupstream down")
        assert notifier.watchdog()
        assert notifier.stopping()
        assert notifier.notify(STATUS="x", ERRNO=5)
        got = [rx.recv(4096) for _ in range(5)]
    assert got == [
        b"READY=1",
        b"STATUS=buffering: 3 batches upstream down",  # newline cannot split the field
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"STATUS=x\nERRNO=5",
    ]


def test_abstract_socket(abstract_socket: tuple[str, socket.socket]) -> None:
    name, rx = abstract_socket
    notifier = SdNotifier(name)
    assert notifier.ready()
    assert notifier.watchdog()
    assert [rx.recv(4096), rx.recv(4096)] == [b"READY=1", b"WATCHDOG=1"]
    notifier.close()


def test_reloading_carries_monotonic_usec(path_socket: tuple[str, socket.socket]) -> None:
    path, rx = path_socket
    notifier = SdNotifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = rx.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.close()


def test_one_cached_nonblocking_socket(path_socket: tuple[str, socket.socket]) -> None:
    path, rx = path_socket
    notifier = SdNotifier(path)
    notifier.watchdog()
    first = notifier._sock
    notifier.watchdog()
    assert first is not None and notifier._sock is first
    assert first.getblocking() is False
    assert rx.recv(64) == rx.recv(64) == b"WATCHDOG=1"
    notifier.close()
    assert notifier._sock is None


def test_noop_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SdNotifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.reloading() is False
    assert notifier._sock is None  # not even a socket is made


def test_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A socket path nobody listens on: ENOENT/ECONNREFUSED is logged at debug, not raised.
    caplog.set_level("DEBUG", logger="edge_agent.sdnotify")
    notifier = SdNotifier(str(tmp_path / "nobody-listens"))
    assert notifier.ready() is False
    assert "sd_notify" in caplog.text
    assert SdNotifier("vsock:2:1234").ready() is False  # unsupported scheme: off
    notifier.close()


def test_survives_receiver_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    notifier = SdNotifier(path)
    assert notifier.ready() is False  # not there yet
    rx = _receiver(path)
    assert notifier.watchdog()  # the cached socket still works once it appears
    assert rx.recv(64) == b"WATCHDOG=1"
    rx.close()
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "500"}, 0.00025),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_watchdog_interval_reads_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 2.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None

"""The bridge's serial line settings, applied to a real tty (a pty pair stands in for
the USB serial device): what `[source]` asks for is what the kernel then reports, and
bytes arrive raw (no echo, no line editing, no CR/LF mangling)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
from collections.abc import Iterator

import pytest

from firmware_bridge.config import parse_config
from firmware_bridge.transports import make_source
from tests.helpers.agent_harness import apoll


@contextlib.contextmanager
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


CSIZE = {5: termios.CS5, 6: termios.CS6, 7: termios.CS7, 8: termios.CS8}


@pytest.mark.parametrize(
    ("baud", "data_bits", "parity", "stop_bits"),
    [
        (9600, 8, "none", 1),
        (115200, 7, "even", 1),
        (57600, 7, "odd", 2),
        (1200, 5, "none", 2),
        (921600, 6, "even", 2),
    ],
)
async def test_serial_settings_reach_the_tty(
    baud: int, data_bits: int, parity: str, stop_bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Linux pty keeps speed and stop bits but forces CS8 and no parity (pty_set_termios),
    # so what was asked for is also recorded on its way into the real tcsetattr.
    asked: list[list[int]] = []
    real = termios.tcsetattr

    def recording(fd: int, when: int, attrs: list) -> None:
        asked.append(list(attrs))
        real(fd, when, attrs)

    monkeypatch.setattr(termios, "tcsetattr", recording)
    with pty_pair() as (master, path):
        cfg = parse_config(
            f'[source]\nkind = "serial"\npath = "{path}"\nbaud = {baud}\ndata_bits = {data_bits}\n'
            f'parity = "{parity}"\nstop_bits = {stop_bits}\n',
            "serial.toml",
        )
        got: list[bytes] = []
        opened: list[int] = []
        source = make_source(
            cfg.source, lambda data, _who: got.append(bytes(data)), lambda: opened.append(1)
        )
        task = asyncio.create_task(source.run())
        try:
            await apoll(lambda: source.is_open, 10, what="device open")
            iflag, oflag, cflag, lflag, ispeed, ospeed, _cc = termios.tcgetattr(master)
            want_speed = getattr(termios, f"B{baud}")
            assert (ispeed, ospeed) == (want_speed, want_speed)
            assert bool(cflag & termios.CSTOPB) == (stop_bits == 2)
            a_iflag, _o, a_cflag = asked[-1][0], asked[-1][1], asked[-1][2]
            assert a_cflag & termios.CSIZE == CSIZE[data_bits]
            assert bool(a_cflag & termios.PARENB) == (parity != "none")
            assert bool(a_cflag & termios.PARODD) == (parity == "odd")
            assert bool(a_iflag & termios.INPCK) == (parity != "none")  # parity errors checked
            assert cflag & termios.CREAD and cflag & termios.CLOCAL
            assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
            assert not iflag & (termios.ICRNL | termios.IXON) and not oflag & termios.OPOST
            # Raw bytes: CR, control characters and no newline all arrive as they were sent.
            os.write(master, b"id=a v=1\r\n\x03\x11partial")
            await apoll(
                lambda: b"".join(got) == b"id=a v=1\r\n\x03\x11partial", 10, what="raw bytes"
            )
            assert opened == [1] and source.opens == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_pty_source_keeps_the_ptys_own_settings_but_is_raw() -> None:
    with pty_pair() as (master, path):
        before = termios.tcgetattr(master)
        cfg = parse_config(
            f'[source]\nkind = "pty"\npath = "{path}"\nbaud = 9600\nparity = "odd"\n', "p.toml"
        )
        source = make_source(cfg.source, lambda *_: None, lambda: None)
        task = asyncio.create_task(source.run())
        try:
            await apoll(lambda: source.is_open, 10, what="pty open")
            _i, _o, cflag, lflag, ispeed, _os, _cc = termios.tcgetattr(master)
            assert ispeed == before[4]  # the serial keys are not applied to a pty
            assert not cflag & termios.PARENB
            assert not lflag & termios.ICANON
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

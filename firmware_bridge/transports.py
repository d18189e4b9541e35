"""Byte sources: a serial device, a pseudo-terminal, stdin and a UDP port.

Each source calls `on_data(chunk, default_id)` on the event loop for every chunk it
reads and `on_open()` each time a device is (re)opened, so the frame path can treat
the first line after an open as possibly torn. Serial and pty devices that vanish
(USB unplug: read fails with EIO, or returns EOF on hang-up) are closed and reopened
with exponential backoff, without a restart. Opening a serial port by path each time
means a udev /dev/serial/by-id/... symlink follows the board to its new ttyACMn.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import sys
import termios
from collections.abc import Callable
from typing import Any

from edge_agent.backoff import Backoff
from firmware_bridge.config import SourceSection

__all__ = ["FdSource", "UdpSource", "configure_tty", "make_source"]

log = logging.getLogger("firmware_bridge.transports")

OnData = Callable[[bytes, str], None]
OnOpen = Callable[[], None]

_READ_SIZE = 65536
_GONE = (errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF)


def configure_tty(fd: int, cfg: SourceSection | None) -> None:
    """Raw 8N1-style termios: no echo, no line editing, no CR/LF mangling.

    With cfg, also the serial line settings (baud, data bits, parity, stop bits); a
    pty ignores those. VMIN=1/VTIME=0 with O_NONBLOCK: read returns what is there.
    """
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
        | termios.IXANY
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB | termios.PARODD | termios.CSTOPB)
    cflag |= termios.CREAD | termios.CLOCAL
    if cfg is None:
        cflag |= termios.CS8
    else:
        cflag |= {5: termios.CS5, 6: termios.CS6, 7: termios.CS7, 8: termios.CS8}[cfg.data_bits]
        if cfg.parity != "none":
            cflag |= termios.PARENB | (termios.PARODD if cfg.parity == "odd" else 0)
            # a byte with a parity error is discarded; the frame's checksum then fails
            iflag |= termios.INPCK | termios.IGNPAR
        if cfg.stop_bits == 2:
            cflag |= termios.CSTOPB
        if hasattr(termios, "CRTSCTS"):
            cflag &= ~termios.CRTSCTS
        ispeed = ospeed = getattr(termios, f"B{cfg.baud}")
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class FdSource:
    """A serial device, a pty slave, or stdin, read with loop.add_reader."""

    def __init__(self, cfg: SourceSection, on_data: OnData, on_open: OnOpen) -> None:
        self.cfg = cfg
        self.kind = cfg.kind
        self.path = "<stdin>" if cfg.kind == "stdin" else cfg.path
        self.default_id = "stdin" if cfg.kind == "stdin" else os.path.basename(cfg.path)
        self.is_open = False
        self.opens = 0
        self.bytes_in = 0
        self._on_data = on_data
        self._on_open = on_open
        self._lost: asyncio.Future[str] | None = None

    async def run(self) -> None:
        """Read until cancelled (stdin: until EOF), reopening a lost device with backoff."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.cfg.reopen_min, self.cfg.reopen_max)
        while True:
            try:
                fd = self._open()
            except OSError as e:
                if self.kind == "stdin":
                    raise
                delay = backoff.next()
                log.debug("cannot open %s: %s; retrying in %.2fs", self.path, e, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self.opens += 1
            self.is_open = True
            if self.kind != "stdin":
                self._on_open()  # a pipe starts at its start; a device may be mid-line
            log.info("reading %s", self.path)
            self._lost = loop.create_future()
            try:
                try:
                    loop.add_reader(fd, self._readable, fd)
                except PermissionError:  # a regular file on stdin: epoll refuses those
                    await self._read_file(fd)
                    return
                why = await self._lost
            finally:
                self.is_open = False
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(fd)
                if self.kind != "stdin":
                    os.close(fd)
            if self.kind == "stdin":
                return  # EOF: the producer is done
            log.warning("lost %s (%s); reopening", self.path, why)
            await asyncio.sleep(backoff.next())

    def _open(self) -> int:
        if self.kind == "stdin":
            fd = sys.stdin.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.set_blocking(fd, False)
            return fd
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            configure_tty(fd, self.cfg if self.kind == "serial" else None)
            if self.kind == "serial":
                termios.tcflush(fd, termios.TCIFLUSH)  # bytes from before we were listening
        except (termios.error, OSError):
            os.close(fd)
            raise
        return fd

    def _readable(self, fd: int) -> None:
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(
                    errno.errorcode.get(e.errno, str(e)) if e.errno in _GONE else str(e)
                )
            return
        if not chunk:
            if self._lost is not None and not self._lost.done():
                self._lost.set_result("EOF")
            return
        self.bytes_in += len(chunk)
        self._on_data(chunk, self.default_id)

    async def _read_file(self, fd: int) -> None:
        while chunk := os.read(fd, _READ_SIZE):
            self.bytes_in += len(chunk)
            self._on_data(chunk, self.default_id)
            await asyncio.sleep(0)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, source: UdpSource) -> None:
        self.source = source

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.source.bytes_in += len(data)
        self.source.datagrams += 1
        # the sender's address is the default board id for frames without one
        self.source._on_data(data, addr[0])


class UdpSource:
    """A UDP port; every datagram holds one or more complete frames (on_data gets it whole)."""

    def __init__(self, cfg: SourceSection, on_data: OnData, on_open: OnOpen) -> None:
        self.cfg = cfg
        self.kind = "udp"
        self.path = cfg.listen
        self.is_open = False
        self.opens = 0
        self.bytes_in = 0
        self.datagrams = 0
        self.address: tuple[str, int] | None = None
        self._on_data = on_data
        self._on_open = on_open

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        host, _, port = self.cfg.listen.rpartition(":")
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(host.strip("[]") or "127.0.0.1", int(port))
        )
        self.address = transport.get_extra_info("sockname")[:2]
        self.opens += 1
        self.is_open = True
        log.info("listening on udp %s:%s", *self.address)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self.is_open = False
            transport.close()


def make_source(cfg: SourceSection, on_data: OnData, on_open: OnOpen) -> FdSource | UdpSource:
    if cfg.kind == "udp":
        return UdpSource(cfg, on_data, on_open)
    return FdSource(cfg, on_data, on_open)

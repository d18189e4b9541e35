"""The sd_notify(3) datagram protocol, by hand: no libsystemd, no extra dependency.

A notification is one AF_UNIX SOCK_DGRAM datagram of newline-separated
``KEY=VALUE`` lines sent to $NOTIFY_SOCKET. A leading ``@`` names a socket in the
abstract namespace (a NUL byte in ``sockaddr_un``). Without $NOTIFY_SOCKET every
call is a no-op, so the agent runs the same under systemd, in a container or in a
terminal. Nothing here raises: a lost notification must never stop the agent
(systemd's own sd_notify() returns an error the caller is expected to ignore).
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["SdNotifier", "watchdog_interval"]

_log = logging.getLogger(__name__)


class SdNotifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING/RELOADING to the service manager."""

    __slots__ = ("_address", "_sock")

    def __init__(self, socket_path: str | None = None) -> None:
        # Read the environment at call time, not at import time (a default
        # argument would freeze whatever $NOTIFY_SOCKET was when we were imported).
        if socket_path is None:
            socket_path = os.environ.get("NOTIFY_SOCKET")
        self._address: str | bytes | None
        if not socket_path:
            self._address = None
        elif socket_path.startswith("@"):
            # Abstract namespace: "@name" is "\0name" on the wire (sd_notify(3)).
            self._address = b"\0" + socket_path[1:].encode()
        elif socket_path.startswith("/"):
            self._address = socket_path
        else:
            # systemd 254+ also allows "vsock:CID:PORT"; not for a Pi service.
            _log.debug("sd_notify: unsupported NOTIFY_SOCKET %r, notifications off", socket_path)
            self._address = None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        """Send one datagram of ``KEY=value`` lines; True when it was sent."""
        if self._address is None or not fields:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        return self._send(message.encode())

    def ready(self) -> bool:
        return self._send(b"READY=1")

    def status(self, text: str) -> bool:
        # A newline would start a new (bogus) assignment in the datagram.
        return self.notify(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self._send(b"WATCHDOG=1")

    def stopping(self) -> bool:
        return self._send(b"STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload requires (systemd.service(5)).

        Send ``ready()`` once the new config is in force. Older managers and plain
        Type=notify ignore the timestamp and show the unit as "reloading".
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, data: bytes) -> bool:
        if self._address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a busy manager: a full queue drops
                # this notification (EAGAIN), and the next one tries again.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, self._address)
        except OSError as exc:
            _log.debug("sd_notify %r failed: %s", data[:40], exc)
            return False
        return True

    def __enter__(self) -> SdNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when off.

    As sd_watchdog_enabled(3): $WATCHDOG_PID, when set, must be our pid, else the
    watchdog is meant for another process (e.g. a parent shell script).
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC", "")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    # Half the timeout, the margin systemd's documentation recommends.
    return usec / 2_000_000

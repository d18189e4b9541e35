"""System figures for /healthz and /metrics: CPU, memory, disk, temperature, throttling.

`SystemProbe.sample()` is called from the event loop on every health request, so it
caches for about a second; each refresh is a handful of cheap /proc and sysfs reads.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

__all__ = ["SystemProbe", "existing_parent", "state_dir_writable"]

# psutil.sensors_temperatures() names, most meaningful first: the Pi's SoC sensor,
# then Intel / AMD package sensors, then generic ACPI zones.
_PREFERRED_SENSORS = (
    "cpu_thermal",
    "cpu-thermal",
    "soc_thermal",
    "coretemp",
    "k10temp",
    "zenpower",
    "cpu",
    "acpitz",
)
_THERMAL_ZONE0 = Path("/sys/class/thermal/thermal_zone0/temp")
# Raspberry Pi firmware throttling flags (what `vcgencmd get_throttled` reports).
_PI_THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")


def existing_parent(path: Path) -> Path:
    """`path` or its nearest existing ancestor (the state dir may not exist yet)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def state_dir_writable(path: Path) -> bool:
    """Whether the agent can write in `path` (access(2) also reports a read-only mount)."""
    p = Path(path)
    if p.is_dir():
        return os.access(p, os.W_OK | os.X_OK)
    return os.access(existing_parent(p), os.W_OK | os.X_OK)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_temperature() -> float | None:
    """CPU temperature in °C, or None when the system does not expose one."""
    sensors_fn = getattr(psutil, "sensors_temperatures", None)  # absent on macOS/Windows
    if sensors_fn is not None:
        try:
            sensors = sensors_fn()
        except (OSError, RuntimeError, ValueError):
            sensors = {}
        for name in (*_PREFERRED_SENSORS, *sorted(sensors)):
            for entry in sensors.get(name, ()):
                t = _finite(entry.current)
                if t is not None:
                    return t
    raw = _read_text(_THERMAL_ZONE0)
    if raw:
        t = _finite(raw)
        if t is not None:
            return t / 1000.0  # sysfs reports millidegrees
    return None


class SystemProbe:
    """Whole-system figures, refreshed at most once per `ttl` seconds."""

    __slots__ = ("_cache", "_clock", "_sampled_at", "_state_dir", "_ttl")

    def __init__(
        self,
        state_dir: Path,
        *,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state_dir = Path(state_dir)
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, Any] | None = None
        self._sampled_at = 0.0
        # The first non-blocking cpu_percent() call only sets the baseline (and
        # returns 0.0); prime it here so the first real sample means something.
        psutil.cpu_percent(interval=None)

    def sample(self) -> dict[str, Any]:
        """{cpu_percent, mem_percent, disk_free_bytes, temperature_c, throttled}; a fresh dict."""
        now = self._clock()
        if self._cache is None or now - self._sampled_at >= self._ttl:
            self._cache = self._measure()
            self._sampled_at = now
        return dict(self._cache)

    def _measure(self) -> dict[str, Any]:
        try:
            disk_free = int(psutil.disk_usage(str(existing_parent(self._state_dir))).free)
        except OSError:
            disk_free = 0
        cpu = _finite(psutil.cpu_percent(interval=None)) or 0.0
        return {
            "cpu_percent": min(max(cpu, 0.0), 100.0),
            "mem_percent": float(psutil.virtual_memory().percent),
            "disk_free_bytes": disk_free,
            "temperature_c": read_temperature(),
            "throttled": _read_text(_PI_THROTTLED) or None,
        }

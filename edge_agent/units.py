"""Durations, sizes and rate limits as written in the config (SPEC 1).

Grammar (documented here because the SPEC only shows examples):

- **Duration**: one or more `<number><unit>` terms, units `ms`, `s`, `m`, `h`, `d`
  (lower case; `m` is minutes), e.g. `"250ms"`, `"10s"`, `"1h30m"`, `"1.5s"`.
  A bare number, as a TOML number or a string without unit, is seconds.
  Never negative, always finite.
- **Size**: a whole number of bytes (TOML integer or digit string), or
  `<number><unit>` with `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024) or `KB`,
  `MB`, `GB`, `TB` (powers of 1000); units are case-insensitive. The result must be
  a whole number of bytes (`"1.5KiB"` is fine, `"0.1KiB"` is not).
- **Rate limit**: `""` (none), or one or two comma-separated terms: `N/s` batches
  per second, `N<size unit>/s` bytes per second; e.g. `"20/s, 64KiB/s"`.

Each parser raises ValueError whose message is the config error's "problem" text.
Arithmetic is done on integers so `"250ms"` is exactly `250 / 1000`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

__all__ = [
    "RateLimit",
    "format_duration",
    "format_size",
    "listen_address",
    "parse_duration",
    "parse_rate_limit",
    "parse_size",
    "show_value",
]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Token-bucket limits for the uplink; None = that dimension is unlimited."""

    batches_per_s: float | None = None  # "N/s"
    bytes_per_s: float | None = None  # "N<unit>/s"

    @property
    def burst_batches(self) -> float | None:
        """One second's worth of batches, at least one (SPEC 1)."""
        return None if self.batches_per_s is None else max(1.0, self.batches_per_s)

    @property
    def burst_bytes(self) -> float | None:
        """One second's worth of bytes."""
        return self.bytes_per_s


def show_value(v: object) -> str:
    """A config value as the user wrote it in TOML, for `got ...` in messages."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    iso = getattr(v, "isoformat", None)
    return iso() if iso is not None else repr(v)


# A decimal number without sign or exponent, split so we can stay in integers.
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_TERM = re.compile(rf"\s*({_NUM})\s*(ms|s|m|h|d)\s*")
_BARE_NUMBER = re.compile(rf"\s*({_NUM})\s*")
# unit -> (numerator, denominator) in seconds
_DURATION_UNITS = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1), "d": (86400, 1)}
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(rf"\s*({_NUM})\s*([A-Za-z]*)\s*")


def _decimal(text: str) -> tuple[int, int]:
    """ "1.25" -> (125, 100): an exact fraction with a power-of-ten denominator."""
    whole, _, frac = text.partition(".")
    return int((whole or "0") + frac), 10 ** len(frac)


def parse_duration(value: str | int | float) -> float:
    """`"250ms"`, `"10s"`, `"1h30m"`, `"7d"` or a bare number of seconds -> float seconds.

    The agent's config refuses bare numbers before this (config/converters.py, SPEC 1);
    the bridge's config takes them as seconds.
    """
    bad = f'expected a duration such as "10s" or "250ms" (units ms, s, m, h, d), got {show_value(value)}'
    if isinstance(value, bool):
        raise ValueError(bad)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, got {show_value(value)}")
        if value < 0:
            raise ValueError(f"must not be negative, got {show_value(value)}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(bad)
    m = _BARE_NUMBER.fullmatch(value)
    if m:
        n, d = _decimal(m.group(1))
        return n / d
    num, den, pos = 0, 1, 0
    while pos < len(value):
        m = _DURATION_TERM.match(value, pos)
        if m is None:
            raise ValueError(bad)
        n, d = _decimal(m.group(1))
        un, ud = _DURATION_UNITS[m.group(2)]
        n, d = n * un, d * ud
        num, den = num * d + n * den, den * d
        pos = m.end()
    if pos == 0:
        raise ValueError(bad)
    return num / den  # int / int is correctly rounded


def parse_size(value: str | int) -> int:
    """`"512KiB"`, `"256MiB"`, `"1GiB"`, `"64kB"` or a whole number of bytes -> int bytes."""
    bad = f'expected a size such as "64KiB" or a whole number of bytes, got {show_value(value)}'
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(bad)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    m = _SIZE.fullmatch(value)
    if m is None:
        raise ValueError(bad)
    unit = _SIZE_UNITS.get(m.group(2).lower() or "b")
    if unit is None:
        raise ValueError(f"{bad} (units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")
    n, d = _decimal(m.group(1))
    q, r = divmod(n * unit, d)
    if r:
        raise ValueError(f"{show_value(value)} is not a whole number of bytes")
    return q


def parse_rate_limit(value: str) -> RateLimit | None:
    """`""` -> None; `"20/s"`, `"64KiB/s"` or `"20/s, 64KiB/s"` -> RateLimit."""
    bad = (
        'expected a rate limit such as "20/s" (batches), "64KiB/s" (bytes) or '
        f'"20/s, 64KiB/s", got {show_value(value)}'
    )
    if not isinstance(value, str):
        raise ValueError(bad)
    if not value.strip():
        return None
    terms = value.split(",")
    if len(terms) > 2:
        raise ValueError(f"{bad}; at most two terms")
    batches: float | None = None
    nbytes: float | None = None
    for term in terms:
        amount, slash, per = term.strip().rpartition("/")
        if not slash or per.strip() != "s" or not amount.strip():
            raise ValueError(bad)
        amount = amount.strip()
        m = _SIZE.fullmatch(amount)
        if m is None:
            raise ValueError(bad)
        n, d = _decimal(m.group(1))
        if m.group(2):  # bytes per second
            unit = _SIZE_UNITS.get(m.group(2).lower())
            if unit is None:
                raise ValueError(bad)
            if nbytes is not None:
                raise ValueError(f"gives the bytes-per-second limit twice: {show_value(value)}")
            nbytes = n * unit / d
        else:
            if batches is not None:
                raise ValueError(f"gives the batches-per-second limit twice: {show_value(value)}")
            batches = n / d
        if n == 0:
            raise ValueError(f"a rate must be greater than 0, got {show_value(term.strip())}")
    return RateLimit(batches_per_s=batches, bytes_per_s=nbytes)


def format_duration(seconds: float) -> str:
    """Shortest exact spelling in the grammar above (`0.25` -> `"250ms"`)."""
    for unit, (n, d) in (("d", (86400, 1)), ("h", (3600, 1)), ("m", (60, 1)), ("s", (1, 1))):
        q = seconds * d / n
        if q == int(q) and q >= 1:
            return f"{int(q)}{unit}"
    ms = seconds * 1000
    if ms == int(ms):
        return f"{int(ms)}ms"
    return f"{seconds!r}s"


def min_buffer_bytes(max_batch_bytes: int) -> int:
    """The smallest `buffer.max_bytes` that works at all: 128 KiB + 2 x max_batch_bytes.

    The store keeps the WAL within 2 x 64 KiB at this size and the -shm index
    takes 32 KiB (edge_agent.buffer.store); the rest holds SQLite's own pages and
    a full batch (256 KiB with the default 64 KiB batches).
    """
    return 128 * 1024 + 2 * max_batch_bytes


def format_size(n: int) -> str:
    """Largest binary unit that divides `n` exactly (`65536` -> `"64KiB"`)."""
    for unit, mult in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


def listen_address(listen: str) -> tuple[str, int] | None:
    """A validated "host:port" listen setting as (host, port); "" = disabled (None).

    The host may be an IPv6 literal in brackets ("[::1]:9100"); an empty host binds
    to loopback.
    """
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)

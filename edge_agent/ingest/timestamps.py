"""RFC 3339 timestamps in readings' `ts` (SPEC 2), for the payload decoder (decode.py).

`YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)` with `T`/`t` and `Z`/`z`; any number
of fraction digits; a leap second `:60` counts as the next second's start.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final

__all__ = ["parse_rfc3339"]

# RFC 3339 section 5.6 date-time; re.ASCII so that \d is 0-9 only.
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?(?:[Zz]|([+-])(\d\d):(\d\d))",
    re.ASCII,
)
_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@lru_cache(maxsize=4096)
def parse_rfc3339(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 date-time with offset, or None if it is not one.

    Cached: devices that stamp whole seconds repeat strings, and every pipeline
    taking a message parses the same `ts`.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not 1 <= month <= 12 or day < 1:
        return None
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day > _DAYS_IN_MONTH[month] + leap or hour > 23 or minute > 59 or second > 60:
        return None
    t = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    sign = m.group(8)
    if sign is not None:
        oh, om = int(m.group(9)), int(m.group(10))
        if oh > 23 or om > 59:
            return None
        offset = oh * 3600 + om * 60
        t = t - offset if sign == "+" else t + offset
    frac = m.group(7)
    return t + float(frac) if frac is not None else float(t)

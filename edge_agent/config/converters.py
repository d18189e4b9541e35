"""Value converters of the config schema: each checks one value and says why it is wrong."""

from __future__ import annotations

import re
from collections.abc import Callable

from edge_agent.config.model import PipelineConfig
from edge_agent.custom_decoders import resolve_custom_decoder
from edge_agent.errors import ConfigError
from edge_agent.units import (
    RateLimit,
    parse_duration,
    parse_rate_limit,
    parse_size,
    show_value,
)

# --------------------------------------------------------------------------- validation


class _Problem(Exception):
    """A value is wrong; str(self) is the `problem` part of the message.

    `index` names the offending element of an array, so the line can point at it.
    """

    def __init__(self, problem: str, index: int | None = None) -> None:
        super().__init__(problem)
        self.index = index


def _kind(v: object) -> str:
    """A value's TOML type in words, for messages that must not show the value."""
    kinds = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (list, "an array"),
        (dict, "a table"),
    )
    return next((name for t, name in kinds if isinstance(v, t)), "a date or time")


def _string(v: object) -> str:
    if not isinstance(v, str):
        raise _Problem(f"expected a string, got {show_value(v)}")
    return v


def _nonempty(v: object) -> str:
    if not _string(v):
        raise _Problem("must not be empty")
    return v  # type: ignore[return-value]


def _host(v: object) -> str:
    s = _nonempty(v)
    if any(c.isspace() for c in s):
        raise _Problem(f"expected a host name or address, got {show_value(s)}")
    return s


def _integer(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def conv(v: object) -> int:
        if type(v) is not int:
            raise _Problem(f"expected an integer, got {show_value(v)}")
        if v < lo or (hi is not None and v > hi):
            rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise _Problem(f"must be {rng}, got {v}")
        return v

    return conv


def _boolean(v: object) -> bool:
    if type(v) is not bool:
        raise _Problem(f"expected true or false, got {show_value(v)}")
    return v


# SPEC 1: "Durations in config are strings such as "250ms", "10s" ...; sizes are
# strings ... or plain integers (bytes)": a duration carries its unit.
_UNITLESS = re.compile(r"\s*[0-9.]*\s*")


def _duration(positive: bool, hi: float | None = None) -> Callable[[object], float]:
    def conv(v: object) -> float:
        if not isinstance(v, str) or _UNITLESS.fullmatch(v):
            raise _Problem(
                f'expected a duration such as "10s" or "250ms" (a string with its unit:'
                f" ms, s, m, h, d), got {show_value(v)}"
            )
        try:
            d = parse_duration(v)
        except ValueError as e:
            raise _Problem(str(e)) from None
        if positive and d <= 0:
            raise _Problem(f"must be longer than 0, got {show_value(v)}")
        if hi is not None and d > hi:
            raise _Problem(f"must be at most {hi:g} seconds, got {show_value(v)}")
        return d

    return conv


def _optional_duration(v: object) -> float | None:
    if v == "":
        return None
    return _duration(positive=True)(v)


def _size(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def conv(v: object) -> int:
        try:
            n = parse_size(v)  # type: ignore[arg-type]
        except ValueError as e:
            raise _Problem(str(e)) from None
        if n < lo:
            raise _Problem(f"must be at least {lo} bytes, got {show_value(v)}")
        if hi is not None and n > hi:
            raise _Problem(f"must be at most {hi} bytes, got {show_value(v)}")
        return n

    return conv


def _choice(*options: str) -> Callable[[object], str]:
    listed = ", ".join(f'"{o}"' for o in options[:-1]) + f' or "{options[-1]}"'

    def conv(v: object) -> str:
        if v not in options:
            raise _Problem(f"expected {listed}, got {show_value(v)}")
        return str(v)

    return conv


def _log_level(v: object) -> str:
    s = _string(v).lower()
    if s not in ("debug", "info", "warning", "error"):
        raise _Problem(f'expected "debug", "info", "warning" or "error", got {show_value(v)}')
    return s


def _rate_limit(v: object) -> RateLimit | None:
    try:
        return parse_rate_limit(v)  # type: ignore[arg-type]
    except ValueError as e:
        raise _Problem(str(e)) from None


def _fraction(v: object) -> float:
    """A number from 0 to 1 (an integer 0 or 1 too)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise _Problem(f"expected a number from 0 to 1, got {show_value(v)}")
    return float(v)


def _key_rate(v: object) -> float | None:
    """`max_key_rate`: "" (no cap) or "N/s" readings per second per key."""
    text = _string(v).strip()
    if not text:
        return None
    num, sep, unit = text.partition("/")
    try:
        rate = float(num)
    except ValueError:
        rate = -1.0
    if sep != "/" or unit.strip() != "s" or not rate > 0 or rate == float("inf"):
        raise _Problem(f'expected "" or readings per second such as "10/s", got {show_value(v)}')
    return rate


def _agent_id(v: object) -> str:
    s = _nonempty(v)
    bad = [c for c in ("+", "#", "\0") if c in s]
    if bad:
        raise _Problem(f"must not contain {show_value(bad[0])}: it goes into MQTT topic names")
    return s


def _topic_name(v: object) -> str:
    """A topic to publish to, `{agent}` still in it (MQTT 5 4.7: no wildcards, 1..65535 bytes)."""
    s = _string(v)
    probe = s.replace("{agent}", "a")
    if "+" in probe or "#" in probe:
        raise _Problem(f"a topic to publish to cannot hold wildcards, got {show_value(s)}")
    if s.startswith("$"):
        raise _Problem(f'topics starting with "$" are reserved for the broker, got {show_value(s)}')
    _topic_bytes(s)
    return s


def _topic_bytes(s: str) -> None:
    if "\0" in s:
        raise _Problem(f"malformed topic {show_value(s)}: contains U+0000")
    try:
        n = len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Problem(f"malformed topic {show_value(s)}: not valid UTF-8") from None
    if n > 65535:
        raise _Problem(f"malformed topic {show_value(s[:20] + '...')}: longer than 65535 bytes")


def _topic_filter_problem(f: str) -> str | None:
    """Why `f` is not an MQTT 5 topic filter (4.7.1, 4.8.2), or None."""
    if not f:
        return "it is empty"
    try:
        _topic_bytes(f)
    except _Problem as e:
        return str(e).partition(": ")[2]
    levels = f.split("/")
    if levels[0] == "$share":
        # $share/{ShareName}/{filter}: ShareName one level, no wildcards (4.8.2)
        if len(levels) < 3 or not levels[1] or "+" in levels[1] or "#" in levels[1]:
            return 'a shared subscription is "$share/<name>/<filter>"'
        levels = levels[2:]
        if levels == [""]:
            return "the filter of a shared subscription is empty"
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return '"#" must be alone in the last level'
        if "+" in level and level != "+":
            return '"+" must be alone in its level'
    return None


def _topic_filters(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
        raise _Problem(f"expected an array of topic filters (strings), got {show_value(v)}")
    if not v:
        raise _Problem("needs at least one topic filter")
    for i, t in enumerate(v):
        why = _topic_filter_problem(t)
        if why:
            raise _Problem(f"malformed topic filter {show_value(t)}: {why}", i)
    return tuple(dict.fromkeys(v))  # a filter listed twice would deliver twice


_FIXED_AGGREGATES = ("count", "sum", "min", "max", "mean", "first", "last", "stddev")
_PERCENTILE = re.compile(r"p[1-9][0-9]?")


def _aggregates(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise _Problem(f"expected an array of aggregate names, got {show_value(v)}")
    seen: dict[str, None] = {}
    for i, a in enumerate(v):
        if a not in _FIXED_AGGREGATES and not _PERCENTILE.fullmatch(a):
            raise _Problem(
                f"unknown aggregate {show_value(a)} (expected count, sum, min, max, mean, "
                "first, last, stddev or pN with N in 1..99, e.g. p50)",
                i,
            )
        if a in seen:
            raise _Problem(f"aggregate {show_value(a)} is listed twice", i)
        seen[a] = None
    if "count" not in seen:  # SPEC 3: count is always present
        return ("count", *seen)
    return tuple(seen)


_DECODER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _format(v: object) -> str:
    s = _string(v)
    if s in ("json", "cbor", "auto"):
        return s
    # A custom decoder: "package.module:function" or an entry point in group
    # edge_agent.decoders. Resolved here, so a typo is refused with its line.
    if _DECODER.fullmatch(s) or _decoder_entry_point(s):
        try:
            resolve_custom_decoder(s)
        except ConfigError as e:
            raise _Problem(str(e)) from None
        return s
    raise _Problem(
        f'unknown format {show_value(s)} (expected "json", "cbor", "auto", a decoder '
        'written "package.module:function" or an entry point in group edge_agent.decoders)'
    )


def _decoder_entry_point(name: str) -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == name for ep in entry_points(group="edge_agent.decoders"))


# slots=True leaves no class attribute holding the default; ask the field.
_DEFAULT_SIZE: float = PipelineConfig.__dataclass_fields__["size"].default  # type: ignore[assignment]
_WINDOWS = ("tumbling", "sliding", "session", "count", "none")


def _window(v: object) -> str:
    s = _string(v)
    if s not in _WINDOWS:
        raise _Problem(
            f'unknown window {show_value(s)} (expected "tumbling", "sliding", "session", '
            '"count" or "none")'
        )
    return s


def _size_field(v: object) -> float | int:
    """Duration for time windows; the window kind decides later (an int stays an int)."""
    if type(v) is int:
        return v
    return _duration(positive=True)(v)


def _listen(v: object) -> str:
    s = _string(v)
    if s == "":
        return s
    bad = f'expected "host:port" (e.g. "127.0.0.1:9100", "[::1]:9100") or "", got {show_value(s)}'
    host, colon, port = s.rpartition(":")
    if not colon or not port.isdigit() or not port.isascii():
        raise _Problem(bad)
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")) or ":" not in host:
            raise _Problem(bad)
    elif ":" in host:
        raise _Problem(f'an IPv6 address goes in brackets, e.g. "[::1]:9100", got {show_value(s)}')
    if any(c.isspace() for c in host):
        raise _Problem(bad)
    if not 1 <= int(port) <= 65535:
        raise _Problem(f"port must be between 1 and 65535, got {show_value(s)}")
    return s


_PATH = object()  # marker: a path, resolved against the config file's directory
_FILE = object()  # marker: "" or an existing file, resolved likewise

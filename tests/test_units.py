"""SPEC 1: the config file, its errors, defaults, overrides and hash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import (
    RateLimit,
)
from edge_agent.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_rate_limit,
    parse_size,
)

# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("0s", 0.0),
        ("1.5s", 1.5),
        (".5m", 30.0),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        (" 10s ", 10.0),
        ("10", 10.0),
        ("2.5", 2.5),
        (3, 3.0),
        (0.1, 0.1),
        ("100ms", 0.1),
        ("1ms", 0.001),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["", "s", "10x", "10 seconds", "-1s", "1e3s", "10S", "5M", "1h-30m", "ms", True, [1]]
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)  # type: ignore[arg-type]


def test_parse_duration_rejects_negative_and_infinite_numbers() -> None:
    with pytest.raises(ValueError, match="must not be negative, got -1"):
        parse_duration(-1)
    with pytest.raises(ValueError, match="expected a finite duration, got inf"):
        parse_duration(float("inf"))


@given(st.integers(0, 10**12), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_duration_terms_are_exact(n: int, unit: str) -> None:
    num, den = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1), "d": (86400, 1)}[unit]
    assert parse_duration(f"{n}{unit}") == n * num / den


@given(st.integers(0, 10**9), st.integers(0, 10**6))
def test_duration_sums_compound_terms(s: int, ms: int) -> None:
    assert parse_duration(f"{s}s{ms}ms") == (s * 1000 + ms) / 1000


@given(st.integers(0, 10**10))
def test_format_duration_round_trips_whole_milliseconds(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("512KiB", 512 * 1024),
        ("256MiB", 256 * 2**20),
        ("1GiB", 2**30),
        ("2TiB", 2 * 2**40),
        ("64KB", 64000),
        ("64kB", 64000),
        ("1MB", 10**6),
        ("1mib", 2**20),
        ("100B", 100),
        ("100", 100),
        ("1.5KiB", 1536),
        ("1 MiB", 2**20),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize(
    "bad", ["", "KiB", "10 kibibytes", "-1KiB", "1e3", "1.5", 1.5, True, "10Kb/s"]
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)  # type: ignore[arg-type]


def test_parse_size_rejects_fractional_bytes_and_negative_ints() -> None:
    with pytest.raises(ValueError, match=r'"0\.1KiB" is not a whole number of bytes'):
        parse_size("0.1KiB")
    with pytest.raises(ValueError, match="must not be negative, got -5"):
        parse_size(-5)


@given(st.integers(0, 2**50))
def test_format_size_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n
    assert parse_size(str(n)) == n == parse_size(n)


@given(
    st.integers(0, 2**20),
    st.sampled_from([("KiB", 1024), ("MiB", 2**20), ("GiB", 2**30), ("KB", 1000)]),
)
def test_size_units_multiply(n: int, unit: tuple[str, int]) -> None:
    assert parse_size(f"{n}{unit[0]}") == n * unit[1]


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("", None),
        ("   ", None),
        ("20/s", RateLimit(20.0, None)),
        ("0.5/s", RateLimit(0.5, None)),
        ("64KiB/s", RateLimit(None, 65536.0)),
        ("1000B/s", RateLimit(None, 1000.0)),
        ("1MiB/s", RateLimit(None, 2**20)),
        ("20/s, 64KiB/s", RateLimit(20.0, 65536.0)),
        ("64KiB/s,20/s", RateLimit(20.0, 65536.0)),
        (" 20 / s ", RateLimit(20.0, None)),
    ],
)
def test_parse_rate_limit(text: str, limit: RateLimit | None) -> None:
    assert parse_rate_limit(text) == limit


@pytest.mark.parametrize(
    "bad",
    [
        "20",
        "20/m",
        "/s",
        "x/s",
        "20/s,",
        "1/s, 2/s, 3/s",
        "1KiB/s, 2KiB/s",
        "0/s",
        "0KiB/s",
        "20 per s",
    ],
)
def test_parse_rate_limit_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rate_limit(bad)


@given(st.integers(1, 10**6), st.integers(1, 10**6))
def test_rate_limit_round_trips_both_terms(batches: int, kib: int) -> None:
    limit = parse_rate_limit(f"{batches}/s, {kib}KiB/s")
    assert limit == RateLimit(float(batches), float(kib * 1024))


def test_rate_limit_burst_is_one_seconds_worth_at_least_one_batch() -> None:
    assert RateLimit(0.5, None).burst_batches == 1.0
    assert RateLimit(20.0, 100.0).burst_batches == 20.0
    assert RateLimit(20.0, 100.0).burst_bytes == 100.0
    assert RateLimit(None, None).burst_batches is None

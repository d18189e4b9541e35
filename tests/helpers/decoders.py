"""Custom payload decoders the tests load by name (`format = "tests.helpers.decoders:NAME"`,
the `edge_agent.decoders` entry point): well-behaved, broken and odd ones."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

ARRIVAL = 1_700_000_000.5  # the arrival time test_decode gives: 2023-11-14T22:13:20.5Z


def triple_decoder(topic: str, payload: bytes) -> Iterator[Any]:
    """Test decoder: lines 'key ts value'; '-' for no ts; 'map' lines yield mappings."""
    for line in payload.decode().splitlines():
        kind, key, ts, value = line.split()
        when = None if ts == "-" else (float(ts) if ts[0].isdigit() else ts)
        if kind == "map":
            yield {"key": key, "value": float(value), **({} if when is None else {"ts": when})}
        else:
            yield (key, when, float(value))


def broken_decoder(topic: str, payload: bytes) -> list[Any]:
    raise ValueError("cannot read this")


def half_broken_decoder(topic: str, payload: bytes) -> Iterator[Any]:
    yield (topic, None, 1.0)
    raise KeyError("second")


def odd_decoder(topic: str, payload: bytes) -> list[Any]:
    return [
        ("k", None, True),  # bool value
        ("k", None, "5"),  # string value
        ("k", None, math.inf),
        ("k", True, 1.0),  # bool ts
        ("", None, 1.0),  # empty key
        (5, None, 1.0),  # non-string key
        ("k", None),  # too short
        {"key": "k"},  # no value
        42,
        {"key": "m", "value": Fraction(1, 4), "ts": 1_700_000_000_000},  # ms ts, Real value
        ["l", "2023-11-14T22:13:20Z", 2],
        ("k", 9e8, 1.0),  # too old
        ("k", "2023-11-14T22:13:20", 1.0),  # no offset
        ("k", ARRIVAL + 1e6, 1.0),  # future
    ]


def empty_decoder(topic: str, payload: bytes) -> list[Any]:
    return []


not_callable = 42

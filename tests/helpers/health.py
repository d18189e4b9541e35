"""Shared by test_health_status.py, test_health_server.py (split from test_health.py)."""

from __future__ import annotations

import re
from typing import Any

# ---------------------------------------------------------------------------------
# render_metrics(): parse the text back

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], v)


def parse_prometheus(
    text: str,
) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """A strict little parser for the 0.0.4 text format: (types, samples)."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"duplicate HELP for {name}"
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"duplicate TYPE for {name}"
            assert kind in ("counter", "gauge")
            types[name] = kind
        else:
            m = _SAMPLE.fullmatch(line)
            assert m is not None, f"bad sample line {line!r}"
            name, _, body, value = m.groups()
            assert name in types and name in helps, f"{name} lacks HELP/TYPE"
            labels: list[tuple[str, str]] = []
            pos = 0
            while body and pos < len(body):
                lm = _LABEL.match(body, pos)
                assert lm is not None, f"bad labels {body!r}"
                labels.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
            key = (name, frozenset(labels))
            assert key not in samples
            samples[key] = float(value)
    return types, samples


def full_health(**over: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "status": "ok",
        "reasons": [],
        "agent": "pi-7",
        "version": "0.1.0",
        "config": "0123456789ab",
        "uptime_s": 12.5,
        "local": {"connected": True},
        "upstream": {"connected": False, "last_ack_age_s": None},
        "buffer": {"batches": 3, "bytes": 40960, "oldest_age_s": None},
        "counters": {
            "readings_in": 10,
            "readings_rejected": 1,
            "readings_late": 2,
            "windows_emitted": 4,
            "batches_sent": 5,
            "batches_dropped": 0,
        },
        "system": {
            "cpu_percent": 3.25,
            "mem_percent": 41.0,
            "disk_free_bytes": 123456789,
            "temperature_c": None,
        },
    }
    h.update(over)
    return h


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return samples[(name, frozenset())]


class Agent:
    """Stand-in for the runtime: mutable health and readiness."""

    def __init__(self) -> None:
        self.health = full_health()
        self.ready = True
        self.calls = 0

    def get_health(self) -> dict[str, Any]:
        self.calls += 1
        return self.health

    def is_ready(self) -> bool:
        return self.ready

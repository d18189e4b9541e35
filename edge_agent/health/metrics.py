"""The /healthz figures in the Prometheus text exposition format 0.0.4 (SPEC 5).

Counters: `edge_agent_<counter>_total` for every key of health["counters"], and per
pipeline `edge_agent_pipeline_<counter>_total{pipeline="..."}` when health has
"pipelines". Per-pipeline series get their own family so that summing a family never
counts a reading twice and the agent-wide series keeps its plain, label-free name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["CONTENT_TYPE", "escape_label_value", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STATUS_UP = {"ok": 1.0, "degraded": 0.5, "failing": 0.0}
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")

# (metric suffix, help, system key)
_SYSTEM_GAUGES = (
    ("cpu_percent", "Whole-system CPU utilisation, 0 to 100.", "cpu_percent"),
    ("memory_percent", "Whole-system memory in use, 0 to 100.", "mem_percent"),
    ("disk_free_bytes", "Free bytes on the state directory's file system.", "disk_free_bytes"),
    ("temperature_celsius", "CPU temperature.", "temperature_c"),
)


def _metric_name(part: str) -> str:
    name = _NAME_BAD.sub("_", str(part))
    return name if name and not name[0].isdigit() else f"_{name}"


def escape_label_value(value: str) -> str:
    """Escape a label value: backslash, double quote and line feed (exposition format)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: Any) -> str | None:
    """The sample value as text, or None when there is no number to report."""
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))  # "edge_agent_up 1", not "1.0"
    return repr(v)


def _section(health: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = health.get(key)
    return value if isinstance(value, Mapping) else {}


class _Writer:
    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def gauge(self, name: str, help_text: str, value: Any) -> None:
        text = _number(value)
        if text is not None:
            self.family(name, "gauge", help_text)
            self.lines.append(f"{name} {text}")


def _throttled_flags(value: Any) -> int | None:
    """The Pi's get_throttled value ("0x50005" or a number) as an int, None if unknown."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip(), 0)
    except ValueError:
        return None


def render_metrics(health: Mapping[str, Any]) -> str:
    """Render a /healthz dict as Prometheus text; missing figures are left out."""
    w = _Writer()
    counters = _section(health, "counters")
    for key in sorted(counters):
        text = _number(counters[key])
        if text is None:
            continue
        name = f"edge_agent_{_metric_name(key)}_total"
        w.family(name, "counter", f"Total {key} since the agent started.")
        w.lines.append(f"{name} {text}")

    pipelines = _section(health, "pipelines")
    per_counter: dict[str, list[tuple[str, str]]] = {}
    for pipeline in sorted(pipelines, key=str):
        figures = pipelines[pipeline]
        if not isinstance(figures, Mapping):
            continue
        for key, value in figures.items():
            text = _number(value)
            if text is not None:
                per_counter.setdefault(str(key), []).append((str(pipeline), text))
    for key in sorted(per_counter):
        name = f"edge_agent_pipeline_{_metric_name(key)}_total"
        w.family(name, "counter", f"Total {key} per pipeline since the agent started.")
        for pipeline, text in per_counter[key]:
            w.lines.append(f'{name}{{pipeline="{escape_label_value(pipeline)}"}} {text}')

    status = health.get("status")
    w.gauge(
        "edge_agent_up",
        "1 when status is ok, 0.5 when degraded, 0 when failing.",
        _STATUS_UP.get(status, 0.0) if isinstance(status, str) else 0.0,
    )
    w.gauge("edge_agent_uptime_seconds", "Seconds since the agent started.", health.get("uptime_s"))
    local = _section(health, "local")
    upstream = _section(health, "upstream")
    buffer = _section(health, "buffer")
    w.gauge(
        "edge_agent_local_connected",
        "1 while connected to the local broker.",
        bool(local.get("connected")),
    )
    w.gauge(
        "edge_agent_upstream_connected",
        "1 while connected to the upstream broker.",
        bool(upstream.get("connected")),
    )
    w.gauge(
        "edge_agent_upstream_last_ack_age_seconds",
        "Age of the newest upstream acknowledgement of a batch.",
        upstream.get("last_ack_age_s"),
    )
    w.gauge("edge_agent_buffer_batches", "Batches in the buffer.", buffer.get("batches", 0))
    w.gauge("edge_agent_buffer_bytes", "Size of the buffer on disk.", buffer.get("bytes", 0))
    oldest = buffer.get("oldest_age_s")
    w.gauge(
        "edge_agent_buffer_oldest_age_seconds",
        "Age of the oldest buffered batch, 0 when the buffer is empty.",
        0 if oldest is None else oldest,
    )

    system = _section(health, "system")
    for suffix, help_text, key in _SYSTEM_GAUGES:
        w.gauge(f"edge_agent_{suffix}", help_text, system.get(key))
    flags = _throttled_flags(system.get("throttled"))
    if flags is not None:
        w.gauge(
            "edge_agent_throttled_flags",
            "Raspberry Pi firmware get_throttled bits (0 = never throttled or under-volted).",
            flags,
        )

    labels = ",".join(
        f'{label}="{escape_label_value(str(health.get(label) or ""))}"'
        for label in ("version", "config", "agent")
    )
    w.family("edge_agent_info", "gauge", "Agent identity: version, config hash and agent id.")
    w.lines.append(f"edge_agent_info{{{labels}}} 1")
    w.lines.append("")
    return "\n".join(w.lines)

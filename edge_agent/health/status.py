"""Health status from facts (SPEC 5): a pure function, no clock, no I/O.

The runtime gathers `HealthFacts` (monotonic times) and `evaluate` turns them into
`("ok" | "degraded" | "failing", reasons)`. Failing wins over degraded; reasons list
every cause, failing ones first, one string each, and are empty exactly when ok.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DROP_DEGRADED_S",
    "LOCAL_GRACE_S",
    "HealthFacts",
    "evaluate",
]

# SPEC 5: "failing = ... local broker unreachable past 30 s" and "a local broker not
# reached within 30 s of start"; "degraded ... for 60 s after the buffer last dropped".
LOCAL_GRACE_S = 30.0
DROP_DEGRADED_S = 60.0


@dataclass(frozen=True, slots=True)
class HealthFacts:
    now: float  # monotonic seconds
    started_at: float  # monotonic
    local_connected: bool
    local_ever_connected: bool
    local_lost_since: float | None  # when the local broker was lost (start time if never reached)
    upstream_connected: bool
    upstream_lost_since: float | None  # when upstream was lost (None: use start time)
    last_drop_at: float | None  # when the buffer last dropped a batch
    state_dir_writable: bool
    disk_full: bool


def _whole_seconds(since: float, now: float) -> int:
    """Elapsed whole seconds, never negative (a fact stamped just after `now` reads 0)."""
    elapsed = now - since
    return int(elapsed) if elapsed > 0 else 0


def evaluate(f: HealthFacts) -> tuple[str, list[str]]:
    """Return (status, reasons) for the facts; see SPEC 5 for the rules."""
    failing: list[str] = []
    degraded: list[str] = []

    if not f.local_connected:
        since = f.local_lost_since if f.local_lost_since is not None else f.started_at
        down_for = f.now - since
        secs = _whole_seconds(since, f.now)
        if not f.local_ever_connected:
            # "Past 30 s" is strict: at exactly 30 s the broker still has its grace.
            if down_for > LOCAL_GRACE_S:
                failing.append(f"local broker not reached within {LOCAL_GRACE_S:.0f} s of start")
            else:
                # Not yet failing, but not ok either: no reading can come in.
                degraded.append(f"local broker not reached yet ({secs} s since start)")
        elif down_for > LOCAL_GRACE_S:
            failing.append(f"local broker unreachable for {secs} s")
        else:
            degraded.append(f"local broker unreachable for {secs} s")

    if not f.state_dir_writable:
        failing.append("state dir not writable")
    if f.disk_full:
        failing.append("disk full")

    if not f.upstream_connected:
        since = f.upstream_lost_since if f.upstream_lost_since is not None else f.started_at
        degraded.append(f"upstream unreachable for {_whole_seconds(since, f.now)} s")

    if f.last_drop_at is not None and f.now - f.last_drop_at < DROP_DEGRADED_S:
        degraded.append(f"buffer dropped a batch {_whole_seconds(f.last_drop_at, f.now)} s ago")

    if failing:
        return "failing", failing + degraded
    if degraded:
        return "degraded", degraded
    return "ok", []

"""The agent's health report (SPEC 5): /healthz, /metrics' figures, the status over
MQTT and systemd's status line, read from the parts that own each figure."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.buffer.outbox import Outbox
from edge_agent.buffer.store import Store
from edge_agent.checkpoint import Checkpointer
from edge_agent.config import Config
from edge_agent.health.status import HealthFacts, evaluate
from edge_agent.health.system import SystemProbe, state_dir_writable
from edge_agent.ingest.broker_drops import BrokerDrops
from edge_agent.ingest.connection import LocalConnection
from edge_agent.ingest.shed import Shedder
from edge_agent.mqtt import Message, MqttClient
from edge_agent.pipelines import COUNTER_NAMES, Pipeline
from edge_agent.uplink.sender import Uplink
from edge_agent.uplink.status import encode_status

__all__ = ["HealthReport", "IngestState"]


class IngestState(Protocol):
    """What the report reads of the ingest session."""

    overloaded: bool
    loop_lag: float
    messages_qos0: int
    messages_duplicate: int
    ingest_pauses: int
    inbox: list[Message]

    @property
    def local(self) -> MqttClient | None: ...


class HealthReport:
    """Builds the health figures; holds no state of its own."""

    def __init__(
        self,
        *,
        started: float,
        store: Store,
        outbox: Outbox,
        probe: SystemProbe,
        conn: LocalConnection,
        checkpointer: Checkpointer,
        broker_drops: BrokerDrops,
        ingest: IngestState,
        config: Callable[[], Config],
        uplink: Callable[[], Uplink | None],
        pipelines: Callable[[], Sequence[Pipeline]],
        shedder: Callable[[], Shedder],
    ) -> None:
        self._started = started
        self._store = store
        self._outbox = outbox
        self._probe = probe
        self._conn = conn
        self._checkpointer = checkpointer
        self._broker_drops = broker_drops
        self._ingest = ingest
        self._cfg = config  # these four are replaced by a reload or made at run()
        self._uplink = uplink
        self._pipelines = pipelines
        self._shedder = shedder

    def counters(self) -> dict[str, int]:
        totals = dict.fromkeys(COUNTER_NAMES, 0)
        for p in self._pipelines():
            for k, v in p.counters().items():
                totals[k] += v
        totals["batches_sent"] = self._outbox.batches_sent
        totals["batches_dropped"] = self._outbox.batches_dropped
        totals["broker_dropped"] = self._broker_drops.dropped
        return totals

    def health_status(self, *, upstream_up: bool = False) -> tuple[str, list[str]]:
        """The /healthz status ("ok", "degraded", "failing") and its reasons (SPEC 5);
        `upstream_up` counts the upstream link as connected (see status_payload)."""
        now = time.monotonic()
        up = self._uplink()
        writable = state_dir_writable(self._cfg().agent.state_dir)
        facts = HealthFacts(
            now=now,
            started_at=self._started,
            local_connected=self._conn.connected,
            local_ever_connected=self._conn.ever_connected,
            local_lost_since=self._conn.lost_since,
            upstream_connected=upstream_up or bool(up and up.connected),
            upstream_lost_since=up.lost_since if up else self._started,
            last_drop_at=self._outbox.last_drop_at,
            state_dir_writable=writable,
            disk_full=self._checkpointer.disk_full,
        )
        status, reasons = evaluate(facts)
        for aside, why in self._store.quarantined:
            # Loud until a restart: buffered batches in that file are not sent.
            reasons.append(f"state database was corrupt ({why}); moved to {aside}")
            if status == "ok":
                status = "degraded"
        if self._checkpointer.error and not self._checkpointer.disk_full:
            reasons.append(f"checkpoints failing, retried: {self._checkpointer.error}")
            status = "failing"
        shedder = self._shedder()
        if self._ingest.overloaded:
            reasons.append(
                f"ingest overloaded: event loop {self._ingest.loop_lag:.1f} s late, "
                f"{shedder.messages_shed} QoS 0 messages shed"
            )
            if status == "ok":
                status = "degraded"
        broker_drop = self._broker_drops.reason()
        if broker_drop is not None:
            reasons.append(broker_drop)
            if status == "ok":
                status = "degraded"
        if shedder.shedding():
            reasons.append(
                f"shedding QoS 0 readings under overload: {shedder.messages_shed} "
                "messages dropped before decoding (readings_shed)"
            )
            if status == "ok":
                status = "degraded"
        return status, reasons

    def health(self) -> dict[str, Any]:
        shedder = self._shedder()
        now = time.monotonic()
        up = self._uplink()
        status, reasons = self.health_status()
        oldest = self._outbox.oldest_age()
        rejects: Counter[str] = Counter()
        for p in self._pipelines():
            rejects.update(p.rejects)
        return {
            "status": status,
            "reasons": reasons,
            "agent": self._cfg().agent.id,
            "version": __version__,
            "config": self._cfg().hash,
            "uptime_s": round(now - self._started, 3),
            "local": {
                "connected": self._conn.connected,
                "broker_dropped": self._broker_drops.dropped,
                "broker_reports_drops": self._broker_drops.available,
            },
            "upstream": {
                "connected": bool(up and up.connected),
                "last_ack_age_s": round(now - up.last_ack, 3) if up and up.last_ack else None,
            },
            "buffer": {
                "batches": self._outbox.batches,
                "bytes": self._store.disk_bytes(),
                "oldest_age_s": round(oldest, 3) if oldest is not None else None,
            },
            "counters": self.counters(),
            "system": self._probe.sample(),
            "pipelines": {p.name: p.counters() for p in self._pipelines()},
            "rejected_by_reason": dict(rejects),
            "dropped_by_reason": dict(self._outbox.dropped_by_reason),
            "messages": {
                "qos0": self._ingest.messages_qos0,
                "duplicates": self._ingest.messages_duplicate,
                "shed_qos0": shedder.messages_shed,
            },
            "ingest": {
                "loop_lag_s": round(self._ingest.loop_lag, 3),
                "overloaded": self._ingest.overloaded,
                "shedding": shedder.shedding(),
                "inbox": len(self._ingest.inbox),
                "shed_limit": shedder.limit,
                "paused": bool(self._ingest.local and self._ingest.local.reading_paused),
                "pauses": self._ingest.ingest_pauses,
            },
            # #11.5: corrupt files moved aside (counted), and a failing checkpoint.
            "state": {
                "quarantined": len(self._store.quarantined),
                "commit_error": self._checkpointer.error or None,
            },
            "uplink": {
                "inflight": up.inflight if up else 0,
                "window": up.window.limit if up else 0,
                "puback_latency_s": round(up.latency, 4) if up and up.latency is not None else None,
                "queued": up.queued if up else 0,
                # Why upstream is unreachable; the spec's reason string stays exactly as it is.
                "last_error": (up.last_error or None) if up and not up.connected else None,
            },
        }

    def status_line(self) -> str:
        """One line for `systemctl status` (sd_notify STATUS=)."""
        c = self.counters()
        up = self._uplink()
        link = "upstream connected" if up and up.connected else "upstream unreachable, buffering"
        return (
            f"{c['readings_in']} readings in, {c['windows_emitted']} windows, "
            f"{c['batches_sent']} batches sent; {link}; "
            f"{self._outbox.batches} batches buffered"
        )

    def status_payload(self, state: str) -> tuple[bytes, str]:
        """The device status map (SPEC 4) for `state` "online" or "offline", and its health.

        An offline map reaches the broker only through a connection the agent had: as the
        will of one being made (built before it is up) or on a graceful stop. So the
        upstream link is never one of its reasons."""
        cfg = self._cfg()
        health, reasons = self.health_status(upstream_up=state == "offline")
        payload = encode_status(
            cfg.agent.id, state, __version__, cfg.hash, health, reasons, time.time()
        )
        return payload, health

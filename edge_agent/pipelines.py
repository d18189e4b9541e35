"""Pipelines (SPEC 2 and 3): per [[pipeline]], payloads decoded into readings, key
limits applied, and the window engine its window spec builds.

The ingest session routes each message to the pipelines whose filters match
(ingest/router.py) and hands its payload to their decoders; the readings a batch of
messages yields then go through each pipeline's limits into its engine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from edge_agent.config import PipelineConfig
from edge_agent.ingest.decode import PayloadDecoder
from edge_agent.ingest.limits import KeyLimits
from edge_agent.windows.engine import WindowEngine

__all__ = ["COUNTER_NAMES", "Pipeline", "build_pipeline"]

COUNTER_NAMES = (
    "readings_in",
    "readings_rejected",
    "readings_late",
    "readings_shed",
    "windows_emitted",
    "batches_sent",
    "batches_dropped",
)


@dataclass(slots=True)
class Pipeline:
    """One [[pipeline]]: its decoder, key limits and window engine, and its counters."""

    cfg: PipelineConfig
    decoder: PayloadDecoder
    engine: WindowEngine
    limits: KeyLimits
    rejects: Counter[str] = field(default_factory=Counter)
    buf: list[tuple[str, float, float]] = field(default_factory=list)
    readings_in: int = 0
    readings_shed: int = 0  # QoS 0 messages dropped before decoding (ingest/shed.py)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def high_priority(self) -> bool:
        return self.cfg.priority == "high"

    def counters(self) -> dict[str, int]:
        return {
            "readings_in": self.readings_in,
            "readings_rejected": sum(self.rejects.values()),
            "readings_late": self.engine.readings_late,
            "readings_shed": self.readings_shed,
            "windows_emitted": self.engine.windows_emitted,
        }


def build_pipeline(cfg: PipelineConfig, max_future_skew: float) -> Pipeline:
    """A pipeline as configured; its engine is the one its window spec builds."""
    return Pipeline(
        cfg,
        PayloadDecoder(cfg.format, max_future_skew),
        cfg.spec.build(cfg),
        KeyLimits(cfg.max_keys, cfg.max_key_rate),
    )

"""Pipelines (SPEC 2 and 3): per [[pipeline]], payloads decoded into readings, key
limits applied, and the window engine its window spec builds.

The ingest session routes each message to the pipelines whose filters match
(ingest/router.py) and hands its payload to their decoders; the readings a batch of
messages yields then go through each pipeline's limits into its engine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge_agent.config import Config, PipelineConfig
from edge_agent.ingest.decode import PayloadDecoder
from edge_agent.ingest.limits import KeyLimits
from edge_agent.windows.engine import WindowEngine

__all__ = ["COUNTER_NAMES", "Pipeline", "build_pipeline", "replan"]

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


def replan(running: Sequence[Pipeline], new: Config) -> tuple[list[Pipeline], list[Pipeline]]:
    """A reload's pipelines: (the new list, the running ones that leave).

    A pipeline whose settings did not change is kept with its windows; one that
    changed is built afresh and its running one leaves (its open windows fire first,
    SPEC 1), as does one that is gone from the config. Raises what building a
    decoder raises (a custom decoder that no longer imports): nothing has changed then.
    """
    old = {p.name: p for p in running}
    keep: list[Pipeline] = []
    leaving: list[Pipeline] = []
    for np in new.pipelines:
        op = old.get(np.name)
        if op is not None and op.cfg == np:
            keep.append(op)
        else:
            keep.append(build_pipeline(np, new.local.max_future_skew))
            if op is not None:
                leaving.append(op)
    fresh = {p.name for p in new.pipelines}
    leaving += [p for name, p in old.items() if name not in fresh]
    return keep, leaving

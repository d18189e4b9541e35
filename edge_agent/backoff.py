"""Capped exponential backoff with full jitter, for every reconnect loop of both programs
(local and upstream brokers, the health endpoint, the bridge's device and broker)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    initial: float = 0.2
    cap: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next(self) -> float:
        """Delay before the next attempt: uniform in [d/2, d], d growing to `cap`."""
        d = min(self.cap, self.initial * self.factor**self._attempt)
        self._attempt += 1
        return self.rng.uniform(d / 2, d)

    def reset(self) -> None:
        self._attempt = 0

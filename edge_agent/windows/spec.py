"""Window specs (SPEC 3): what `window`, `size`, `slide` and `gap` mean, as types.

A spec validates itself when it is made and names the engine that runs it, so the
engines trust it and re-check nothing. `PipelineConfig.spec` builds one from the
config's fields; `spec.build(pipeline)` makes the engine and `spec.restore(pipeline,
states, wall)` makes one from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from edge_agent.errors import ConfigError
from edge_agent.windows.base import PipelineSettings, WindowEngine
from edge_agent.windows.counting import CountEngine, PassThrough
from edge_agent.windows.session import SessionEngine
from edge_agent.windows.timed import TimedEngine

__all__ = [
    "KINDS",
    "Count",
    "NoWindow",
    "Session",
    "Sliding",
    "Tumbling",
    "WindowSpec",
    "window_spec",
]

KINDS = ("tumbling", "sliding", "session", "count", "none")


class _Spec:
    __slots__ = ()
    kind: ClassVar[str]
    engine_type: ClassVar[type[WindowEngine]]

    def build(self, pipeline: PipelineSettings) -> WindowEngine:
        """A fresh engine for `pipeline` (whose `spec` is this one)."""
        return self.engine_type(pipeline)

    def restore(
        self,
        pipeline: PipelineSettings,
        states: Iterable[tuple[str, bytes]],
        wall: float | None = None,
    ) -> WindowEngine:
        """An engine resumed from checkpointed key states (see WindowEngine.restore)."""
        engine = self.build(pipeline)
        engine.restore(states, wall)
        return engine


@dataclass(frozen=True, slots=True)
class Tumbling(_Spec):
    """Epoch-aligned windows [floor(t/size)*size, +size)."""

    size: float
    kind: ClassVar[str] = "tumbling"
    engine_type: ClassVar[type[WindowEngine]] = TimedEngine

    def __post_init__(self) -> None:
        if not self.size > 0:
            raise ConfigError(f"window size must be longer than 0, got {self.size}")

    @property
    def slide(self) -> float:
        return self.size


@dataclass(frozen=True, slots=True)
class Sliding(_Spec):
    """Windows of `size` starting at every multiple of `slide`."""

    size: float
    slide: float
    kind: ClassVar[str] = "sliding"
    engine_type: ClassVar[type[WindowEngine]] = TimedEngine

    def __post_init__(self) -> None:
        if not self.size > 0 or not self.slide > 0:
            raise ConfigError(
                f"sliding windows need size and slide longer than 0, got {self.size}/{self.slide}"
            )
        if self.slide > self.size:
            raise ConfigError("slide larger than size leaves gaps between windows")


@dataclass(frozen=True, slots=True)
class Session(_Spec):
    """Readings less than `gap` apart form one window."""

    gap: float
    kind: ClassVar[str] = "session"
    engine_type: ClassVar[type[WindowEngine]] = SessionEngine

    def __post_init__(self) -> None:
        if not self.gap > 0:
            raise ConfigError(f"session windows need a gap longer than 0, got {self.gap}")


@dataclass(frozen=True, slots=True)
class Count(_Spec):
    """A window every `size` readings of a key."""

    size: int
    kind: ClassVar[str] = "count"
    engine_type: ClassVar[type[WindowEngine]] = CountEngine

    def __post_init__(self) -> None:
        if type(self.size) is not int or self.size < 1:
            raise ConfigError(
                f"a count window's size is a whole number of readings >= 1, got {self.size}"
            )


@dataclass(frozen=True, slots=True)
class NoWindow(_Spec):
    """window = "none": readings pass through."""

    kind: ClassVar[str] = "none"
    engine_type: ClassVar[type[WindowEngine]] = PassThrough


WindowSpec = Tumbling | Sliding | Session | Count | NoWindow


def window_spec(window: str, size: float, slide: float | None, gap: float | None) -> WindowSpec:
    """The spec for a pipeline's `window`, `size`, `slide` and `gap`; ConfigError if invalid."""
    if window == "tumbling":
        return Tumbling(float(size))
    if window == "sliding":
        return Sliding(float(size), float(slide or 0.0))
    if window == "session":
        return Session(float(gap or 0.0))
    if window == "count":
        if isinstance(size, float) and size.is_integer():
            size = int(size)
        return Count(size)  # type: ignore[arg-type]
    if window == "none":
        return NoWindow()
    raise ConfigError(f"unknown window {window!r}")

"""Event-time windows and watermarks (SPEC 3): one `WindowEngine` per pipeline."""

from edge_agent.windows.base import Emitted, Reading, WindowEngine

__all__ = ["Emitted", "Reading", "WindowEngine"]

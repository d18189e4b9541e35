"""The window engine: `WindowEngine(cfg)` builds the engine for a pipeline's window spec.

The base class is in base.py, the window specs that pick an implementation in
spec.py; this module is the entry point the runtime and the tests import.
"""

from edge_agent.windows.base import Emitted, Reading, WindowEngine

__all__ = ["Emitted", "Reading", "WindowEngine"]

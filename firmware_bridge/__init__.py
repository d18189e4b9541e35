"""firmware_bridge: microcontroller frames on a serial port, pty, stdin or UDP -> MQTT.

Publishes readings in the shape edge-agent reads (SPEC 2) to `sensors/{id}` on the
local broker. See firmware_bridge.bridge.Bridge and firmware_bridge.simulator.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

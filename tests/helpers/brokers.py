"""Real mosquitto brokers on free loopback ports (the launcher lives in the package, for the demo)."""

from edge_agent.cli.mosquitto import Broker, find_mosquitto, free_port

__all__ = ["Broker", "find_mosquitto", "free_port"]

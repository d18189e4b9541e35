"""Device status over MQTT (SPEC 4): a retained CBOR map a fleet manager subscribes to.

Published on `upstream.status_topic`, retained, QoS 1: on every connect, every
`status_interval`, and whenever the health status (ok/degraded/failing) changes.
The connection's MQTT 5 will is the same map with `"state": "offline"`, so a
device that dies or loses its link shows offline within 1.5x the keep-alive
(MQTT 5 3.1.2.10); a graceful stop publishes it itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2

__all__ = ["STATUS_SCHEMA", "encode_status"]

STATUS_SCHEMA = "edge-agent/status/1"


def encode_status(
    agent: str,
    state: str,
    version: str,
    config_hash: str,
    health: str,
    reasons: Sequence[str],
    now: float,
) -> bytes:
    return cbor2.dumps(
        {
            "schema": STATUS_SCHEMA,
            "agent": agent,
            "state": state,
            "version": version,
            "config": config_hash,
            "health": health,
            "reasons": list(reasons),
            "time": now,
        }
    )

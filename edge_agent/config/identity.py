"""The agent's default id (SPEC 1): the hostname and a hash of the machine id."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["MACHINE_ID_PATH", "default_agent_id"]

MACHINE_ID_PATH = "/etc/machine-id"


def default_agent_id(hostname: str | None = None, machine_id_path: str = MACHINE_ID_PATH) -> str:
    """SPEC 1: the hostname, "-", and 8 hex digits of an app-specific hash of the machine id.

    The hash is sha256(b"edge-agent:" + the machine id as written, stripped), so the id
    tells cloned SD cards apart without publishing the machine id itself (machine-id(5)
    asks applications not to). The hostname alone where the file is missing or empty.
    """
    if hostname is None:
        import socket  # only needed for the default

        hostname = socket.gethostname() or "edge-agent"
    try:
        machine_id = Path(machine_id_path).read_bytes().strip()
    except OSError:
        return hostname
    if not machine_id:
        return hostname
    return f"{hostname}-{hashlib.sha256(b'edge-agent:' + machine_id).hexdigest()[:8]}"

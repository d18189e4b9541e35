"""The keys the config accepts (SPEC 1 plus the README's extensions) and how each is read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_agent.config.converters import (
    _FILE,
    _PATH,
    _agent_id,
    _aggregates,
    _boolean,
    _choice,
    _duration,
    _format,
    _fraction,
    _host,
    _integer,
    _key_rate,
    _listen,
    _log_level,
    _nonempty,
    _optional_duration,
    _rate_limit,
    _size,
    _size_field,
    _string,
    _topic_filters,
    _topic_name,
    _window,
)
from edge_agent.config.model import (
    AgentSection,
    BufferSection,
    HealthSection,
    LocalSection,
    UpstreamSection,
)

_Conv = Callable[[object], Any] | object

# section -> key -> converter. Order is irrelevant; names are the contract of SPEC 1.
_SCHEMA: dict[str, dict[str, _Conv]] = {
    "agent": {
        "id": _agent_id,
        "state_dir": _PATH,
        "log_level": _log_level,
        "log_format": _choice("text", "json"),
    },
    "local": {
        "host": _host,
        "port": _integer(1, 65535),
        "qos": _integer(0, 2),
        "max_future_skew": _duration(positive=False),
        "client_id": _string,
        "tls": _boolean,
        "ca_file": _FILE,
        "cert_file": _FILE,
        "key_file": _FILE,
        "username": _string,
        "password_file": _FILE,
        # MQTT 5 3.1.2.11.2: Session Expiry Interval is a four-byte integer of seconds
        "session_expiry": _duration(positive=False, hi=float(0xFFFFFFFF)),
    },
    "upstream": {
        "host": _host,
        "port": _integer(1, 65535),
        "tls": _boolean,
        "ca_file": _FILE,
        "cert_file": _FILE,
        "key_file": _FILE,
        "username": _string,
        "password_file": _FILE,
        "topic": lambda v: _topic_name(_nonempty(v)),
        "late_topic": _topic_name,
        "qos": _integer(0, 2),
        "max_batch_windows": _integer(1),
        # MQTT's largest packet is 256 MiB - 1 (2.2.3); leave room for the header
        "max_batch_bytes": _size(1, 256 * 1024 * 1024 - 65536),
        "max_batch_delay": _duration(positive=False),
        "rate_limit": _rate_limit,
        "max_inflight": _integer(1, 65535),
        "live_share": _fraction,
        "compression": _choice("none", "deflate"),
        "status_topic": _topic_name,
        "status_interval": _duration(positive=True),
        # MQTT 5 3.1.2.10: Keep Alive is a two-byte integer of seconds
        "keepalive": _duration(positive=True, hi=65535.0),
    },
    "buffer": {
        "max_bytes": _size(1),
        "when_full": _choice("drop_oldest", "drop_newest"),
        "ttl": _duration(positive=True),
        "checkpoint_interval": _duration(positive=True),
        "checkpoints": _boolean,
    },
    "health": {"listen": _listen, "token_file": _FILE},
}
_PIPELINE: dict[str, _Conv] = {
    "name": _nonempty,
    "topics": _topic_filters,
    "format": _format,
    "window": _window,
    "size": _size_field,
    "slide": _optional_duration,
    "gap": _optional_duration,
    "max_out_of_orderness": _duration(positive=False),
    "allowed_lateness": _duration(positive=False),
    "idle_timeout": _duration(positive=True),
    "aggregates": _aggregates,
    "priority": _choice("normal", "high"),
    "max_keys": _integer(1),
    "max_key_rate": _key_rate,
}
_SECTION_TYPES: dict[str, type] = {
    "agent": AgentSection,
    "local": LocalSection,
    "upstream": UpstreamSection,
    "buffer": BufferSection,
    "health": HealthSection,
}
# String keys: an override like EDGE_AGENT_AGENT_ID=42 means the string "42".
_STRINGISH = {
    (s, k)
    for s, keys in _SCHEMA.items()
    for k, c in keys.items()
    if c in (_PATH, _FILE, _string, _nonempty, _host, _agent_id, _listen, _rate_limit)
    or k
    in (
        "log_level",
        "log_format",
        "topic",
        "late_topic",
        "status_topic",
        "when_full",
        "compression",
    )
}
# Read by the `health` command as a client, not config: the loader leaves them alone.
NON_CONFIG_ENV: frozenset[str] = frozenset()  # every EDGE_AGENT_ variable is a config key (SPEC 1)
_ENV_LINE = 1 << 62  # an environment override sorts after every line of the file


def accepted_keys() -> tuple[str, ...]:
    """Every key the loader accepts, as `section.key`; pipeline keys as `pipeline.key`."""
    keys = [f"{section}.{key}" for section, table in _SCHEMA.items() for key in table]
    return (*keys, *(f"pipeline.{key}" for key in _PIPELINE))

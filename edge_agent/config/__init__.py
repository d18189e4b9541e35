"""Config: TOML parsed once, at the edge, into frozen dataclasses (SPEC 1).

No dict travels past this module. Durations are float seconds, sizes int bytes.

Errors read `FILE:LINE: section.key: problem` (pipeline keys `pipeline[N].key`);
a TOML syntax error reads `FILE:LINE: problem`; an unreadable file `FILE: problem`;
an environment override `FILE: EDGE_AGENT_X: section.key: problem` (it has no line).
Every problem found is reported, one per line, in file order.

Relative paths (`agent.state_dir`, `upstream.*_file`) are relative to the config
file's directory (from an environment variable: to the working directory) and are
made absolute here, so `systemd`'s working directory `/` does not matter.

The package: `model` (the frozen sections), `schema` (the accepted keys and their
converters, `converters`), `positions` (key lines and syntax errors, shared with the
firmware bridge), `problems` (how a problem is said), `validator` (document ->
Config), `identity` (the default agent id) and `loader` (file -> text -> Config). Import from here.
"""

from __future__ import annotations

from edge_agent.config.converters import _topic_filter_problem as _topic_filter_problem
from edge_agent.config.identity import MACHINE_ID_PATH, default_agent_id
from edge_agent.config.loader import config_from_text, load_config, restart_needed
from edge_agent.config.model import (
    ENV_PREFIX,
    AgentSection,
    BufferSection,
    Config,
    HealthSection,
    LocalSection,
    PipelineConfig,
    UpstreamSection,
)
from edge_agent.config.positions import KeyScanner
from edge_agent.config.schema import _PIPELINE as _PIPELINE
from edge_agent.config.schema import _SCHEMA as _SCHEMA
from edge_agent.config.schema import NON_CONFIG_ENV, accepted_keys
from edge_agent.config.validator import SECRET_FILE_KEYS
from edge_agent.units import RateLimit

_Scanner = KeyScanner  # the name tests know it by

__all__ = [
    "ENV_PREFIX",
    "MACHINE_ID_PATH",
    "NON_CONFIG_ENV",
    "SECRET_FILE_KEYS",
    "AgentSection",
    "BufferSection",
    "Config",
    "HealthSection",
    "LocalSection",
    "PipelineConfig",
    "RateLimit",
    "UpstreamSection",
    "accepted_keys",
    "config_from_text",
    "default_agent_id",
    "load_config",
    "restart_needed",
]

"""Shared by test_config.py, test_config_env_hash_lines.py, test_units.py (split from test_config.py)."""

from __future__ import annotations

import textwrap

import pytest

from edge_agent.config import (
    Config,
    config_from_text,
)
from edge_agent.errors import ConfigError

PIPE = "[[pipeline]]\n"


def load(text: str, env: dict[str, str] | None = None, name: str = "agent.toml") -> Config:
    return config_from_text(textwrap.dedent(text), name, env or {})


def error(text: str, env: dict[str, str] | None = None, name: str = "agent.toml") -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env, name)
    return str(info.value)

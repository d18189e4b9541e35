"""Reading a config: TOML text -> validated, frozen `Config`, or every problem as
`FILE:LINE: section.key: problem`."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from edge_agent.config.model import Config
from edge_agent.config.positions import KeyScanner, syntax_error
from edge_agent.config.validator import _Validator
from edge_agent.errors import ConfigError

__all__ = ["config_from_text", "load_config", "restart_needed"]


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and freeze a config file; raise ConfigError naming FILE:LINE: key.

    `environ` defaults to os.environ; pass `{}` to ignore the environment.
    """
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{name}:{line}: not UTF-8 text") from None
    return config_from_text(text, name, os.environ if environ is None else environ)


def config_from_text(
    text: str, name: str = "agent.toml", environ: Mapping[str, str] | None = None
) -> Config:
    """Like load_config, from text; `name` is the FILE in messages and the base of relative paths."""
    locs, dups = KeyScanner(text).run()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(syntax_error(name, text, str(e), dups)) from None
    return _Validator(doc, name, locs, environ or {}).config()


def restart_needed(old: Config, new: Config) -> list[str]:
    """Keys whose change a SIGHUP reload cannot apply (SPEC 1): they need a restart."""
    out = []
    if old.agent.id != new.agent.id:
        out.append("agent.id")
    if old.agent.state_dir != new.agent.state_dir:
        out.append("agent.state_dir")
    return out

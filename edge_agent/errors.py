"""The small exception tree. Only the CLI maps these to exit codes."""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every error edge-agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """A config file or override is invalid; the message reads `FILE:LINE: key: problem`."""


class StateError(EdgeAgentError):
    """The state directory or its databases cannot be used."""


class NotRunningError(EdgeAgentError):
    """No agent is running for this config."""

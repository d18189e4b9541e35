"""Settings under which authentication or encryption quietly turns off (issue 13, item 4).

`config_warnings(cfg)` lists them in words; `check` prints them and `run`/`start` log
them, and the agent runs on: each has a legitimate use (a health port behind a
firewall, a broker on a private link, a container's secrets mounted 0444). What would
turn authentication off without the operator meaning it, an empty
`health.token_file`, is refused by the config loader instead.
"""

from __future__ import annotations

import ipaddress
import os
import stat

from edge_agent.config import Config

__all__ = ["config_warnings", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; a name is not resolved (no DNS at start)."""
    host = host.strip("[]").lower()
    if host in ("localhost", "ip6-localhost", "ip6-loopback") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _readable_by_others(path: str) -> int | None:
    """The file's mode when every user may read it, else None (also when it is not there)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & stat.S_IROTH else None


def config_warnings(cfg: Config) -> list[str]:
    out: list[str] = []
    listen = cfg.health.listen
    if listen and not cfg.health.token_file:
        host = listen.rpartition(":")[0].strip("[]")
        if host and not is_loopback(host):  # an empty host binds to loopback (units.py)
            out.append(
                f"health.listen {listen}: not a loopback address and no health.token_file: "
                "anyone who can reach the port reads this device's health and metrics"
            )
    for name in ("local", "upstream"):
        section = getattr(cfg, name)
        if not section.tls and not is_loopback(section.host):
            what = "batches go" if name == "upstream" else "readings come"
            text = (
                f"{name}.host {section.host}: {what} unencrypted ({name}.tls = false) "
                "over the network"
            )
            if section.username or section.password_file:
                text += f", {name}.username and its password included"
            out.append(text)
        for key in ("password_file", "key_file"):
            path = getattr(section, key)
            mode = _readable_by_others(path) if path else None
            if mode is not None:
                out.append(
                    f"{name}.{key} {path}: readable by every user (mode {mode:04o}); "
                    f"chmod 600 it (640 for a group the agent is in)"
                )
    if cfg.health.token_file:
        mode = _readable_by_others(cfg.health.token_file)
        if mode is not None:
            out.append(
                f"health.token_file {cfg.health.token_file}: readable by every user "
                f"(mode {mode:04o}); chmod 600 it"
            )
    return out

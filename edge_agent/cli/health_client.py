"""`health` and the health part of `status`: a small client of the agent's /healthz."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from edge_agent.config import Config, load_config
from edge_agent.errors import EdgeAgentError

__all__ = ["TOKEN_ENV", "health", "health_url", "print_health_summary"]

TOKEN_ENV = "EDGE_HEALTH_TOKEN"  # `health`'s bearer token (not EDGE_AGENT_: those are config keys)


def _base_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = host or "127.0.0.1"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    return f"http://{host}:{port}"


def health_url(url: str | None, config_path: str | None) -> str:
    if url:
        if "://" not in url:
            url = "http://" + url
        url = url.rstrip("/")
        return url if url.endswith("/healthz") else url + "/healthz"
    listen = "127.0.0.1:9100"
    if config_path:
        cfg = load_config(config_path)
        listen = cfg.health.listen or listen
    return _base_url(listen) + "/healthz"


def _config_token(cfg: Config) -> str | None:
    """The bearer token the config's endpoint requires (health.token_file), if readable."""
    path = getattr(cfg.health, "token_file", "")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None  # not ours to read (e.g. root-only): the endpoint answers 401


def _fetch(url: str, token: str | None, timeout: float) -> tuple[int, object]:
    # here, not at the top: urllib.request brings http.client and email (~8 MiB, ~20 ms),
    # which `run` never needs
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except (ValueError, OSError):
            return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return 0, str(reason)


def health(
    url: str | None,
    config_path: str | None,
    token: str | None,
    timeout: float,
    token_file: str | None = None,
) -> int:
    target = health_url(url, config_path)
    if token is None and token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:  # its message would quote a byte of the file
            raise EdgeAgentError(f"--token-file {token_file}: not UTF-8 text") from None
        except OSError as exc:
            raise EdgeAgentError(f"--token-file {token_file}: {exc.strerror}") from None
    if token is None:
        # Not on the command line, where every user's `ps` shows it.
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is None and config_path:
        token = _config_token(load_config(config_path))
    _, body = _fetch(target, token, timeout)
    if not isinstance(body, dict) or "status" not in body:
        print(f"{target}: unreachable or not an edge-agent ({body})", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2))
    return {"ok": 0, "degraded": 1}.get(str(body["status"]), 2)


def print_health_summary(cfg: Config) -> None:
    """`status`'s health lines: the agent's verdict, counters and buffer, from its endpoint."""
    _, body = _fetch(_base_url(cfg.health.listen) + "/healthz", _config_token(cfg), 3.0)
    if isinstance(body, dict):
        reasons = "; ".join(body.get("reasons") or []) or "-"
        print(f"health: {body.get('status')} ({reasons})")
        c = body.get("counters", {})
        print("counters: " + ", ".join(f"{k}={v}" for k, v in c.items()))
        print(_buffer_line(body.get("buffer", {})))
    else:
        print(f"health: unreachable ({body})")


def _buffer_line(buf: dict[str, Any]) -> str:
    """What waits to go upstream. `bytes` is the database's size on disk, which an empty
    buffer has too (tables, free pages): shown as that, never as data waiting."""
    size = buf.get("bytes")
    on_disk = f" (database {_human_size(size)} on disk)" if isinstance(size, int) else ""
    batches = buf.get("batches")
    if not batches:
        return f"buffer: empty, nothing waiting to go upstream{on_disk}"
    age = buf.get("oldest_age_s")
    oldest = f", the oldest {age:.0f} s old" if isinstance(age, (int, float)) else ""
    return f"buffer: {batches} batch(es) waiting to go upstream{oldest}{on_disk}"


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.1f} MiB"

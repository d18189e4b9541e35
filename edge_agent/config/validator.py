"""Validating a parsed config: TOML document -> frozen `Config`, or every problem.

Each key is converted by its schema entry (`schema.py`, `converters.py`); cross-key
rules (TLS files, buffer size, window kinds) follow; environment overrides
(`EDGE_AGENT_<SECTION>_<KEY>`) are applied first. Problems are reported through
`problems.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from edge_agent.config.converters import (
    _DEFAULT_SIZE,
    _FILE,
    _PATH,
    _kind,
    _nonempty,
    _Problem,
    _string,
    _topic_bytes,
)
from edge_agent.config.identity import default_agent_id
from edge_agent.config.model import ENV_PREFIX, Config, PipelineConfig
from edge_agent.config.problems import _Problems, _suggest
from edge_agent.config.schema import (
    _ENV_LINE,
    _PIPELINE,
    _SCHEMA,
    _SECTION_TYPES,
    _STRINGISH,
    NON_CONFIG_ENV,
    _Conv,
)
from edge_agent.errors import ConfigError
from edge_agent.units import (
    format_size,
    min_buffer_bytes,
    show_value,
)

# Keys whose value names a file holding a secret. Errors never quote their value:
# a password written where its file's path belongs must not end up in a log.
SECRET_FILE_KEYS = frozenset({"password_file", "token_file", "key_file"})


def _config_hash(cfg: Config) -> str:
    """sha256 over sorted JSON of the effective config: formatting and comments don't count."""
    body = {
        "agent": asdict(cfg.agent),
        "local": asdict(cfg.local),
        "upstream": asdict(cfg.upstream),
        "buffer": asdict(cfg.buffer),
        "health": asdict(cfg.health),
        "pipelines": [asdict(p) for p in cfg.pipelines],
    }
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _env_value(raw: str) -> object:
    """SPEC 1: a TOML value when it parses as one, else the string itself."""
    if "\n" in raw or "\r" in raw:
        return raw
    try:
        doc = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    return doc["v"] if doc.keys() == {"v"} else raw


class _Validator(_Problems):
    """Walks one document: environment overrides, each section's keys, then the rules
    across keys; `config()` returns the Config or raises every problem at once."""

    def __init__(
        self,
        doc: dict[str, Any],
        name: str,
        locs: dict[tuple[Any, ...], int],
        environ: Mapping[str, str],
    ) -> None:
        super().__init__(doc, name, locs)
        self.environ = environ
        self.base = os.path.dirname(os.path.abspath(name))  # relative paths start here

    def config(self) -> Config:
        self.apply_environment()
        sections: dict[str, Any] = {}
        for key, value in self.doc.items():
            if key == "pipeline" or key in _SCHEMA:
                continue
            known = [*_SCHEMA, "pipeline"]
            if isinstance(value, dict) or (
                isinstance(value, list) and value and all(isinstance(x, dict) for x in value)
            ):
                self.error((key,), "unknown section" + _suggest(key, known))
            else:
                self.error(
                    (key,),
                    "unknown key; keys belong in a section such as [agent]" + _suggest(key, known),
                )
        for section in _SCHEMA:
            sections[section] = self.section(section)
        pipelines = self.pipelines()
        self.check_buffer(sections["buffer"], sections["upstream"])
        if self.errors:
            self.errors.sort(key=lambda e: e[0])
            raise ConfigError("\n".join(msg for _, msg in self.errors))
        cfg = Config(
            agent=sections["agent"],
            local=sections["local"],
            upstream=sections["upstream"],
            buffer=sections["buffer"],
            health=sections["health"],
            pipelines=tuple(pipelines),
            source=Path(self.name),
        )
        return replace(cfg, hash=_config_hash(cfg))

    def apply_environment(self) -> None:
        for var in sorted(self.environ):
            if not var.startswith(ENV_PREFIX) or var in NON_CONFIG_ENV:
                continue
            rest = var[len(ENV_PREFIX) :]
            section, _, key = rest.partition("_")
            section, key = section.lower(), key.lower()
            if section == "pipeline":
                self.errors.append(
                    (
                        _ENV_LINE,
                        f"{self.name}: {var}: [[pipeline]] keys cannot be overridden from the environment",
                    )
                )
                continue
            if rest != rest.upper() or section not in _SCHEMA or key not in _SCHEMA[section]:
                self.errors.append(
                    (
                        _ENV_LINE,
                        f"{self.name}: {var}: names no config key (expected {ENV_PREFIX}<SECTION>_<KEY>, e.g. {ENV_PREFIX}UPSTREAM_HOST)",
                    )
                )
                continue
            raw = self.environ[var]
            value = _env_value(raw)
            if (section, key) in _STRINGISH and not isinstance(value, str):
                value = raw
            table = self.doc.setdefault(section, {})
            if isinstance(table, dict):
                table[key] = value
                self.env_origin[(section, key)] = var

    def convert(self, path: tuple[Any, ...], conv: _Conv, value: object) -> Any:
        if conv is _PATH or conv is _FILE:
            secret = path[-1] in SECRET_FILE_KEYS
            if secret and not isinstance(value, str):
                # the value may be the secret itself, written where its file belongs
                raise _Problem(f"expected a string (the path of a file), got {_kind(value)}")
            s = _string(value) if conv is _FILE else _nonempty(value)
            if s == "":
                return s
            base = os.getcwd() if path[:2] in self.env_origin else self.base
            p = os.path.join(base, os.path.expanduser(s))
            if conv is _PATH:
                return Path(os.path.normpath(p))
            p = os.path.normpath(p)
            if not os.path.isfile(p):
                if secret and "/" not in s:
                    raise _Problem(
                        "no such file (the value is not shown: it does not look like a "
                        "path and may be the secret itself)"
                    )
                raise _Problem(f"no such file: {show_value(p)}")
            return p
        return conv(value)  # type: ignore[operator]

    def table(
        self, path: tuple[Any, ...], value: object, schema: dict[str, _Conv]
    ) -> dict[str, Any] | None:
        """Convert each key of a table; report unknown keys and bad values. None if not a table."""
        if not isinstance(value, dict):
            self.error(path, f"expected a table, got {show_value(value)}")
            return None
        out: dict[str, Any] = {}
        for key, v in value.items():
            kpath = (*path, key)
            conv = schema.get(key)
            if conv is None:
                self.error(kpath, "unknown key" + _suggest(key, list(schema)))
                continue
            try:
                out[key] = self.convert(kpath, conv, v)
            except _Problem as e:
                self.error(kpath, str(e), None if e.index is None else (*kpath, e.index))
        return out

    def section(self, name: str) -> Any:
        values = self.table((name,), self.doc.get(name, {}), _SCHEMA[name])
        if values is None:
            return None
        if name == "agent":
            if "id" not in values and "id" not in self.doc.get("agent", {}):
                values["id"] = default_agent_id()
            elif "id" not in values:
                return None  # its error is reported already
            self.check_topics(values["id"])
        if name in ("upstream", "local"):
            self.check_tls(name, values)
        if name == "health":
            self.check_token_file(values)
        if (
            name == "local"
            and values.get("client_id", "")
            and len(values["client_id"].encode()) > 65535
        ):
            self.error(("local", "client_id"), "longer than 65535 bytes")
        return _SECTION_TYPES[name](**values)

    def check_buffer(self, buffer: Any, upstream: Any) -> None:
        """#11.1: a bound too small to hold one batch and SQLite's own pages cannot work."""
        if buffer is None or upstream is None:
            return
        least = min_buffer_bytes(upstream.max_batch_bytes)
        if buffer.max_bytes < least:
            bound, batch = ("buffer", "max_bytes"), ("upstream", "max_batch_bytes")
            minimum = f"the minimum is {format_size(least)} (128KiB + 2 x upstream.max_batch_bytes)"
            if self.order(bound) >= self.order(batch):  # conflict() names the later key
                problem = f"too small to work: {minimum}, got {format_size(buffer.max_bytes)}"
            else:
                problem = (
                    f"{format_size(upstream.max_batch_bytes)} leaves buffer.max_bytes"
                    f" ({format_size(buffer.max_bytes)}) too small to work: {minimum}"
                )
            self.conflict(bound, batch, problem)

    def check_topics(self, agent_id: str) -> None:
        """Topics with `{agent}` expanded must still be valid topic names."""
        up = self.doc.get("upstream")
        if not isinstance(up, dict):
            return
        for key in ("topic", "late_topic", "status_topic"):
            t = up.get(key)
            if isinstance(t, str) and "{agent}" in t:
                try:
                    _topic_bytes(t.replace("{agent}", agent_id))
                except _Problem as e:
                    self.error(("upstream", key), f"{e} once {{agent}} is expanded")

    def check_tls(self, section: str, v: dict[str, Any]) -> None:
        tls = v.get("tls", False)
        for key in ("ca_file", "cert_file", "key_file"):
            if v.get(key) and not tls:
                self.conflict((section, key), (section, "tls"), f"{key} needs tls = true")
        if v.get("key_file") and not v.get("cert_file"):
            self.error((section, "cert_file"), "missing; key_file needs cert_file")

    def check_token_file(self, v: dict[str, Any]) -> None:
        """An empty token file would turn authentication off without a word: refuse it.

        A file we may not read (`check` as another user) is left to the agent, which
        reads it at start and fails there if it cannot.
        """
        path = v.get("token_file", "")
        if not path:
            return
        try:
            token = Path(path).read_bytes()
        except OSError:
            return
        if not token.strip():
            self.error(
                ("health", "token_file"),
                "the file is empty; an empty token would leave the endpoint open "
                '(set token_file = "" to run without authentication)',
            )

    def pipelines(self) -> list[PipelineConfig]:
        raw = self.doc.get("pipeline")
        if raw is None:
            self.errors.append(
                (
                    1,
                    f"{self.name}:1: pipeline: missing; at least one [[pipeline]] table is required",
                )
            )
            return []
        if isinstance(raw, dict):
            self.error(
                ("pipeline",), "expected one or more [[pipeline]] tables, got a table ([pipeline])"
            )
            return []
        if not isinstance(raw, list):
            self.error(
                ("pipeline",), f"expected one or more [[pipeline]] tables, got {show_value(raw)}"
            )
            return []
        if not raw:
            self.error(("pipeline",), "at least one [[pipeline]] table is required")
            return []
        out: list[PipelineConfig] = []
        names: dict[str, int] = {}
        for n, item in enumerate(raw):
            p = self.pipeline(n, item)
            if p is None:
                continue
            if p.name in names:
                first = names[p.name]
                self.conflict(
                    ("pipeline", n, "name"),
                    ("pipeline", first, "name"),
                    f"duplicate pipeline name {show_value(p.name)}",
                )
            names.setdefault(p.name, n)
            out.append(p)
        return out

    def pipeline(self, n: int, item: object) -> PipelineConfig | None:
        path: tuple[Any, ...] = ("pipeline", n)
        given = item if isinstance(item, dict) else {}
        v = self.table(path, item, _PIPELINE)
        if v is None or any(k not in v for k in given if k in _PIPELINE):
            return None  # a key failed; dependent checks would only add noise
        window = v.get("window", "tumbling")

        def kp(k: str) -> tuple[Any, ...]:
            return (*path, k)

        ok = True
        for key, kind in (("slide", "sliding"), ("gap", "session")):
            if v.get(key) is not None and window != kind:
                self.conflict(
                    kp(key), kp("window"), f"{key} only applies to {kind} windows, not {window}"
                )
                ok = False
        size = v.get("size")
        if window == "count":
            if size is None:
                self.error(
                    kp("size"),
                    "missing; a count window needs size, the number of readings per window",
                )
                ok = False
            elif type(size) is not int or size < 1:
                self.conflict(
                    kp("size"),
                    kp("window"),
                    f"a count window's size is a whole number of readings >= 1, got {show_value(given['size'])}",
                )
                ok = False
        elif size is None:
            v["size"] = _DEFAULT_SIZE
        elif size <= 0:
            self.error(kp("size"), f"must be longer than 0, got {show_value(given['size'])}")
            ok = False
        else:
            v["size"] = float(size)
        if window == "sliding":
            slide = v.get("slide")
            if slide is None:
                self.error(
                    kp("slide"),
                    "missing; a sliding window needs slide, the hop between window starts",
                )
                ok = False
            elif slide > v["size"]:
                self.conflict(
                    kp("slide"), kp("size"), "slide larger than size leaves gaps between windows"
                )
                ok = False
        if window == "session" and v.get("gap") is None:
            self.error(
                kp("gap"),
                "missing; a session window needs gap, the inactivity that closes a session",
            )
            ok = False
        if not ok:
            return None
        if "topics" in v:
            v["topics"] = tuple(v["topics"])
        return PipelineConfig(**v)

"""Config: TOML parsed once, at the edge, into frozen dataclasses (SPEC 1).

No dict travels past this module. Durations are float seconds, sizes int bytes.

Errors read `FILE:LINE: section.key: problem` (pipeline keys `pipeline[N].key`);
a TOML syntax error reads `FILE:LINE: problem`; an unreadable file `FILE: problem`;
an environment override `FILE: EDGE_AGENT_X: section.key: problem` (it has no line).
Every problem found is reported, one per line, in file order.

Relative paths (`agent.state_dir`, `upstream.*_file`) are relative to the config
file's directory (from an environment variable: to the working directory) and are
made absolute here, so `systemd`'s working directory `/` does not matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError
from edge_agent.units import (
    RateLimit,
    listen_address,
    parse_duration,
    parse_rate_limit,
    parse_size,
    show_value,
)
from edge_agent.windows.spec import WindowSpec, window_spec

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

ENV_PREFIX = "EDGE_AGENT_"


@dataclass(frozen=True, slots=True)
class AgentSection:
    id: str
    state_dir: Path = Path("/var/lib/edge-agent")
    log_level: str = "info"  # debug, info, warning, error
    log_format: str = "text"  # extension: "text" or "json"


@dataclass(frozen=True, slots=True)
class LocalSection:
    host: str = "127.0.0.1"
    port: int = 1883
    qos: int = 1
    max_future_skew: float = 300.0
    client_id: str = ""  # extension: "" = "edge-agent-<agent.id>"
    session_expiry: float = (
        7 * 86400.0
    )  # extension: persistent session lifetime on the local broker
    # SPEC 1: the same authentication and (m)TLS keys, with the same meaning, as [upstream]
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password_file: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamSection:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password_file: str = ""
    topic: str = "edge/{agent}/batches"
    late_topic: str = ""
    qos: int = 1
    max_batch_windows: int = 500
    max_batch_bytes: int = 64 * 1024
    max_batch_delay: float = 1.0
    rate_limit: RateLimit | None = None
    max_inflight: int = 64  # extension: unacknowledged batches at most (the adaptive window's ceiling)
    live_share: float = 0.0  # extension: share of sends for new batches while a backlog drains
    compression: str = "none"  # or "deflate": payload is the zlib stream of the CBOR map (SPEC 4)
    status_topic: str = "edge/{agent}/status"  # retained device status (SPEC 4); "" = none
    status_interval: float = 60.0
    keepalive: float = 30.0  # extension: MQTT keep-alive; a dead agent shows offline within 1.5x


@dataclass(frozen=True, slots=True)
class BufferSection:
    max_bytes: int = 256 * 1024 * 1024
    when_full: str = "drop_oldest"  # or "drop_newest"
    ttl: float = 7 * 86400.0
    checkpoint_interval: float = 0.25  # extension: group-commit interval (durability vs SD writes)
    # extension: false acknowledges readings on arrival and keeps no window checkpoints
    # (faster, fewer SD writes; a crash loses open windows). Batches are buffered either way.
    checkpoints: bool = True


@dataclass(frozen=True, slots=True)
class HealthSection:
    listen: str = "127.0.0.1:9100"  # "" disables
    token_file: str = (
        ""  # extension: a file holding a bearer token the endpoint requires; "" = none
    )

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, or None when disabled."""
        return listen_address(self.listen)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    name: str = "climate"
    topics: tuple[str, ...] = ("sensors/#",)
    format: str = "auto"  # "json", "cbor", "auto" or "package.module:function"
    window: str = "tumbling"  # tumbling, sliding, session, count, none
    size: float = 10.0  # seconds; for "count" an int number of readings
    slide: float | None = None
    gap: float | None = None
    max_out_of_orderness: float = 2.0
    allowed_lateness: float = 0.0
    idle_timeout: float = 30.0
    aggregates: tuple[str, ...] = ("count", "min", "max", "mean")
    # extensions (issue 5): "high" batches go first under a rate limit and are
    # dropped last when the buffer is full; a cap on distinct keys (memory under a
    # topic flood); an optional readings/s cap per key (a chattering sensor).
    priority: str = "normal"
    max_keys: int = 100_000
    max_key_rate: float | None = None

    @property
    def spec(self) -> WindowSpec:
        """The window as a validated type that builds its engine (windows/spec.py)."""
        return window_spec(self.window, self.size, self.slide, self.gap)


@dataclass(frozen=True, slots=True)
class Config:
    agent: AgentSection
    local: LocalSection = field(default_factory=LocalSection)
    upstream: UpstreamSection = field(default_factory=UpstreamSection)
    buffer: BufferSection = field(default_factory=BufferSection)
    health: HealthSection = field(default_factory=HealthSection)
    pipelines: tuple[PipelineConfig, ...] = ()
    source: Path | None = None  # the file as given on the command line
    hash: str = ""  # 12 hex digits: sha256 of the effective config

    @property
    def batch_topic(self) -> str:
        return self.upstream.topic.replace("{agent}", self.agent.id)

    @property
    def late_topic(self) -> str:
        return self.upstream.late_topic.replace("{agent}", self.agent.id)

    @property
    def status_topic(self) -> str:
        return self.upstream.status_topic.replace("{agent}", self.agent.id)


MACHINE_ID_PATH = "/etc/machine-id"
# Keys whose value names a file holding a secret. Errors never quote their value:
# a password written where its file's path belongs must not end up in a log.
SECRET_FILE_KEYS = frozenset({"password_file", "token_file", "key_file"})


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
    locs, dups = _Scanner(text).run()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_syntax_error(name, text, str(e), dups)) from None
    return _Validator(doc, name, locs, environ or {}).config()


def accepted_keys() -> tuple[str, ...]:
    """Every key the loader accepts, as `section.key`; pipeline keys as `pipeline.key`."""
    keys = [f"{section}.{key}" for section, table in _SCHEMA.items() for key in table]
    return (*keys, *(f"pipeline.{key}" for key in _PIPELINE))


def restart_needed(old: Config, new: Config) -> list[str]:
    """Keys whose change a SIGHUP reload cannot apply (SPEC 1): they need a restart."""
    out = []
    if old.agent.id != new.agent.id:
        out.append("agent.id")
    if old.agent.state_dir != new.agent.state_dir:
        out.append("agent.state_dir")
    return out


# --------------------------------------------------------------------------- hash


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


# --------------------------------------------------------------------------- syntax errors

_TOML_AT = re.compile(r"^(.*?) \(at (?:line (\d+), column (\d+)|end of document)\)$", re.S)


def _syntax_error(
    name: str, text: str, msg: str, dups: list[tuple[tuple[Any, ...], int, int]]
) -> str:
    """tomllib's message as `FILE:LINE: problem`; a duplicate key gets named."""
    m = _TOML_AT.match(msg)
    problem, line = msg, 0
    if m:
        problem = m.group(1)
        if m.group(2):
            line = int(m.group(2))
            problem = f"{problem} (column {m.group(3)})"
        else:
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
            problem = f"{problem} (at end of file)"
    if problem.startswith(("Cannot overwrite", "Cannot declare", "Cannot mutate")) and dups:
        # tomllib reports the line where it noticed; our scan knows which key it was.
        near = [d for d in dups if d[1] <= line] or dups
        path, at, first = near[-1]
        what = "section declared" if problem.startswith("Cannot declare") else "key defined"
        return f"{name}:{at}: {_dotted(path)}: {what} twice (first on line {first})"
    problem = problem[:1].lower() + problem[1:]
    return f"{name}:{line}: {problem}" if line else f"{name}: {problem}"


# --------------------------------------------------------------------------- line scanner

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_KEY_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _Scanner:
    """Maps each key path to the line it is defined on, since tomllib gives no positions.

    Paths are tuples of keys, with an int for array-of-table and array elements:
    `("pipeline", 1, "size")`. A table's path maps to its header line (or, for a table
    made by a dotted key or inline table, to that line). Run it only on text tomllib
    accepts (or to name a duplicate); on anything odd it stops and keeps what it has.
    """

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.locs: dict[tuple[Any, ...], int] = {}
        self.values: set[tuple[Any, ...]] = set()
        self.headers: set[tuple[Any, ...]] = set()
        self.dups: list[tuple[tuple[Any, ...], int, int]] = []
        self.aot: dict[tuple[Any, ...], int] = {}

    def run(self) -> tuple[dict[tuple[Any, ...], int], list[tuple[tuple[Any, ...], int, int]]]:
        table: tuple[Any, ...] = ()
        try:
            while True:
                self._skip(newlines=True)
                if self.i >= len(self.s):
                    break
                if self.s[self.i] == "[":
                    table = self._header()
                else:
                    self._keyval(table)
        except (IndexError, ValueError, RecursionError):
            pass  # only ever on text tomllib rejects: keep the positions found so far
        return self.locs, self.dups

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _skip(self, newlines: bool) -> None:
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in " \t":
                self.i += 1
            elif c == "#":
                while self.i < len(s) and s[self.i] != "\n":
                    self.i += 1
            elif newlines and c in "\r\n":
                self.line += c == "\n"
                self.i += 1
            else:
                break

    def _header(self) -> tuple[Any, ...]:
        line = self.line
        self.i += 1
        is_array = self._peek() == "["
        if is_array:
            self.i += 1
        keys = self._keys()
        if self._peek() != "]":
            raise ValueError("bad header")
        self.i += 2 if is_array else 1
        path: tuple[Any, ...] = ()
        for j, k in enumerate(keys):
            path += (k,)
            if is_array and j == len(keys) - 1:
                self.locs.setdefault(path, line)
                idx = self.aot.get(path, -1) + 1
                self.aot[path] = idx
                path += (idx,)
            elif path in self.aot:
                path += (self.aot[path],)
        if is_array:
            self.locs[path] = line
        else:
            if path in self.headers or path in self.values:
                self.dups.append((path, line, self.locs.get(path, line)))
            else:
                # an explicit [a] is the best place to point at, even after [a.b] made it
                self.locs[path] = line
            self.headers.add(path)
        return path

    def _keys(self) -> list[str]:
        keys = []
        while True:
            self._skip(newlines=False)
            c = self._peek()
            if c == '"':
                keys.append(self._basic_string())
            elif c == "'":
                end = self.s.index("'", self.i + 1)
                keys.append(self.s[self.i + 1 : end])
                self.i = end + 1
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if m is None:
                    raise ValueError("bad key")
                keys.append(m.group())
                self.i = m.end()
            self._skip(newlines=False)
            if self._peek() != ".":
                return keys
            self.i += 1

    def _basic_string(self) -> str:
        out = []
        self.i += 1
        s = self.s
        while s[self.i] != '"':
            c = s[self.i]
            if c == "\\":
                e = s[self.i + 1]
                if e in "uU":
                    width = 4 if e == "u" else 8
                    out.append(chr(int(s[self.i + 2 : self.i + 2 + width], 16)))
                    self.i += 2 + width
                    continue
                out.append(_KEY_ESCAPES.get(e, e))
                self.i += 2
                continue
            out.append(c)
            self.i += 1
        self.i += 1
        return "".join(out)

    def _keyval(self, table: tuple[Any, ...]) -> None:
        line = self.line
        keys = self._keys()
        if self._peek() != "=":
            raise ValueError("expected =")
        self.i += 1
        self._skip(newlines=False)
        path = table
        for k in keys[:-1]:
            path += (k,)
            self.locs.setdefault(path, line)
        path += (keys[-1],)
        if path in self.values or path in self.headers:
            self.dups.append((path, line, self.locs.get(path, line)))
        else:
            self.locs[path] = line
        self.values.add(path)
        self._value(path)

    def _value(self, path: tuple[Any, ...]) -> None:
        s = self.s
        c = self._peek()
        if s.startswith('"""', self.i) or s.startswith("'''", self.i):
            self._multiline(s[self.i])
        elif c == '"':
            self._basic_string()
        elif c == "'":
            self.i = s.index("'", self.i + 1) + 1
        elif c == "[":
            self.i += 1
            k = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self.i += 1
                    return
                self.locs.setdefault((*path, k), self.line)
                self._value((*path, k))
                k += 1
                self._skip(newlines=True)
                if self._peek() == ",":
                    self.i += 1
        elif c == "{":
            self.i += 1
            while True:
                self._skip(newlines=True)
                if self._peek() == "}":
                    self.i += 1
                    return
                if self._peek() == ",":
                    self.i += 1
                    continue
                self._keyval(path)
        else:
            start = self.i
            while self.i < len(s) and s[self.i] not in ",]}#\r\n":
                self.i += 1
            if self.i == start:
                raise ValueError("empty value")

    def _multiline(self, quote: str) -> None:
        s = self.s
        delim = quote * 3
        self.i += 3
        while not s.startswith(delim, self.i):
            c = s[self.i]
            if c == "\\" and quote == '"':
                self.line += s[self.i + 1] == "\n"
                self.i += 2
                continue
            self.line += c == "\n"
            self.i += 1
        self.i += 3
        # up to two more quotes may end the content: """a"""" is 'a"'
        for _ in range(2):
            if self._peek() == quote:
                self.i += 1


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            k = p if _BARE_KEY.fullmatch(p) else json.dumps(p, ensure_ascii=False)
            out += f".{k}" if out else k
    return out


# --------------------------------------------------------------------------- validation


class _Problem(Exception):
    """A value is wrong; str(self) is the `problem` part of the message.

    `index` names the offending element of an array, so the line can point at it.
    """

    def __init__(self, problem: str, index: int | None = None) -> None:
        super().__init__(problem)
        self.index = index


def _kind(v: object) -> str:
    """A value's TOML type in words, for messages that must not show the value."""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (list, "an array"),
             (dict, "a table"))
    return next((name for t, name in kinds if isinstance(v, t)), "a date or time")


def _string(v: object) -> str:
    if not isinstance(v, str):
        raise _Problem(f"expected a string, got {show_value(v)}")
    return v


def _nonempty(v: object) -> str:
    if not _string(v):
        raise _Problem("must not be empty")
    return v  # type: ignore[return-value]


def _host(v: object) -> str:
    s = _nonempty(v)
    if any(c.isspace() for c in s):
        raise _Problem(f"expected a host name or address, got {show_value(s)}")
    return s


def _integer(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def conv(v: object) -> int:
        if type(v) is not int:
            raise _Problem(f"expected an integer, got {show_value(v)}")
        if v < lo or (hi is not None and v > hi):
            rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise _Problem(f"must be {rng}, got {v}")
        return v

    return conv


def _boolean(v: object) -> bool:
    if type(v) is not bool:
        raise _Problem(f"expected true or false, got {show_value(v)}")
    return v


def _duration(positive: bool, hi: float | None = None) -> Callable[[object], float]:
    def conv(v: object) -> float:
        try:
            d = parse_duration(v)  # type: ignore[arg-type]
        except ValueError as e:
            raise _Problem(str(e)) from None
        if positive and d <= 0:
            raise _Problem(f"must be longer than 0, got {show_value(v)}")
        if hi is not None and d > hi:
            raise _Problem(f"must be at most {hi:g} seconds, got {show_value(v)}")
        return d

    return conv


def _optional_duration(v: object) -> float | None:
    if v == "":
        return None
    return _duration(positive=True)(v)


def _size(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def conv(v: object) -> int:
        try:
            n = parse_size(v)  # type: ignore[arg-type]
        except ValueError as e:
            raise _Problem(str(e)) from None
        if n < lo:
            raise _Problem(f"must be at least {lo} bytes, got {show_value(v)}")
        if hi is not None and n > hi:
            raise _Problem(f"must be at most {hi} bytes, got {show_value(v)}")
        return n

    return conv


def _choice(*options: str) -> Callable[[object], str]:
    listed = ", ".join(f'"{o}"' for o in options[:-1]) + f' or "{options[-1]}"'

    def conv(v: object) -> str:
        if v not in options:
            raise _Problem(f"expected {listed}, got {show_value(v)}")
        return str(v)

    return conv


def _log_level(v: object) -> str:
    s = _string(v).lower()
    if s not in ("debug", "info", "warning", "error"):
        raise _Problem(f'expected "debug", "info", "warning" or "error", got {show_value(v)}')
    return s


def _rate_limit(v: object) -> RateLimit | None:
    try:
        return parse_rate_limit(v)  # type: ignore[arg-type]
    except ValueError as e:
        raise _Problem(str(e)) from None


def _fraction(v: object) -> float:
    """A number from 0 to 1 (an integer 0 or 1 too)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise _Problem(f"expected a number from 0 to 1, got {show_value(v)}")
    return float(v)


def _key_rate(v: object) -> float | None:
    """`max_key_rate`: "" (no cap) or "N/s" readings per second per key."""
    text = _string(v).strip()
    if not text:
        return None
    num, sep, unit = text.partition("/")
    try:
        rate = float(num)
    except ValueError:
        rate = -1.0
    if sep != "/" or unit.strip() != "s" or not rate > 0 or rate == float("inf"):
        raise _Problem(f'expected "" or readings per second such as "10/s", got {show_value(v)}')
    return rate


def _agent_id(v: object) -> str:
    s = _nonempty(v)
    bad = [c for c in ("+", "#", "\0") if c in s]
    if bad:
        raise _Problem(f"must not contain {show_value(bad[0])}: it goes into MQTT topic names")
    return s


def _topic_name(v: object) -> str:
    """A topic to publish to, `{agent}` still in it (MQTT 5 4.7: no wildcards, 1..65535 bytes)."""
    s = _string(v)
    probe = s.replace("{agent}", "a")
    if "+" in probe or "#" in probe:
        raise _Problem(f"a topic to publish to cannot hold wildcards, got {show_value(s)}")
    if s.startswith("$"):
        raise _Problem(f'topics starting with "$" are reserved for the broker, got {show_value(s)}')
    _topic_bytes(s)
    return s


def _topic_bytes(s: str) -> None:
    if "\0" in s:
        raise _Problem(f"malformed topic {show_value(s)}: contains U+0000")
    try:
        n = len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Problem(f"malformed topic {show_value(s)}: not valid UTF-8") from None
    if n > 65535:
        raise _Problem(f"malformed topic {show_value(s[:20] + '...')}: longer than 65535 bytes")


def _topic_filter_problem(f: str) -> str | None:
    """Why `f` is not an MQTT 5 topic filter (4.7.1, 4.8.2), or None."""
    if not f:
        return "it is empty"
    try:
        _topic_bytes(f)
    except _Problem as e:
        return str(e).partition(": ")[2]
    levels = f.split("/")
    if levels[0] == "$share":
        # $share/{ShareName}/{filter}: ShareName one level, no wildcards (4.8.2)
        if len(levels) < 3 or not levels[1] or "+" in levels[1] or "#" in levels[1]:
            return 'a shared subscription is "$share/<name>/<filter>"'
        levels = levels[2:]
        if levels == [""]:
            return "the filter of a shared subscription is empty"
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return '"#" must be alone in the last level'
        if "+" in level and level != "+":
            return '"+" must be alone in its level'
    return None


def _topic_filters(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
        raise _Problem(f"expected an array of topic filters (strings), got {show_value(v)}")
    if not v:
        raise _Problem("needs at least one topic filter")
    for i, t in enumerate(v):
        why = _topic_filter_problem(t)
        if why:
            raise _Problem(f"malformed topic filter {show_value(t)}: {why}", i)
    return tuple(dict.fromkeys(v))  # a filter listed twice would deliver twice


_FIXED_AGGREGATES = ("count", "sum", "min", "max", "mean", "first", "last", "stddev")
_PERCENTILE = re.compile(r"p[1-9][0-9]?")


def _aggregates(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise _Problem(f"expected an array of aggregate names, got {show_value(v)}")
    seen: dict[str, None] = {}
    for i, a in enumerate(v):
        if a not in _FIXED_AGGREGATES and not _PERCENTILE.fullmatch(a):
            raise _Problem(
                f"unknown aggregate {show_value(a)} (expected count, sum, min, max, mean, "
                "first, last, stddev or pN with N in 1..99, e.g. p50)",
                i,
            )
        if a in seen:
            raise _Problem(f"aggregate {show_value(a)} is listed twice", i)
        seen[a] = None
    if "count" not in seen:  # SPEC 3: count is always present
        return ("count", *seen)
    return tuple(seen)


_DECODER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _format(v: object) -> str:
    s = _string(v)
    if s in ("json", "cbor", "auto"):
        return s
    # A custom decoder: "package.module:function" or an entry point in group
    # edge_agent.decoders. Resolved here, so a typo is refused with its line.
    from edge_agent.ingest.decode import resolve_custom_decoder

    if _DECODER.fullmatch(s) or _decoder_entry_point(s):
        try:
            resolve_custom_decoder(s)
        except ConfigError as e:
            raise _Problem(str(e)) from None
        return s
    raise _Problem(
        f'unknown format {show_value(s)} (expected "json", "cbor", "auto", a decoder '
        'written "package.module:function" or an entry point in group edge_agent.decoders)'
    )


def _decoder_entry_point(name: str) -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == name for ep in entry_points(group="edge_agent.decoders"))


# slots=True leaves no class attribute holding the default; ask the field.
_DEFAULT_SIZE: float = PipelineConfig.__dataclass_fields__["size"].default  # type: ignore[assignment]
_WINDOWS = ("tumbling", "sliding", "session", "count", "none")


def _window(v: object) -> str:
    s = _string(v)
    if s not in _WINDOWS:
        raise _Problem(
            f'unknown window {show_value(s)} (expected "tumbling", "sliding", "session", '
            '"count" or "none")'
        )
    return s


def _size_field(v: object) -> float | int:
    """Duration for time windows; the window kind decides later (an int stays an int)."""
    if type(v) is int:
        return v
    return _duration(positive=True)(v)


def _listen(v: object) -> str:
    s = _string(v)
    if s == "":
        return s
    bad = f'expected "host:port" (e.g. "127.0.0.1:9100", "[::1]:9100") or "", got {show_value(s)}'
    host, colon, port = s.rpartition(":")
    if not colon or not port.isdigit() or not port.isascii():
        raise _Problem(bad)
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")) or ":" not in host:
            raise _Problem(bad)
    elif ":" in host:
        raise _Problem(f'an IPv6 address goes in brackets, e.g. "[::1]:9100", got {show_value(s)}')
    if any(c.isspace() for c in host):
        raise _Problem(bad)
    if not 1 <= int(port) <= 65535:
        raise _Problem(f"port must be between 1 and 65535, got {show_value(s)}")
    return s


_PATH = object()  # marker: a path, resolved against the config file's directory
_FILE = object()  # marker: "" or an existing file, resolved likewise

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
    or k in ("log_level", "log_format", "topic", "late_topic", "status_topic", "when_full", "compression")
}
# Read by the `health` command as a client, not config: the loader leaves them alone.
NON_CONFIG_ENV: frozenset[str] = frozenset()  # every EDGE_AGENT_ variable is a config key (SPEC 1)
_ENV_LINE = 1 << 62  # an environment override sorts after every line of the file


def _env_value(raw: str) -> object:
    """SPEC 1: a TOML value when it parses as one, else the string itself."""
    if "\n" in raw or "\r" in raw:
        return raw
    try:
        doc = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    return doc["v"] if doc.keys() == {"v"} else raw


def _suggest(word: str, options: list[str]) -> str:
    import difflib  # only on the error path

    close = difflib.get_close_matches(word, options, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


class _Validator:
    def __init__(
        self,
        doc: dict[str, Any],
        name: str,
        locs: dict[tuple[Any, ...], int],
        environ: Mapping[str, str],
    ) -> None:
        self.doc = doc
        self.name = name
        self.locs = locs
        self.environ = environ
        self.base = os.path.dirname(os.path.abspath(name))
        self.env_origin: dict[tuple[str, str], str] = {}
        self.errors: list[tuple[int, str]] = []

    # -- reporting

    def order(self, path: tuple[Any, ...]) -> int:
        """Where a key was set: its line, after the file for overrides, -1 if defaulted."""
        if path[:2] in self.env_origin:
            return _ENV_LINE
        return self.locs.get(path, -1)

    def line(self, path: tuple[Any, ...]) -> int:
        """The key's line, else its nearest enclosing table's header line, else 1."""
        while path:
            if path in self.locs:
                return self.locs[path]
            path = path[:-1]
        return 1

    def error(self, path: tuple[Any, ...], problem: str, at: tuple[Any, ...] | None = None) -> None:
        """Report `problem` for key `path`; `at` is a more precise place (an array element)."""
        problem += self.pipeline_name(path)
        var = self.env_origin.get(path[:2]) if len(path) == 2 else None
        if var is not None:
            self.errors.append((_ENV_LINE, f"{self.name}: {var}: {_dotted(path)}: {problem}"))
            return
        line = self.line(at or path)
        self.errors.append((line, f"{self.name}:{line}: {_dotted(path)}: {problem}"))

    def pipeline_name(self, path: tuple[Any, ...]) -> str:
        """` (in pipeline "climate")` for a key of a named pipeline: `pipeline[3]` alone
        makes the reader count tables."""
        if len(path) < 3 or path[0] != "pipeline" or path[2] == "name":
            return ""
        tables = self.doc.get("pipeline")
        n = path[1]
        if not isinstance(tables, list) or not isinstance(n, int) or not 0 <= n < len(tables):
            return ""
        name = tables[n].get("name") if isinstance(tables[n], dict) else None
        return f" (in pipeline {json.dumps(name)})" if isinstance(name, str) and name else ""

    def conflict(self, a: tuple[Any, ...], b: tuple[Any, ...], problem: str) -> None:
        """Two keys disagree: name whichever was set later (SPEC 1)."""
        later, other = (a, b) if self.order(a) >= self.order(b) else (b, a)
        where = self.order(other)
        if where == _ENV_LINE:
            problem += f" (with {_dotted(other)} from {self.env_origin[other[:2]]})"
        elif where >= 0:
            problem += f" (with {_dotted(other)} on line {where})"
        else:
            problem += f" (with {_dotted(other)})"
        self.error(later, problem)

    # -- the document

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

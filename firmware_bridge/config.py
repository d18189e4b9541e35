"""The bridge's TOML config, parsed once into frozen dataclasses.

Same rules as the agent's (SPEC 1): unknown keys and wrong types are refused with
`FILE:LINE: section.key: problem`; durations are strings like "250ms" (plain numbers
are read as seconds).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_agent import units
from edge_agent.config.positions import KeyScanner, syntax_error
from edge_agent.errors import ConfigError
from edge_agent.units import listen_address

__all__ = [
    "BridgeConfig",
    "BridgeSection",
    "ClockSection",
    "FramesSection",
    "HealthSection",
    "PublishSection",
    "SourceSection",
    "load_config",
    "parse_config",
]

SOURCE_KINDS = ("serial", "pty", "stdin", "udp")
FORMATS = ("auto", "json", "kv", "cobs_cbor")
CHECKSUMS = ("optional", "required")
CLOCK_MODES = ("arrival", "board", "uptime_ms")
PARITIES = ("none", "even", "odd")
WHEN_FULL = ("drop_oldest", "drop_newest")
BAUDS = (
    1200,
    2400,
    4800,
    9600,
    19200,
    38400,
    57600,
    115200,
    230400,
    460800,
    500000,
    576000,
    921600,
    1000000,
    1152000,
    1500000,
    2000000,
)


@dataclass(frozen=True, slots=True)
class BridgeSection:
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class SourceSection:
    kind: str = "serial"  # serial, pty, stdin, udp
    path: str = "/dev/ttyACM0"  # serial or pty device (a udev by-id symlink is best)
    baud: int = 115200
    data_bits: int = 8
    parity: str = "none"
    stop_bits: int = 1
    # udp only. Loopback by default: datagrams are unauthenticated, so anyone who can
    # reach the port can inject readings (issue 13).
    listen: str = "127.0.0.1:5005"
    reopen_min: float = 0.1  # backoff between attempts to reopen a lost device...
    reopen_max: float = 5.0  # ...doubling up to this


@dataclass(frozen=True, slots=True)
class FramesSection:
    format: str = "auto"  # auto (json or kv per line), json, kv, cobs_cbor
    checksum: str = (
        "optional"  # "*HH" suffix checked when present; "required": lines without it drop
    )
    max_line: int = 1024  # bytes; longer lines (or COBS frames) are dropped
    default_id: str = ""  # id for frames without one; "" = the device name or UDP sender
    seq_field: str = "seq"
    seq_modulus: int = 0  # board counter wraps at this (e.g. 65536); 0 = never wraps
    max_boards: int = 256  # bound on per-board state


@dataclass(frozen=True, slots=True)
class ClockSection:
    mode: str = "arrival"  # arrival, board, uptime_ms
    field: str = "ts"  # the frame field carrying the board's time or uptime
    tolerance: float = 2.0  # uptime_ms: re-learn the offset when drift exceeds this


@dataclass(frozen=True, slots=True)
class PublishSection:
    host: str = "127.0.0.1"
    port: int = 1883
    topic_template: str = "sensors/{id}"
    qos: int = 1
    client_id: str = ""  # "" = firmware-bridge-<pid>
    queue_size: int = 10000  # frames held while the broker is away
    when_full: str = "drop_oldest"
    max_inflight: int = 1000  # handed to paho and not yet acknowledged
    reconnect_min: float = 0.1
    reconnect_max: float = 10.0
    keepalive: int = 30
    # The local broker's login, as edge-agent's [local] (scaffold's broker config takes
    # no anonymous clients): the password from a file, never from this config.
    username: str = ""
    password_file: str = ""


@dataclass(frozen=True, slots=True)
class HealthSection:
    listen: str = ""  # e.g. "127.0.0.1:9101"; "" = none (SIGUSR1 still prints)

    @property
    def address(self) -> tuple[str, int] | None:
        return listen_address(self.listen)


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    bridge: BridgeSection = field(default_factory=BridgeSection)
    source: SourceSection = field(default_factory=SourceSection)
    frames: FramesSection = field(default_factory=FramesSection)
    clock: ClockSection = field(default_factory=ClockSection)
    publish: PublishSection = field(default_factory=PublishSection)
    health: HealthSection = field(default_factory=HealthSection)
    source_file: Path | None = None


_SECTIONS: dict[str, type] = {
    "bridge": BridgeSection,
    "source": SourceSection,
    "frames": FramesSection,
    "clock": ClockSection,
    "publish": PublishSection,
    "health": HealthSection,
}
_DURATION_KEYS = {"reopen_min", "reopen_max", "tolerance", "reconnect_min", "reconnect_max"}


def _lines(text: str) -> Callable[..., int]:
    """`of(section, key=None)`: the line of a key, else of its section's header, else 1."""
    locs, _ = KeyScanner(text).run()

    def of(section: str, key: str | None = None) -> int:
        if key is not None and (section, key) in locs:
            return locs[(section, key)]
        if not section:  # a key outside any table
            return locs.get((key,), 1)
        return locs.get((section,), 1)

    return of


def parse_duration(value: Any) -> float:
    """Durations as the agent reads them (edge_agent.units), in the bridge's words."""
    try:
        return units.parse_duration(value)
    except ValueError as e:
        if str(e).startswith("expected a duration"):
            raise ValueError(f'expected a duration such as "2s", got {_show(value)}') from None
        raise


def _show(value: Any) -> str:
    """Values as the TOML file spells them: strings in double quotes."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _type_name(t: type) -> str:
    return {int: "an integer", str: "a string", float: "a duration", bool: "a boolean"}[t]


def _check_listen(value: str) -> None:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {_show(value)}")


def _validate(section: str, key: str, value: Any) -> None:
    """Value checks beyond the type; raise ValueError with the reason."""
    choices = {
        ("source", "kind"): SOURCE_KINDS,
        ("source", "parity"): PARITIES,
        ("frames", "format"): FORMATS,
        ("frames", "checksum"): CHECKSUMS,
        ("clock", "mode"): CLOCK_MODES,
        ("publish", "when_full"): WHEN_FULL,
        ("bridge", "log_level"): ("debug", "info", "warning", "error"),
    }.get((section, key))
    if choices is not None and value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {_show(value)}")
    if (section, key) == ("source", "baud") and value not in BAUDS:
        raise ValueError(f"unsupported baud rate {value}")
    if (section, key) == ("source", "data_bits") and value not in (5, 6, 7, 8):
        raise ValueError(f"expected 5, 6, 7 or 8, got {value}")
    if (section, key) == ("source", "stop_bits") and value not in (1, 2):
        raise ValueError(f"expected 1 or 2, got {value}")
    if key in ("listen",) and value:
        _check_listen(value)
    if (section, key) == ("publish", "port") and not 0 < value < 65536:
        raise ValueError(f"expected a port number, got {value}")
    if (section, key) == ("publish", "qos") and value not in (0, 1, 2):
        raise ValueError(f"expected 0, 1 or 2, got {value}")
    if (section, key) == ("publish", "topic_template"):
        try:
            sample = value.format(id="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"only {{id}} may be substituted ({e})") from None
        if not sample or "+" in sample or "#" in sample or "{id}" not in value:
            raise ValueError("must contain {id} and no wildcards")
    if key in ("max_line", "queue_size", "max_inflight", "max_boards", "keepalive") and value < 1:
        raise ValueError("must be at least 1")
    if (section, key) == ("frames", "seq_modulus") and value < 0:
        raise ValueError("must not be negative")
    if key == "password_file" and value and not Path(value).is_file():
        if "/" in value:
            raise ValueError(f"no such file: {_show(value)}")
        # a password written where its file belongs must not reach a log
        raise ValueError("no such file (the value is not shown: it may be the secret itself)")
    if (section, key) == ("frames", "default_id") and any(c in value for c in "/+#\0"):
        raise ValueError("must not contain '/', '+', '#'")


def parse_config(text: str, name: str = "<config>") -> BridgeConfig:
    """Validate TOML text; raise ConfigError reading `name:LINE: section.key: problem`."""
    of = _lines(text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(syntax_error(name, text, str(e), KeyScanner(text).run()[1])) from None
    built: dict[str, Any] = {}
    for section, table in doc.items():
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(f"{name}:{of(section)}: {section}: unknown section")
        if not isinstance(table, dict):
            raise ConfigError(f"{name}:{of('', section)}: {section}: expected a table")
        types = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            where = f"{name}:{of(section, key)}: {section}.{key}"
            if key not in types:
                raise ConfigError(f"{where}: unknown key")
            try:
                if key in _DURATION_KEYS:
                    value = parse_duration(value)
                else:
                    want = {"int": int, "str": str, "bool": bool}[str(types[key])]
                    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                        if key == "password_file":  # the value may be the secret itself
                            raise ValueError(f"expected {_type_name(want)} (a file's path)")
                        raise ValueError(f"expected {_type_name(want)}, got {_show(value)}")
                _validate(section, key, value)
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None
            kwargs[key] = value
        built[section] = cls(**kwargs)
    cfg = BridgeConfig(**built)
    _cross_check(cfg, of, name)
    return cfg


def _cross_check(cfg: BridgeConfig, of: Callable[..., int], name: str) -> None:
    s, p = cfg.source, cfg.publish
    if s.reopen_min > s.reopen_max:
        raise ConfigError(
            f"{name}:{of('source', 'reopen_max')}: source.reopen_max: smaller than reopen_min"
        )
    if p.reconnect_min > p.reconnect_max:
        raise ConfigError(
            f"{name}:{of('publish', 'reconnect_max')}: publish.reconnect_max: "
            "smaller than reconnect_min"
        )
    if cfg.clock.mode == "uptime_ms" and cfg.clock.tolerance <= 0:
        raise ConfigError(f"{name}:{of('clock', 'tolerance')}: clock.tolerance: must be > 0")


def load_config(path: str | Path) -> BridgeConfig:
    """Read and validate FILE; a missing or unreadable file is a ConfigError too."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{name}:0: cannot read config: {e}") from None
    cfg = parse_config(text, name)
    return BridgeConfig(
        cfg.bridge, cfg.source, cfg.frames, cfg.clock, cfg.publish, cfg.health, Path(path)
    )

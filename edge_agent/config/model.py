"""The config as frozen, typed sections (SPEC 1): what the loader builds, and all that leaves it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.units import (
    RateLimit,
    listen_address,
)
from edge_agent.windows.spec import WindowSpec, window_spec

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
    max_inflight: int = (
        64  # extension: unacknowledged batches at most (the adaptive window's ceiling)
    )
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

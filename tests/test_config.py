"""SPEC 1: the config file, its errors, defaults, overrides and hash."""

from __future__ import annotations

import hashlib
import socket
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import (
    AgentSection,
    BufferSection,
    Config,
    HealthSection,
    LocalSection,
    PipelineConfig,
    RateLimit,
    UpstreamSection,
    config_from_text,
    load_config,
    restart_needed,
)
from edge_agent.errors import ConfigError
from edge_agent.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_rate_limit,
    parse_size,
)

ROOT = Path(__file__).resolve().parent.parent
PIPE = "[[pipeline]]\n"


def load(text: str, env: dict[str, str] | None = None, name: str = "agent.toml") -> Config:
    return config_from_text(textwrap.dedent(text), name, env or {})


def error(text: str, env: dict[str, str] | None = None, name: str = "agent.toml") -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env, name)
    return str(info.value)


# The SPEC's own block, verbatim: every default.
SPEC_EXAMPLE = """\
[agent]
id = "<hostname>"                  # appears in every batch and topic
state_dir = "/var/lib/edge-agent"  # SQLite files, pid file, checkpoints
log_level = "info"

[local]                            # the broker that sensors publish to
host = "127.0.0.1"
port = 1883
qos = 1                            # subscription QoS
max_future_skew = "5m"             # readings further ahead of the wall clock are rejected

[upstream]                         # the broker that batches go to
host = "127.0.0.1"
port = 1883
tls = false                        # ca_file, cert_file, key_file for (m)TLS
username = ""                      # password_file = "..." (never the password itself)
topic = "edge/{agent}/batches"     # {agent} is agent.id
late_topic = ""                    # "" = late readings past allowed lateness are dropped
qos = 1
max_batch_windows = 500            # a batch is sent when it holds this many records,
max_batch_bytes = "64KiB"          # or would exceed this size,
max_batch_delay = "1s"             # or its oldest record is this old
rate_limit = ""                    # e.g. "20/s" batches, "64KiB/s" bytes; "" = none

[buffer]                           # store-and-forward while upstream is unreachable
max_bytes = "256MiB"
when_full = "drop_oldest"          # or "drop_newest"; every drop is counted
ttl = "7d"                         # older batches are dropped (counted) instead of sent

[health]
listen = "127.0.0.1:9100"          # "" disables the endpoint

[[pipeline]]                       # one or more
name = "climate"
topics = ["sensors/#"]             # MQTT topic filters on the local broker
format = "auto"                    # "json", "cbor" or "auto"
window = "tumbling"                # "tumbling", "sliding", "session", "count" or "none"
size = "10s"                       # window length; for "count": readings per window (integer)
slide = ""                         # sliding only: hop between window starts
gap = ""                           # session only: inactivity that closes a session
max_out_of_orderness = "2s"        # watermark lag behind the newest event time seen
allowed_lateness = "0s"            # how long after it fired a window still takes late readings
idle_timeout = "30s"               # wall time without readings after which a key's open windows fire
aggregates = ["count", "min", "max", "mean"]
"""


# --------------------------------------------------------------------------- defaults


def test_only_pipeline_is_required_and_every_default_matches_the_spec() -> None:
    cfg = load(PIPE)
    # SPEC 1: hostname + "-" + 8 hex digits of sha256(b"edge-agent:" + machine id), or
    # the hostname alone where /etc/machine-id is missing (tests/security has both cases).
    try:
        mid = Path("/etc/machine-id").read_bytes().strip()
    except OSError:
        mid = b""
    expected_id = socket.gethostname()
    if mid:
        expected_id += "-" + hashlib.sha256(b"edge-agent:" + mid).hexdigest()[:8]
    assert cfg.agent == AgentSection(
        id=expected_id, state_dir=Path("/var/lib/edge-agent"), log_level="info"
    )
    assert cfg.local == LocalSection(host="127.0.0.1", port=1883, qos=1, max_future_skew=300.0)
    assert cfg.upstream == UpstreamSection(
        host="127.0.0.1",
        port=1883,
        tls=False,
        username="",
        topic="edge/{agent}/batches",
        late_topic="",
        qos=1,
        max_batch_windows=500,
        max_batch_bytes=65536,
        max_batch_delay=1.0,
        rate_limit=None,
    )
    assert cfg.buffer == BufferSection(
        max_bytes=256 * 2**20, when_full="drop_oldest", ttl=7 * 86400.0
    )
    assert cfg.health == HealthSection(listen="127.0.0.1:9100")
    assert cfg.pipelines == (
        PipelineConfig(
            name="climate",
            topics=("sensors/#",),
            format="auto",
            window="tumbling",
            size=10.0,
            slide=None,
            gap=None,
            max_out_of_orderness=2.0,
            allowed_lateness=0.0,
            idle_timeout=30.0,
            aggregates=("count", "min", "max", "mean"),
        ),
    )
    # extensions
    assert cfg.agent.log_format == "text"
    assert (cfg.local.client_id, cfg.local.session_expiry) == ("", 7 * 86400.0)
    assert cfg.buffer.checkpoint_interval == 0.25
    assert cfg.source == Path("agent.toml")
    assert cfg.batch_topic == f"edge/{expected_id}/batches"


def test_the_spec_block_is_exactly_the_defaults() -> None:
    spec = config_from_text(SPEC_EXAMPLE, "agent.toml", {})
    bare = load('[agent]\nid = "<hostname>"\n' + PIPE)
    assert spec == bare
    assert spec.hash == bare.hash


@pytest.mark.parametrize("path", ["config/agent.toml", "config/two-pipelines.toml"])
def test_example_configs_load(path: str) -> None:
    cfg = load_config(ROOT / path, environ={})
    assert cfg.pipelines and len(cfg.hash) == 12


def test_two_pipelines_example() -> None:
    cfg = load_config(ROOT / "config/two-pipelines.toml", environ={})
    minute, alerting = cfg.pipelines
    assert (minute.window, minute.size) == ("tumbling", 60.0)
    assert (alerting.window, alerting.size, alerting.slide) == ("sliding", 300.0, 60.0)
    assert cfg.upstream.rate_limit == RateLimit(batches_per_s=20.0, bytes_per_s=65536.0)
    assert cfg.batch_topic == "farms/greenhouse-1/batches"
    assert cfg.late_topic == "farms/greenhouse-1/late"


def test_commented_example_shows_every_key_with_its_default_and_template_matches() -> None:
    text = (ROOT / "config/agent.toml").read_text()
    template = ROOT / "edge_agent/cli/templates/agent.toml"
    assert template.read_text() == text
    from edge_agent.config import _PIPELINE, _SCHEMA

    for section, keys in _SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} = " in text or f"# {key} = " in text, f"{section}.{key}"
    for key in _PIPELINE:
        assert f"\n{key} = " in text, f"pipeline.{key}"
    example = load_config(ROOT / "config/agent.toml", environ={})
    assert example == replace_source(load(PIPE), example.source)


def replace_source(cfg: Config, source: Path | None) -> Config:
    from dataclasses import replace

    return replace(cfg, source=source)


def test_count_is_always_an_aggregate_and_order_is_kept() -> None:
    cfg = load('[[pipeline]]\naggregates = ["p95", "max", "p5"]\n')
    assert cfg.pipelines[0].aggregates == ("count", "p95", "max", "p5")
    cfg = load('[[pipeline]]\naggregates = ["max", "count", "stddev", "p1", "p99"]\n')
    assert cfg.pipelines[0].aggregates == ("max", "count", "stddev", "p1", "p99")
    assert load("[[pipeline]]\naggregates = []\n").pipelines[0].aggregates == ("count",)


def test_window_kinds() -> None:
    cfg = load(
        """
        [[pipeline]]
        name = "t"
        [[pipeline]]
        name = "s"
        window = "sliding"
        size = "1m"
        slide = "15s"
        [[pipeline]]
        name = "g"
        window = "session"
        gap = "30s"
        size = "10s"   # ignored by sessions: the commented template keeps it
        slide = ""
        [[pipeline]]
        name = "c"
        window = "count"
        size = 100
        [[pipeline]]
        name = "n"
        window = "none"
        topics = ["raw/+/x", "$share/g/raw/#", "+"]
        format = "tests.decoders:triple_decoder"
        """
    )
    t, s, g, c, n = cfg.pipelines
    assert (t.window, t.size, t.slide, t.gap) == ("tumbling", 10.0, None, None)
    assert (s.size, s.slide) == (60.0, 15.0)
    assert g.gap == 30.0 and g.slide is None
    assert c.size == 100 and type(c.size) is int
    assert n.topics == ("raw/+/x", "$share/g/raw/#", "+")
    assert n.format == "tests.decoders:triple_decoder"


def test_a_custom_decoder_that_cannot_load_is_refused_with_its_line() -> None:
    text = '[[pipeline]]\nname = "n"\nformat = "no_such_pkg.decoders:decode"\n'
    with pytest.raises(ConfigError) as info:
        config_from_text(text)
    msg = str(info.value)
    assert msg.startswith("agent.toml:3: pipeline[0].format: ") and "no_such_pkg" in msg, msg


def test_sliding_slide_equal_to_size_is_fine() -> None:
    p = load('[[pipeline]]\nwindow = "sliding"\nsize = "10s"\nslide = "10s"\n').pipelines[0]
    assert p.slide == p.size == 10.0


def test_values_of_every_section() -> None:
    cfg = load(
        """
        [agent]
        id = "pi-7"
        log_level = "DEBUG"
        log_format = "json"
        [local]
        host = "broker.lan"
        port = 1884
        qos = 2
        max_future_skew = 0
        client_id = "me"
        session_expiry = "1h"
        [upstream]
        username = "u"
        topic = "x/{agent}"
        late_topic = "x/{agent}/late"
        qos = 0
        max_batch_windows = 1
        max_batch_bytes = 1000
        max_batch_delay = "250ms"
        rate_limit = "64KiB/s"
        [buffer]
        max_bytes = "1GiB"
        when_full = "drop_newest"
        ttl = "2h"
        checkpoint_interval = "1s"
        [health]
        listen = "[::1]:9200"
        [[pipeline]]
        """
    )
    assert cfg.agent.log_level == "debug" and cfg.agent.log_format == "json"
    assert (cfg.local.host, cfg.local.port, cfg.local.qos, cfg.local.max_future_skew) == (
        "broker.lan",
        1884,
        2,
        0.0,
    )
    assert cfg.local.session_expiry == 3600.0
    assert cfg.batch_topic == "x/pi-7" and cfg.late_topic == "x/pi-7/late"
    assert cfg.upstream.max_batch_delay == 0.25 and cfg.upstream.max_batch_bytes == 1000
    assert cfg.upstream.rate_limit == RateLimit(None, 65536.0)
    assert (cfg.buffer.max_bytes, cfg.buffer.when_full, cfg.buffer.ttl) == (
        2**30,
        "drop_newest",
        7200.0,
    )
    assert cfg.health.address == ("::1", 9200)
    assert load('[health]\nlisten = ""\n' + PIPE).health.address is None


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    f = tmp_path / "agent.toml"
    f.write_text(
        '[agent]\nstate_dir = "state"\n[upstream]\ntls = true\nca_file = "ca.pem"\n' + PIPE
    )
    cfg = load_config(f, environ={})
    assert cfg.agent.state_dir == tmp_path / "state"
    assert cfg.upstream.ca_file == str(tmp_path / "ca.pem")
    assert cfg.source == f


# --------------------------------------------------------------------------- errors

ERRORS = [
    # (config text, exact message)
    (
        '[upstream]\nhost = "h"\nport = "x"\n' + PIPE,
        'agent.toml:3: upstream.port: expected an integer, got "x"',
    ),
    (
        "[upstream]\nport = 1883.0\n" + PIPE,
        "agent.toml:2: upstream.port: expected an integer, got 1883.0",
    ),
    (
        "[upstream]\nport = true\n" + PIPE,
        "agent.toml:2: upstream.port: expected an integer, got true",
    ),
    (
        "[upstream]\nport = 0\n" + PIPE,
        "agent.toml:2: upstream.port: must be between 1 and 65535, got 0",
    ),
    (
        "[local]\nport = 65536\n" + PIPE,
        "agent.toml:2: local.port: must be between 1 and 65535, got 65536",
    ),
    ("[local]\nqos = 3\n" + PIPE, "agent.toml:2: local.qos: must be between 0 and 2, got 3"),
    (
        '[upstream]\ntls = "yes"\n' + PIPE,
        'agent.toml:2: upstream.tls: expected true or false, got "yes"',
    ),
    ("[agent]\nid = 42\n" + PIPE, "agent.toml:2: agent.id: expected a string, got 42"),
    ('[agent]\nid = ""\n' + PIPE, "agent.toml:2: agent.id: must not be empty"),
    (
        '[agent]\nid = "a/+"\n' + PIPE,
        'agent.toml:2: agent.id: must not contain "+": it goes into MQTT topic names',
    ),
    (
        '\n\n[agent]\nlog_level = "verbose"\n' + PIPE,
        'agent.toml:4: agent.log_level: expected "debug", "info", "warning" or "error", got "verbose"',
    ),
    (
        '[buffer]\nwhen_full = "block"\n' + PIPE,
        'agent.toml:2: buffer.when_full: expected "drop_oldest" or "drop_newest", got "block"',
    ),
    (
        '[buffer]\nttl = "7 days"\n' + PIPE,
        'agent.toml:2: buffer.ttl: expected a duration such as "10s" or "250ms" (units ms, s, m, h, d), got "7 days"',
    ),
    ('[buffer]\nttl = "0s"\n' + PIPE, 'agent.toml:2: buffer.ttl: must be longer than 0, got "0s"'),
    (
        '[buffer]\nmax_bytes = "lots"\n' + PIPE,
        'agent.toml:2: buffer.max_bytes: expected a size such as "64KiB" or a whole number of bytes, got "lots"',
    ),
    (
        "[buffer]\nmax_bytes = 0\n" + PIPE,
        "agent.toml:2: buffer.max_bytes: must be at least 1 bytes, got 0",
    ),
    (
        '[upstream]\nmax_batch_bytes = "0.1KiB"\n' + PIPE,
        'agent.toml:2: upstream.max_batch_bytes: "0.1KiB" is not a whole number of bytes',
    ),
    (
        '[upstream]\nrate_limit = "20/min"\n' + PIPE,
        'agent.toml:2: upstream.rate_limit: expected a rate limit such as "20/s" (batches), "64KiB/s" (bytes) or "20/s, 64KiB/s", got "20/min"',
    ),
    (
        '[upstream]\nrate_limit = "20/s, 30/s"\n' + PIPE,
        'agent.toml:2: upstream.rate_limit: gives the batches-per-second limit twice: "20/s, 30/s"',
    ),
    (
        '[upstream]\ntopic = "edge/+/batches"\n' + PIPE,
        'agent.toml:2: upstream.topic: a topic to publish to cannot hold wildcards, got "edge/+/batches"',
    ),
    ('[upstream]\ntopic = ""\n' + PIPE, "agent.toml:2: upstream.topic: must not be empty"),
    (
        '[health]\nlisten = "9100"\n' + PIPE,
        'agent.toml:2: health.listen: expected "host:port" (e.g. "127.0.0.1:9100", "[::1]:9100") or "", got "9100"',
    ),
    (
        '[health]\nlisten = "::1:9100"\n' + PIPE,
        'agent.toml:2: health.listen: an IPv6 address goes in brackets, e.g. "[::1]:9100", got "::1:9100"',
    ),
    (
        '[health]\nlisten = "0.0.0.0:70000"\n' + PIPE,
        'agent.toml:2: health.listen: port must be between 1 and 65535, got "0.0.0.0:70000"',
    ),
    # unknown keys and sections
    (
        "[upstream]\nprot = 1\n" + PIPE,
        'agent.toml:2: upstream.prot: unknown key (did you mean "port"?)',
    ),
    ("[upstream]\nfrobnicate = 1\n" + PIPE, "agent.toml:2: upstream.frobnicate: unknown key"),
    (
        PIPE + "[upstrem]\nhost = 1\n",
        'agent.toml:2: upstrem: unknown section (did you mean "upstream"?)',
    ),
    (PIPE + "\n[metrics]\n", "agent.toml:3: metrics: unknown section"),
    ("x = 1\n" + PIPE, "agent.toml:1: x: unknown key; keys belong in a section such as [agent]"),
    ('[agent]\nid = "a"\n[agent.extra]\nx = 1\n' + PIPE, "agent.toml:3: agent.extra: unknown key"),
    (
        '[local]\nhost = "h"\n\n[[pipeline]]\nnmae = "x"\n',
        'agent.toml:5: pipeline[0].nmae: unknown key (did you mean "name"?)',
    ),
    # dotted keys and inline tables point at their own line
    ('[[pipeline]]\n\nupstream.port = "x"\n', "agent.toml:3: pipeline[0].upstream: unknown key"),
    ('\nupstream.port = "x"\n' + PIPE, 'agent.toml:2: upstream.port: expected an integer, got "x"'),
    (
        '\nupstream = { host = "h", port = "x" }\n' + PIPE,
        'agent.toml:2: upstream.port: expected an integer, got "x"',
    ),
    # pipelines
    ("", "agent.toml:1: pipeline: missing; at least one [[pipeline]] table is required"),
    ("pipeline = []\n", "agent.toml:1: pipeline: at least one [[pipeline]] table is required"),
    (
        '\n[pipeline]\nname = "x"\n',
        "agent.toml:2: pipeline: expected one or more [[pipeline]] tables, got a table ([pipeline])",
    ),
    (
        '[[pipeline]]\nname = "a"\n[[pipeline]]\nname = "b"\n[[pipeline]]\nname = "c"\nwindow = "hopping"\n',
        'agent.toml:7: pipeline[2].window: unknown window "hopping" (expected "tumbling", "sliding", "session", "count" or "none") (in pipeline "c")',
    ),
    (
        '[[pipeline]]\n[[pipeline]]\nformat = "xml"\n',
        'agent.toml:3: pipeline[1].format: unknown format "xml" (expected "json", "cbor", "auto", a decoder written "package.module:function" or an entry point in group edge_agent.decoders)',
    ),
    (
        '[[pipeline]]\nformat = "pkg.mod:"\n',
        'agent.toml:2: pipeline[0].format: unknown format "pkg.mod:" (expected "json", "cbor", "auto", a decoder written "package.module:function" or an entry point in group edge_agent.decoders)',
    ),
    (
        '[[pipeline]]\nsize = "10 seconds"\n',
        'agent.toml:2: pipeline[0].size: expected a duration such as "10s" or "250ms" (units ms, s, m, h, d), got "10 seconds"',
    ),
    (
        '[[pipeline]]\nsize = "0s"\n',
        'agent.toml:2: pipeline[0].size: must be longer than 0, got "0s"',
    ),
    ("[[pipeline]]\nsize = -5\n", "agent.toml:2: pipeline[0].size: must be longer than 0, got -5"),
    (
        '[[pipeline]]\nallowed_lateness = "-1s"\n',
        'agent.toml:2: pipeline[0].allowed_lateness: expected a duration such as "10s" or "250ms" (units ms, s, m, h, d), got "-1s"',
    ),
    ('[[pipeline]]\nname = ""\n', "agent.toml:2: pipeline[0].name: must not be empty"),
    (
        '[[pipeline]]\ntopics = "sensors/#"\n',
        'agent.toml:2: pipeline[0].topics: expected an array of topic filters (strings), got "sensors/#"',
    ),
    (
        "[[pipeline]]\ntopics = []\n",
        "agent.toml:2: pipeline[0].topics: needs at least one topic filter",
    ),
    (
        '[[pipeline]]\ntopics = ["a/#/b"]\n',
        'agent.toml:2: pipeline[0].topics: malformed topic filter "a/#/b": "#" must be alone in the last level',
    ),
    (
        '[[pipeline]]\ntopics = [\n  "ok/+",\n  "a/b#",\n]\n',
        'agent.toml:4: pipeline[0].topics: malformed topic filter "a/b#": "#" must be alone in the last level',
    ),
    (
        '[[pipeline]]\ntopics = ["a/x+/b"]\n',
        'agent.toml:2: pipeline[0].topics: malformed topic filter "a/x+/b": "+" must be alone in its level',
    ),
    (
        '[[pipeline]]\ntopics = [""]\n',
        'agent.toml:2: pipeline[0].topics: malformed topic filter "": it is empty',
    ),
    (
        '[[pipeline]]\ntopics = ["a/\\u0000"]\n',
        'agent.toml:2: pipeline[0].topics: malformed topic filter "a/\\u0000": contains U+0000',
    ),
    (
        '[[pipeline]]\naggregates = ["mean", "p0"]\n',
        'agent.toml:2: pipeline[0].aggregates: unknown aggregate "p0" (expected count, sum, min, max, mean, first, last, stddev or pN with N in 1..99, e.g. p50)',
    ),
    (
        '[[pipeline]]\naggregates = [\n "p05",\n]\n',
        'agent.toml:3: pipeline[0].aggregates: unknown aggregate "p05" (expected count, sum, min, max, mean, first, last, stddev or pN with N in 1..99, e.g. p50)',
    ),
    (
        '[[pipeline]]\naggregates = ["p100"]\n',
        'agent.toml:2: pipeline[0].aggregates: unknown aggregate "p100" (expected count, sum, min, max, mean, first, last, stddev or pN with N in 1..99, e.g. p50)',
    ),
    (
        '[[pipeline]]\naggregates = ["min", "min"]\n',
        'agent.toml:2: pipeline[0].aggregates: aggregate "min" is listed twice',
    ),
    # missing needed keys: LINE is the table's header
    (
        '[[pipeline]]\nname = "a"\n\n[[pipeline]]\nname = "b"\nwindow = "sliding"\n',
        'agent.toml:4: pipeline[1].slide: missing; a sliding window needs slide, the hop between window starts (in pipeline "b")',
    ),
    (
        '\n[[pipeline]]\nwindow = "session"\n',
        "agent.toml:2: pipeline[0].gap: missing; a session window needs gap, the inactivity that closes a session",
    ),
    (
        '[[pipeline]]\nwindow = "count"\n',
        "agent.toml:1: pipeline[0].size: missing; a count window needs size, the number of readings per window",
    ),
    (
        '[upstream]\ntls = true\n\nkey_file = "/etc/hostname"\n' + PIPE,
        "agent.toml:1: upstream.cert_file: missing; key_file needs cert_file",
    ),
    # an empty slide is there but says nothing: the error points at it
    (
        '[[pipeline]]\nwindow = "sliding"\nslide = ""\n',
        "agent.toml:3: pipeline[0].slide: missing; a sliding window needs slide, the hop between window starts",
    ),
    # conflicting keys: the later one is named
    (
        '[[pipeline]]\nwindow = "sliding"\nsize = "10s"\nslide = "20s"\n',
        "agent.toml:4: pipeline[0].slide: slide larger than size leaves gaps between windows (with pipeline[0].size on line 3)",
    ),
    (
        '[[pipeline]]\nwindow = "sliding"\nslide = "20s"\nsize = "10s"\n',
        "agent.toml:4: pipeline[0].size: slide larger than size leaves gaps between windows (with pipeline[0].slide on line 3)",
    ),
    (
        '[[pipeline]]\nwindow = "sliding"\nslide = "20s"\n',
        "agent.toml:3: pipeline[0].slide: slide larger than size leaves gaps between windows (with pipeline[0].size)",
    ),
    (
        '[[pipeline]]\nwindow = "tumbling"\nslide = "5s"\n',
        "agent.toml:3: pipeline[0].slide: slide only applies to sliding windows, not tumbling (with pipeline[0].window on line 2)",
    ),
    (
        '[[pipeline]]\ngap = "5s"\nwindow = "sliding"\nslide = "1s"\n',
        "agent.toml:3: pipeline[0].window: gap only applies to session windows, not sliding (with pipeline[0].gap on line 2)",
    ),
    (
        '[[pipeline]]\nwindow = "count"\nsize = "10s"\n',
        'agent.toml:3: pipeline[0].size: a count window\'s size is a whole number of readings >= 1, got "10s" (with pipeline[0].window on line 2)',
    ),
    (
        '[[pipeline]]\nname = "x"\n[[pipeline]]\nname = "y"\n[[pipeline]]\nname = "x"\n',
        'agent.toml:6: pipeline[2].name: duplicate pipeline name "x" (with pipeline[0].name on line 2)',
    ),
    (
        "[[pipeline]]\n[[pipeline]]\n",
        'agent.toml:2: pipeline[1].name: duplicate pipeline name "climate" (with pipeline[0].name)',
    ),
    (
        '[upstream]\ntls = false\ncert_file = "/etc/hostname"\n' + PIPE,
        "agent.toml:3: upstream.cert_file: cert_file needs tls = true (with upstream.tls on line 2)",
    ),
    (
        '[upstream]\ntls = true\nca_file = "/no/such/ca.pem"\n' + PIPE,
        'agent.toml:3: upstream.ca_file: no such file: "/no/such/ca.pem"',
    ),
    # TOML syntax, from tomllib's message
    ('[agent]\nid = "a"\nlog_level = \n' + PIPE, "agent.toml:3: invalid value (column 13)"),
    ('[agent]\nid = "a\n' + PIPE, "agent.toml:2: illegal character '\\n' (column 8)"),
    ("[agent\n" + PIPE, "agent.toml:1: expected ']' at the end of a table declaration (column 7)"),
    ("[[pipeline]]\nname = ", "agent.toml:2: invalid value (at end of file)"),
    (
        "[upstream]\nport = 1\nport = 2\n" + PIPE,
        "agent.toml:3: upstream.port: key defined twice (first on line 2)",
    ),
    (
        "[upstream]\nport = 1\n\n[upstream]\n" + PIPE,
        "agent.toml:4: upstream: section declared twice (first on line 1)",
    ),
    (
        '[[pipeline]]\nname = "a"\nname = "b"\n',
        "agent.toml:3: pipeline[0].name: key defined twice (first on line 2)",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), ERRORS, ids=[m.partition(": ")[2][:50] for _, m in ERRORS]
)
def test_error_messages(text: str, message: str) -> None:
    assert error(text) == message


def test_file_name_is_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "conf" / "site.toml"
    f.parent.mkdir()
    f.write_text('[[pipeline]]\n\nwindow = "x"\n')
    with pytest.raises(ConfigError, match=rf"^{f}:3: pipeline\[0\]\.window: unknown window "):
        load_config(f, environ={})
    monkeypatch.chdir(f.parent)
    with pytest.raises(ConfigError, match=r"^\./site\.toml:3: pipeline\[0\]\.window: "):
        load_config("./site.toml", environ={})


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nope/agent\.toml: no such file$"):
        load_config("nope/agent.toml", environ={})
    with pytest.raises(ConfigError, match=r": is a directory"):
        load_config(tmp_path, environ={})
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[[pipeline]]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=rf"^{bad}:2: not UTF-8 text$"):
        load_config(bad, environ={})


def test_every_problem_is_reported_in_file_order() -> None:
    msg = error(
        """\
        [[pipeline]]
        window = "nope"
        [upstream]
        port = "x"
        qos = 7
        [junk]
        """
    )
    assert msg.splitlines() == [
        'agent.toml:2: pipeline[0].window: unknown window "nope" (expected "tumbling", "sliding", "session", "count" or "none")',
        'agent.toml:4: upstream.port: expected an integer, got "x"',
        "agent.toml:5: upstream.qos: must be between 0 and 2, got 7",
        "agent.toml:6: junk: unknown section",
    ]


def test_line_numbers_survive_multiline_strings_arrays_and_comments() -> None:
    text = '''\
    # [upstream]
    [agent]
    id = """
    [upstream]
    port = "not here"
    """   # a comment with "quotes" and [brackets]
    state_dir = \'\'\'/var/lib/x\'\'\'
    [[pipeline]]
    topics = [ # the filters
      "a/#",  # ok
      'b/+/c',
    ]
    aggregates = [ "min",
      { x = 1 },
    ]
    [ "upstream" ]
    host = "h"
    port = "here"
    '''
    assert error(text).splitlines() == [
        "agent.toml:13: pipeline[0].aggregates: expected an array of aggregate names, got an array",
        'agent.toml:18: upstream.port: expected an integer, got "here"',
    ]


# --------------------------------------------------------------------------- environment


def test_environment_overrides_single_keys() -> None:
    env = {
        "EDGE_AGENT_LOCAL_PORT": "1884",
        "EDGE_AGENT_UPSTREAM_HOST": "broker",
        "EDGE_AGENT_UPSTREAM_MAX_BATCH_WINDOWS": "20",
        "EDGE_AGENT_UPSTREAM_MAX_BATCH_DELAY": "250ms",
        "EDGE_AGENT_UPSTREAM_RATE_LIMIT": "5/s",
        "EDGE_AGENT_AGENT_STATE_DIR": "/tmp/edge-state",
        "EDGE_AGENT_AGENT_ID": "42",  # a string key takes the text, not the TOML integer
        "EDGE_AGENT_BUFFER_MAX_BYTES": "1MiB",
        "EDGE_AGENT_BUFFER_TTL": "60",  # a TOML integer: seconds
        "EDGE_AGENT_HEALTH_LISTEN": "[::1]:9300",
        "EDGE_AGENT_LOCAL_HOST": '"quoted.host"',  # a TOML string
        "PATH": "/usr/bin",  # not ours
        "edge_agent_local_port": "1",  # not upper case: not an override
    }
    cfg = load("[local]\nport = 1000\n[upstream]\ntls = false\n" + PIPE, env)
    assert cfg.local.port == 1884
    assert cfg.local.host == "quoted.host"
    assert cfg.upstream.host == "broker"
    assert cfg.upstream.max_batch_windows == 20
    assert cfg.upstream.max_batch_delay == 0.25
    assert cfg.upstream.rate_limit == RateLimit(5.0, None)
    assert cfg.agent.state_dir == Path("/tmp/edge-state")
    assert cfg.agent.id == "42"
    assert cfg.buffer.max_bytes == 2**20 and cfg.buffer.ttl == 60.0
    assert cfg.health.address == ("::1", 9300)
    assert load(PIPE, {"EDGE_AGENT_UPSTREAM_TLS": "true"}).upstream.tls is True


def test_load_config_reads_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(PIPE)
    monkeypatch.setenv("EDGE_AGENT_UPSTREAM_PORT", "8883")
    assert load_config(f).upstream.port == 8883
    assert load_config(f, environ={}).upstream.port == 1883


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"EDGE_AGENT_LOCAL_PORT": "abc"},
            'agent.toml: EDGE_AGENT_LOCAL_PORT: local.port: expected an integer, got "abc"',
        ),
        (
            {"EDGE_AGENT_UPSTREAM_QOS": "1.5"},
            "agent.toml: EDGE_AGENT_UPSTREAM_QOS: upstream.qos: expected an integer, got 1.5",
        ),
        (
            {"EDGE_AGENT_UPSTREAM_PROT": "1"},
            "agent.toml: EDGE_AGENT_UPSTREAM_PROT: names no config key (expected EDGE_AGENT_<SECTION>_<KEY>, e.g. EDGE_AGENT_UPSTREAM_HOST)",
        ),
        (
            {"EDGE_AGENT_METRICS_PORT": "1"},
            "agent.toml: EDGE_AGENT_METRICS_PORT: names no config key (expected EDGE_AGENT_<SECTION>_<KEY>, e.g. EDGE_AGENT_UPSTREAM_HOST)",
        ),
        (
            {"EDGE_AGENT_UPSTREAM": "x"},
            "agent.toml: EDGE_AGENT_UPSTREAM: names no config key (expected EDGE_AGENT_<SECTION>_<KEY>, e.g. EDGE_AGENT_UPSTREAM_HOST)",
        ),
        (
            {"EDGE_AGENT_LOCAL_Port": "1"},
            "agent.toml: EDGE_AGENT_LOCAL_Port: names no config key (expected EDGE_AGENT_<SECTION>_<KEY>, e.g. EDGE_AGENT_UPSTREAM_HOST)",
        ),
        (
            {"EDGE_AGENT_PIPELINE_SIZE": "5s"},
            "agent.toml: EDGE_AGENT_PIPELINE_SIZE: [[pipeline]] keys cannot be overridden from the environment",
        ),
        (
            {"EDGE_AGENT_UPSTREAM_TLS": "false"},
            "agent.toml: EDGE_AGENT_UPSTREAM_TLS: upstream.tls: ca_file needs tls = true (with upstream.ca_file on line 3)",
        ),
    ],
)
def test_environment_errors(env: dict[str, str], message: str) -> None:
    text = '[upstream]\ntls = true\nca_file = "/etc/hostname"\n' + PIPE
    assert error(text, env) == message


def test_environment_error_comes_after_file_errors() -> None:
    msg = error("[local]\nqos = 9\n" + PIPE, {"EDGE_AGENT_NOPE_X": "1"})
    assert msg.splitlines() == [
        "agent.toml:2: local.qos: must be between 0 and 2, got 9",
        "agent.toml: EDGE_AGENT_NOPE_X: names no config key (expected EDGE_AGENT_<SECTION>_<KEY>, e.g. EDGE_AGENT_UPSTREAM_HOST)",
    ]


# --------------------------------------------------------------------------- hash


def test_hash_ignores_formatting_comments_order_and_spelling() -> None:
    a = load(
        """
        [upstream]
        host = "up"
        max_batch_delay = "1s"
        [[pipeline]]
        name = "p"
        size = "1m"
        """
    )
    b = load(
        """
        # the same thing, differently written
        [[pipeline]]
        size   = 60       # one minute
        name='p'

        [upstream]
        max_batch_delay = "1000ms"
        host = "up"
        port = 1883       # the default, spelled out
        """
    )
    assert a.hash == b.hash
    assert len(a.hash) == 12 and int(a.hash, 16) >= 0


def test_hash_changes_with_any_value_and_with_overrides() -> None:
    base = load('[agent]\nid = "a"\n' + PIPE)
    variants = [
        load('[agent]\nid = "b"\n' + PIPE),
        load('[agent]\nid = "a"\n[[pipeline]]\nsize = "11s"\n'),
        load('[agent]\nid = "a"\n[[pipeline]]\naggregates = ["min", "max"]\n'),
        load('[agent]\nid = "a"\n[[pipeline]]\naggregates = ["count", "max", "min", "mean"]\n'),
        load('[agent]\nid = "a"\n' + PIPE + PIPE.replace("]]", "]]\nname = 'b'")),
        load('[agent]\nid = "a"\n' + PIPE, {"EDGE_AGENT_UPSTREAM_HOST": "other"}),
        load('[agent]\nid = "a"\n[upstream]\nrate_limit = "1/s"\n' + PIPE),
    ]
    hashes = {base.hash, *(v.hash for v in variants)}
    # count is always added, so leaving it out is the same effective config
    implied = load('[agent]\nid = "a"\n[[pipeline]]\naggregates = ["min", "max", "mean"]\n')
    assert implied.hash == base.hash
    assert len(hashes) == 1 + len(variants)


def test_restart_needed() -> None:
    a = load('[agent]\nid = "a"\n' + PIPE)
    assert restart_needed(a, load('[agent]\nid = "a"\n[[pipeline]]\nsize = "5s"\n')) == []
    assert restart_needed(a, load('[agent]\nid = "b"\nstate_dir = "/x"\n' + PIPE)) == [
        "agent.id",
        "agent.state_dir",
    ]


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("0s", 0.0),
        ("1.5s", 1.5),
        (".5m", 30.0),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        (" 10s ", 10.0),
        ("10", 10.0),
        ("2.5", 2.5),
        (3, 3.0),
        (0.1, 0.1),
        ("100ms", 0.1),
        ("1ms", 0.001),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["", "s", "10x", "10 seconds", "-1s", "1e3s", "10S", "5M", "1h-30m", "ms", True, [1]]
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(bad)  # type: ignore[arg-type]


def test_parse_duration_rejects_negative_and_infinite_numbers() -> None:
    with pytest.raises(ValueError, match="must not be negative, got -1"):
        parse_duration(-1)
    with pytest.raises(ValueError, match="expected a finite duration, got inf"):
        parse_duration(float("inf"))


@given(st.integers(0, 10**12), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_duration_terms_are_exact(n: int, unit: str) -> None:
    num, den = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1), "d": (86400, 1)}[unit]
    assert parse_duration(f"{n}{unit}") == n * num / den


@given(st.integers(0, 10**9), st.integers(0, 10**6))
def test_duration_sums_compound_terms(s: int, ms: int) -> None:
    assert parse_duration(f"{s}s{ms}ms") == (s * 1000 + ms) / 1000


@given(st.integers(0, 10**10))
def test_format_duration_round_trips_whole_milliseconds(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("512KiB", 512 * 1024),
        ("256MiB", 256 * 2**20),
        ("1GiB", 2**30),
        ("2TiB", 2 * 2**40),
        ("64KB", 64000),
        ("64kB", 64000),
        ("1MB", 10**6),
        ("1mib", 2**20),
        ("100B", 100),
        ("100", 100),
        ("1.5KiB", 1536),
        ("1 MiB", 2**20),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize(
    "bad", ["", "KiB", "10 kibibytes", "-1KiB", "1e3", "1.5", 1.5, True, "10Kb/s"]
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)  # type: ignore[arg-type]


def test_parse_size_rejects_fractional_bytes_and_negative_ints() -> None:
    with pytest.raises(ValueError, match=r'"0\.1KiB" is not a whole number of bytes'):
        parse_size("0.1KiB")
    with pytest.raises(ValueError, match="must not be negative, got -5"):
        parse_size(-5)


@given(st.integers(0, 2**50))
def test_format_size_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n
    assert parse_size(str(n)) == n == parse_size(n)


@given(
    st.integers(0, 2**20),
    st.sampled_from([("KiB", 1024), ("MiB", 2**20), ("GiB", 2**30), ("KB", 1000)]),
)
def test_size_units_multiply(n: int, unit: tuple[str, int]) -> None:
    assert parse_size(f"{n}{unit[0]}") == n * unit[1]


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("", None),
        ("   ", None),
        ("20/s", RateLimit(20.0, None)),
        ("0.5/s", RateLimit(0.5, None)),
        ("64KiB/s", RateLimit(None, 65536.0)),
        ("1000B/s", RateLimit(None, 1000.0)),
        ("1MiB/s", RateLimit(None, 2**20)),
        ("20/s, 64KiB/s", RateLimit(20.0, 65536.0)),
        ("64KiB/s,20/s", RateLimit(20.0, 65536.0)),
        (" 20 / s ", RateLimit(20.0, None)),
    ],
)
def test_parse_rate_limit(text: str, limit: RateLimit | None) -> None:
    assert parse_rate_limit(text) == limit


@pytest.mark.parametrize(
    "bad",
    [
        "20",
        "20/m",
        "/s",
        "x/s",
        "20/s,",
        "1/s, 2/s, 3/s",
        "1KiB/s, 2KiB/s",
        "0/s",
        "0KiB/s",
        "20 per s",
    ],
)
def test_parse_rate_limit_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rate_limit(bad)


@given(st.integers(1, 10**6), st.integers(1, 10**6))
def test_rate_limit_round_trips_both_terms(batches: int, kib: int) -> None:
    limit = parse_rate_limit(f"{batches}/s, {kib}KiB/s")
    assert limit == RateLimit(float(batches), float(kib * 1024))


def test_rate_limit_burst_is_one_seconds_worth_at_least_one_batch() -> None:
    assert RateLimit(0.5, None).burst_batches == 1.0
    assert RateLimit(20.0, 100.0).burst_batches == 20.0
    assert RateLimit(20.0, 100.0).burst_bytes == 100.0
    assert RateLimit(None, None).burst_batches is None


# --------------------------------------------------------------------------- line positions


def test_unknown_array_of_tables_is_an_unknown_section() -> None:
    assert error(PIPE + "\n[[pipelines]]\n") == (
        'agent.toml:3: pipelines: unknown section (did you mean "pipeline"?)'
    )


def test_inline_array_of_pipelines_is_indexed() -> None:
    text = 'pipeline = [\n  { name = "a" },\n  { name = "b", window = "x" },\n]\n'
    assert error(text).startswith('agent.toml:3: pipeline[1].window: unknown window "x"')


def test_crlf_line_endings() -> None:
    assert error('[[pipeline]]\r\n\r\nwindow = "x"\r\n').startswith(
        "agent.toml:3: pipeline[0].window:"
    )


_FILLER = st.lists(
    st.sampled_from(["", "# comment", "   ", '# [upstream] port = "x"', "\t# x = 1"]), max_size=4
).map("\n".join)


@given(
    st.lists(_FILLER, min_size=4, max_size=4),
    st.sampled_from(["port", "qos", "max_batch_windows"]),
    st.booleans(),
)
def test_reported_line_is_where_the_bad_key_is(
    fill: list[str], key: str, pipeline_first: bool
) -> None:
    upstream = [fill[0], "[upstream]", fill[1], 'host = "h"', fill[2], f'{key} = "bad"']
    pipeline = [fill[3], "[[pipeline]]", 'name = "p"']
    lines = "\n".join(pipeline + upstream if pipeline_first else upstream + pipeline).split("\n")
    expected = next(i for i, ln in enumerate(lines, 1) if ln.startswith(f"{key} ="))
    assert error("\n".join(lines) + "\n") == (
        f'agent.toml:{expected}: upstream.{key}: expected an integer, got "bad"'
    )


@given(st.text(alphabet="[]{}=\"'#.,ab12 \n\\", max_size=60))
def test_scanner_never_fails_on_garbage(text: str) -> None:
    from edge_agent.config import _Scanner

    locs, _ = _Scanner(text).run()
    assert all(line >= 1 for line in locs.values())
    try:
        config_from_text(text, "agent.toml", {})
    except ConfigError as e:
        assert str(e).startswith("agent.toml")


def test_health_token_file_and_the_client_token_variable(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    f = tmp_path / "agent.toml"
    f.write_text('[health]\ntoken_file = "token"\n' + PIPE)
    cfg = load_config(f)
    assert cfg.health.token_file == str(tmp_path / "token")
    # Every EDGE_AGENT_ variable is a config override; one that names no key is an error.
    with pytest.raises(ConfigError, match="EDGE_AGENT_HEALTH_TOKEN"):
        load_config(f, environ={"EDGE_AGENT_HEALTH_TOKEN": "x"})
    assert error('[health]\ntoken_file = "/no/token"\n' + PIPE) == (
        'agent.toml:2: health.token_file: no such file: "/no/token"'
    )

"""SPEC 1: the config file, its errors, defaults, overrides and hash."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

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
)
from edge_agent.errors import ConfigError
from tests.helpers.config import PIPE, error, load

ROOT = Path(__file__).resolve().parent.parent


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
        format = "tests.helpers.decoders:triple_decoder"
        """
    )
    t, s, g, c, n = cfg.pipelines
    assert (t.window, t.size, t.slide, t.gap) == ("tumbling", 10.0, None, None)
    assert (s.size, s.slide) == (60.0, 15.0)
    assert g.gap == 30.0 and g.slide is None
    assert c.size == 100 and type(c.size) is int
    assert n.topics == ("raw/+/x", "$share/g/raw/#", "+")
    assert n.format == "tests.helpers.decoders:triple_decoder"


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
        max_future_skew = "0s"
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


def test_a_buffer_too_small_for_its_batches_is_said_right_whichever_key_comes_later() -> None:
    """SPEC 1: the error names the documented minimum and, of two keys in conflict, the
    later one; either way it says that buffer.max_bytes is too small and what it is."""
    minimum = "the minimum is 1152KiB (128KiB + 2 x upstream.max_batch_bytes)"
    later_buffer = '[upstream]\nmax_batch_bytes = "512KiB"\n[buffer]\nmax_bytes = "1MiB"\n' + PIPE
    assert error(later_buffer) == (
        f"agent.toml:4: buffer.max_bytes: too small to work: {minimum}, got 1MiB"
        " (with upstream.max_batch_bytes on line 2)"
    )
    later_upstream = '[buffer]\nmax_bytes = "1MiB"\n[upstream]\nmax_batch_bytes = "512KiB"\n' + PIPE
    assert error(later_upstream) == (
        "agent.toml:4: upstream.max_batch_bytes: 512KiB leaves buffer.max_bytes (1MiB) too"
        f" small to work: {minimum} (with buffer.max_bytes on line 2)"
    )


@pytest.mark.parametrize("value", ["5", "2.5", '"5"', '" 10 "', "0", "true"])
def test_a_duration_without_its_unit_is_refused_naming_key_and_line(value: str) -> None:
    """SPEC 1: durations are strings such as "250ms" or "10s"; only sizes may be plain
    integers. A bare number would be a guess at the unit."""
    msg = error(f"[upstream]\nmax_batch_delay = {value}\n" + PIPE)
    assert msg.startswith("agent.toml:2: upstream.max_batch_delay: expected a duration"), msg

"""SPEC 1: the config file, its errors, defaults, overrides and hash."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import (
    RateLimit,
    config_from_text,
    load_config,
    restart_needed,
)
from edge_agent.errors import ConfigError
from tests.helpers.config import PIPE, error, load

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
        "EDGE_AGENT_BUFFER_TTL": "60s",  # not TOML: the text
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

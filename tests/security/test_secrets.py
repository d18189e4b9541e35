"""Issue 13, item 7: secrets stay out of errors, logs and the process list."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import config_from_text
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.logs import forget_secrets, redact, register_secret
from edge_agent.uplink.sender import read_password
from tests.helpers.agent_harness import AgentProcess, agent_env, poll, write_config
from tests.helpers.brokers import Broker

PIPE = '\n[[pipeline]]\nname = "p"\ntopics = ["s/#"]\n'
SECRET = "hunter2-Xq9"


@pytest.fixture(autouse=True)
def _no_secrets() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


def _error(text: str, env: dict[str, str] | None = None, name: str = "/etc/x/agent.toml") -> str:
    with pytest.raises(ConfigError) as e:
        config_from_text(text + PIPE, name, env or {})
    return str(e.value)


@pytest.mark.parametrize("section", ["upstream", "local"])
@pytest.mark.parametrize("key", ["password_file", "key_file"])
def test_a_secret_written_where_its_file_belongs_is_not_quoted(section: str, key: str) -> None:
    tls = 'tls = true\ncert_file = "/etc/hostname"\n' if key == "key_file" else ""
    for value in (f'"{SECRET}"', "271828182", "3.14159e0", "true", f'["{SECRET}"]'):
        msg = _error(f"[{section}]\n{tls}{key} = {value}\n")
        assert f"{section}.{key}" in msg
        assert SECRET not in msg and "271828182" not in msg and "3.14159" not in msg, msg


def test_token_file_value_is_not_quoted() -> None:
    msg = _error(f'[health]\ntoken_file = "{SECRET}"\n')
    assert "health.token_file" in msg and SECRET not in msg


@pytest.mark.parametrize(
    "var",
    [
        "EDGE_AGENT_UPSTREAM_PASSWORD_FILE",
        "EDGE_AGENT_LOCAL_PASSWORD_FILE",
        "EDGE_AGENT_HEALTH_TOKEN_FILE",
    ],
)
def test_a_bad_environment_override_is_not_quoted(var: str) -> None:
    for value in (SECRET, "271828182"):
        msg = _error("", {var: value})
        assert var in msg and value not in msg, msg
    # an override that names no key (e.g. someone tries EDGE_AGENT_UPSTREAM_PASSWORD)
    msg = _error("", {"EDGE_AGENT_UPSTREAM_PASSWORD": SECRET})
    assert SECRET not in msg


def test_a_path_is_still_shown_when_it_looks_like_one() -> None:
    msg = _error('[upstream]\npassword_file = "/etc/edge-agent/missing.pass"\n')
    assert "/etc/edge-agent/missing.pass" in msg


def test_an_unreadable_password_file_does_not_leak_its_bytes(tmp_path: Path) -> None:
    f = tmp_path / "pass"
    f.write_bytes(b"pa\xe9ss\xff" + SECRET.encode())
    with pytest.raises(EdgeAgentError) as e:
        read_password(str(f), "local")
    assert "local.password_file" in str(e.value)
    assert "xe9" not in str(e.value) and "xff" not in str(e.value) and SECRET not in str(e.value)


def test_a_short_password_is_masked_only_as_a_whole_word() -> None:
    register_secret("pi")
    line = "pipeline climate on pi-kitchen: password pi, api=pi"
    out = redact(line)
    assert out.startswith("pipeline climate on ")  # unrelated text untouched
    assert "api=" in out and "***peline" not in out
    assert " pi," not in out and out.endswith("api=***")
    register_secret("s3cr3t-long-password")
    assert redact("xs3cr3t-long-passwordx") == "x***x"  # long ones wherever they are


def test_logging_a_short_password_keeps_the_message_readable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from edge_agent.logs import RedactingFilter

    register_secret("abc")
    logger = logging.getLogger("edge_agent.test_secrets")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("subscribed to fabric/abc/#: cabcd")
    assert caplog.records[-1].getMessage() == "subscribed to fabric/***/#: cabcd"


@pytest.mark.slow
def test_health_token_from_the_environment_not_the_command_line(
    tmp_path: Path, broker: Broker
) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken-" + SECRET + "\n")
    os.chmod(token, 0o600)
    cfg = write_config(tmp_path, broker.port, broker.port, health_keys={"token_file": str(token)})
    with AgentProcess(cfg) as agent:
        poll(lambda: "subscribed on" in agent.log(), 15, what="the agent subscribed")

        def health(env: dict[str, str]) -> int:
            return subprocess.run(
                [sys.executable, "-m", "edge_agent", "health", cfg.base_url],
                env={**agent_env(), **env},
                capture_output=True,
                timeout=30,
            ).returncode

        assert health({}) == 2  # 401: no token
        assert health({"EDGE_HEALTH_TOKEN": "t0ken-" + SECRET}) in (0, 1)
        token_file = tmp_path / "client-token"
        token_file.write_bytes(b"\xff\xfe")  # not text: a clear error, no traceback
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge_agent",
                "health",
                cfg.base_url,
                "--token-file",
                str(token_file),
            ],
            env=agent_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 1 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr

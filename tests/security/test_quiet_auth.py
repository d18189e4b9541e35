"""Issue 13, item 4: settings that quietly turn authentication or encryption off.

Documented policy (README, Security): an empty health.token_file is refused (exit 2);
the rest are warned about by `check` (exit 0) and logged when the agent starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.config import config_from_text
from edge_agent.safety import config_warnings, is_loopback
from tests.helpers.agent_harness import AgentProcess, cli, poll, write_config
from tests.helpers.brokers import Broker

PIPE = '\n[[pipeline]]\nname = "p"\ntopics = ["s/#"]\n'


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nid = "t"\nstate_dir = "{tmp_path}/state"\n' + body + PIPE)
    return path


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  \n")
    path = _write(tmp_path, '[health]\ntoken_file = "token"\n')
    proc = cli("check", "-c", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "health.token_file" in proc.stderr and "empty" in proc.stderr


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[health]\nlisten = "0.0.0.0:9100"\n', "health.listen 0.0.0.0:9100"),
        ('[health]\nlisten = "[::]:9100"\n', "health.listen [::]:9100"),
        ('[health]\nlisten = "192.168.1.20:9100"\n', "health.listen 192.168.1.20:9100"),
        ('[upstream]\nhost = "broker.example.com"\n', "upstream.host broker.example.com"),
        ('[local]\nhost = "10.0.0.5"\n', "local.host 10.0.0.5"),
    ],
)
def test_check_warns_and_passes(tmp_path: Path, body: str, needle: str) -> None:
    proc = cli("check", "-c", str(_write(tmp_path, body)))
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and needle in proc.stderr, proc.stderr


def test_secret_files_readable_by_others_are_warned_about(tmp_path: Path) -> None:
    for name in ("up.pass", "local.pass", "token"):
        (tmp_path / name).write_text("s3cr3t-value\n")
        os.chmod(tmp_path / name, 0o644)
    body = (
        '[upstream]\nusername = "u"\npassword_file = "up.pass"\n'
        '[local]\nusername = "u"\npassword_file = "local.pass"\n'
        '[health]\ntoken_file = "token"\n'
    )
    proc = cli("check", "-c", str(_write(tmp_path, body)))
    assert proc.returncode == 0, proc.stderr
    for key in ("upstream.password_file", "local.password_file", "health.token_file"):
        assert key in proc.stderr and "readable by every user" in proc.stderr, proc.stderr
    assert "s3cr3t" not in proc.stderr
    for name in ("up.pass", "local.pass", "token"):
        os.chmod(tmp_path / name, 0o600)
    proc = cli("check", "-c", str(_write(tmp_path, body)))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def test_safe_settings_raise_no_warning(tmp_path: Path) -> None:
    cfg = config_from_text(PIPE, str(tmp_path / "a.toml"), {})
    assert config_warnings(cfg) == []
    (tmp_path / "token").write_text("t0ken\n")
    os.chmod(tmp_path / "token", 0o600)
    text = '[health]\nlisten = "0.0.0.0:9100"\ntoken_file = "token"\n' + PIPE
    assert config_warnings(config_from_text(text, str(tmp_path / "a.toml"), {})) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"])
def test_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "pi.local", "example.com"])
def test_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.slow
def test_the_agent_logs_the_warnings_when_it_starts(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path, broker.port, broker.port)
    cfg.path.write_text(
        cfg.path.read_text().replace(
            f'listen = "127.0.0.1:{cfg.health_port}"', f'listen = "0.0.0.0:{cfg.health_port}"'
        )
    )
    with AgentProcess(cfg) as agent:
        poll(
            lambda: "not a loopback address and no health.token_file" in agent.log(),
            15,
            what="the warning in the log",
        )


@pytest.mark.slow
def test_a_reload_logs_the_warnings_too(tmp_path: Path, broker: Broker) -> None:
    import signal

    cfg = write_config(tmp_path, broker.port, broker.port)
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        assert "upstream.host" not in agent.log()
        text = cfg.path.read_text()
        assert '[upstream]\nhost = "127.0.0.1"' in text
        text = text.replace('[upstream]\nhost = "127.0.0.1"', '[upstream]\nhost = "10.255.255.1"')
        cfg.path.write_text(text)
        agent.send(signal.SIGHUP)
        poll(lambda: "upstream.host 10.255.255.1" in agent.log(), 15, what="the reload warning")

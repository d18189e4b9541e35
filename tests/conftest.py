from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers.brokers import Broker, find_mosquitto

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

# Hypothesis: no deadline anywhere (a loaded 2-core CI machine is not a bug); the "ci"
# profile (.ci/run) is also derandomized, so a failure there fails again on the next
# run, and prints the blob that reproduces it.
settings.register_profile("default", deadline=None, print_blob=True)
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")  # pytest --hypothesis-profile=ci picks the other

SLOW_TIMEOUT = 300.0

# Variables the agent and its CLI read from the environment: EDGE_AGENT_<SECTION>_<KEY>
# overrides config keys (one that names no key is a config error, SPEC section 1) and
# EDGE_HEALTH_TOKEN is `health`'s token. Each test starts without the caller's, so the
# suite means the same in any shell (a test that wants one sets it with monkeypatch).
AGENT_ENV_PREFIXES = ("EDGE_AGENT_", "EDGE_HEALTH_TOKEN")


@pytest.fixture(autouse=True)
def _no_agent_variables_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(AGENT_ENV_PREFIXES):
            monkeypatch.delenv(name)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.has_plugin("timeout"):  # a venv made before pytest-timeout joined [test]
        parser.addini(
            "timeout", "per-test timeout (needs pytest-timeout: pip install -e '.[test]')"
        )


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): needs pytest-timeout")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests marked slow start processes and brokers: they get a longer timeout than the
    # default in pyproject.toml, unless they name their own with @pytest.mark.timeout.
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto on a free loopback port (the 'local' broker)."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run .ci/run or apt-get install mosquitto")
    with Broker(tmp_path / "local-broker") as b:
        yield b


@pytest.fixture
def upstream_broker(tmp_path: Path) -> Iterator[Broker]:
    """A second mosquitto, standing in for the upstream broker."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run .ci/run or apt-get install mosquitto")
    with Broker(tmp_path / "upstream-broker") as b:
        yield b

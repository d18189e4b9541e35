from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import Broker, find_mosquitto

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


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

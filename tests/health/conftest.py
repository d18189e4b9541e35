"""Fixtures shared by test_health_status.py, test_health_server.py."""

from __future__ import annotations

import pytest

from tests.helpers.health import Agent


@pytest.fixture
def agent() -> Agent:
    return Agent()

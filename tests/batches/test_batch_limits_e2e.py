"""SPEC 4 with a real agent: `max_batch_windows` counts the records of both lists, and
`max_batch_bytes` bounds the payload on the wire (a single larger record goes alone)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent_harness import (
    Batch,
    Consumer,
    Publisher,
    pipeline,
    running_agent,
    write_config,
)
from tests.helpers.brokers import Broker

pytestmark = pytest.mark.slow


def _records(b: Batch) -> int:
    return len(b.doc.get("windows", [])) + len(b.doc.get("readings", []))


LIMITS: dict[str, tuple[dict[str, Any], Callable[[Batch], bool]]] = {
    "records": ({"max_batch_windows": 3}, lambda b: _records(b) <= 3),
    "bytes": ({"max_batch_bytes": 400}, lambda b: len(b.raw) <= 400 or _records(b) == 1),
}


@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_batch_limits_hold_across_windows_and_readings(
    broker: Broker, upstream_broker: Broker, tmp_path: Path, limit: str
) -> None:
    keys, holds = LIMITS[limit]
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        upstream={**keys, "max_batch_delay": "500ms"},
        pipelines=[pipeline(name="win"), pipeline(name="raw", window="none")],
    )
    base = int(time.time()) - 5
    with (
        Consumer(upstream_broker.port) as c,
        running_agent(cfg),
        Publisher(broker.port) as pub,
    ):
        for i in range(8):
            pub.publish(f"s/k{i}", json.dumps({"ts": base + 0.5, "value": i}))
        c.wait_for(
            lambda c: len(c.records("windows")) >= 8 and len(c.records("readings")) >= 8,
            20,
            what="8 windows and 8 readings",
        )
        batches = c.unique()
        assert sum(_records(b) for b in batches) == 16
        bad = [(len(b.raw), b.doc) for b in batches if not holds(b)]
        assert not bad, bad

"""SPEC 6: `consume` runs until SIGTERM or SIGINT, and either ends it with exit 0."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.consume.test_consume import BatchPublisher, start_consumer, stop, stored, stream
from tests.helpers.agent_harness import poll
from tests.helpers.brokers import Broker

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_consume_stops_with_exit_0_on_sigterm_and_sigint(tmp_path: Path, sig: int) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    with Broker(tmp_path / "broker") as broker:
        log = tmp_path / "consumer.log"
        c = start_consumer(broker.port, db, log=log)
        try:
            poll(lambda: "subscribed" in log.read_text(), 15, what="consumer subscribed")
            pub = BatchPublisher(broker.port)
            pub.send("edge/dev-1/batches", stream(1)[0])
            pub.flush()
            pub.close()
            poll(lambda: stored(db) == (1, 5, 5), 20, what="the batch stored")
            assert stop(c, sig) == 0, log.read_text()
        finally:
            if c.poll() is None:
                c.kill()
                c.wait()

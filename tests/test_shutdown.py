"""A graceful stop under load acknowledges everything it committed.

Regression: the broker keeps publishing until DISCONNECT; closing a socket with unread
data sends a TCP RST, and the broker dropped the last PUBACKs it had not read yet, so
hundreds of committed messages came back as redeliveries after every restart.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

from tests.agent_harness import AgentProcess, Publisher, poll, write_config
from tests.brokers import Broker


def test_sigterm_under_load_leaves_nothing_unacknowledged_or_lost(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    published = [0]
    stop = threading.Event()

    def publish() -> None:
        with Publisher(broker.port) as pub:
            while not stop.is_set():
                pub.publish(f"s/k{published[0] % 50}", json.dumps({"ts": time.time(), "value": 1}))
                published[0] += 1

    first = AgentProcess(cfg).start()
    try:
        first.wait_ready()
        t = threading.Thread(target=publish)
        t.start()
        poll(lambda: first.health()["counters"]["readings_in"] > 2000, 20, what="load")
        assert first.stop(signal.SIGTERM) == 0  # mid-stream
        time.sleep(0.3)
        stop.set()
        t.join()
    finally:
        stop.set()
        first.kill()
    with AgentProcess(cfg) as second:
        second.wait_ready()
        h = poll(lambda: (d := second.health())["counters"]["readings_in"] > 0 and d, 10,
                 what="the readings published while it was down")
        # Everything the first run committed was acknowledged: no redelivery is a duplicate.
        assert h["messages"]["duplicates"] == 0, h["messages"]

"""The whole device path: a board on a serial line -> firmware-bridge -> edge-agent -> upstream."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from firmware_bridge.simulator import SimulatedBoard
from tests.helpers.agent_harness import (
    AgentProcess,
    Consumer,
    agent_env,
    pipeline,
    poll,
    write_config,
)
from tests.helpers.brokers import Broker, free_port


def test_board_frames_become_windows_upstream(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    link = tmp_path / "ttyBOARD"
    board = SimulatedBoard(
        "dev7",
        rate=200,
        format="kv",
        clock="uptime_ms",
        noise=0.05,
        dropout=0.0,
        seed=11,
        link=str(link),
    )
    board.open()
    bridge_cfg = tmp_path / "bridge.toml"
    bridge_port = free_port()
    bridge_cfg.write_text(
        f'[source]\nkind = "pty"\npath = "{link}"\n'
        '[clock]\nmode = "uptime_ms"\nfield = "uptime_ms"\n'
        # The board sends a *HH checksum on every line: a flipped bit that hits the
        # '*' itself would otherwise pass as an unchecked line with a text field.
        '[frames]\nchecksum = "required"\n'
        f'[publish]\nport = {broker.port}\ntopic_template = "sensors/{{id}}"\n'
        f'[health]\nlisten = "127.0.0.1:{bridge_port}"\n'
    )
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline("mcu", ["sensors/#"], aggregates=["count", "min", "max"])],
    )
    bridge = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge", "run", "-c", str(bridge_cfg)],
        env=agent_env(),
        stderr=subprocess.DEVNULL,
    )
    try:
        with (
            Consumer(upstream_broker.port, cfg.batch_topic) as consumer,
            AgentProcess(cfg) as agent,
        ):
            agent.wait_ready()

            def bridge_health() -> dict[str, object] | None:
                try:
                    url = f"http://127.0.0.1:{bridge_port}/healthz"
                    with urllib.request.urlopen(url, timeout=2) as r:
                        return json.loads(r.read())  # type: ignore[no-any-return]
                except OSError:
                    return None

            poll(
                lambda: (h := bridge_health()) and h["source"]["open"] and h["broker"]["connected"],
                15,
                what="the bridge reading the pty and connected",
            )
            for _ in range(15):  # 300 frames, in chunks the pty buffer holds
                board.send(20)
                time.sleep(0.02)
            assert board.sent == 300 and board.overflow == 0
            # Line noise corrupts some frames: the bridge drops those (counted) and
            # publishes the rest; from there on nothing may be lost.
            h = poll(
                lambda: (h := bridge_health()) and h["frames_in"] >= 300 and h["queued"] == 0 and h,
                15,
                what="the bridge done with the frames",
            )
            published = h["published"]
            assert published >= 250 and sum(h["dropped"].values()) > 0

            def readings(c: Consumer) -> dict[str, int]:
                out: dict[str, int] = {}
                for w in c.records():
                    out[w["key"]] = out.get(w["key"], 0) + w["count"]
                return out

            poll(
                lambda: agent.health()["counters"]["readings_in"] >= 2 * published,
                20,
                what="the board's readings at the agent",
            )
            got = consumer.wait_for(
                lambda c: (r := readings(c)) and len(r) == 2 and min(r.values()) >= published and r,
                timeout=20,
                what="windows of both fields",
            )
            # Every published frame is one temp and one hum reading; nothing else.
            assert got == {"sensors/dev7/temp": published, "sensors/dev7/hum": published}
            assert agent.health()["counters"]["readings_rejected"] == 0
            # Event time is the board's uptime mapped to wall time: the windows are now-ish.
            for w in consumer.records():
                assert abs(w["start"] - time.time()) < 60, w
    finally:
        bridge.terminate()
        bridge.wait(10)
        board.close()

"""firmware_bridge end to end: real ptys, a real UDP socket, a real mosquitto, the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_bridge.bridge import Bridge
from firmware_bridge.config import BridgeConfig, parse_config
from firmware_bridge.frames import encode_text_frame
from firmware_bridge.simulator import SimulatedBoard
from tests.helpers.agent_harness import apoll, poll
from tests.helpers.brokers import Broker, free_port

ROOT = Path(__file__).resolve().parents[2]

# ---- helpers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    content_type: str | None


class Subscriber:
    """A paho subscriber on its own thread (test side only), collecting every message."""

    def __init__(self, port: int, topic: str = "sensors/#") -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self._ready.set()
        self.c.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not self._ready.wait(5):
            raise RuntimeError("subscriber did not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        ct = getattr(msg.properties, "ContentType", None) if msg.properties else None
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, ct))

    def __len__(self) -> int:
        with self._lock:
            return len(self.messages)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.port)
    yield s
    s.close()


async def until(cond: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    await apoll(cond, timeout, what=what)


def toml(port: int, **sections: dict[str, object]) -> str:
    publish = {
        "port": port,
        "reconnect_min": "20ms",
        "reconnect_max": "100ms",
        **sections.pop("publish", {}),
    }
    source = {"reopen_min": "10ms", "reopen_max": "50ms", **sections.pop("source", {})}
    lines: list[str] = []
    for name, table in {"source": source, "publish": publish, **sections}.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def config(port: int, **sections: dict[str, object]) -> BridgeConfig:
    return parse_config(toml(port, **sections), "test.toml")


# ---- frame forms through a pty ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "kv", "cobs_cbor"])
async def test_every_frame_form_reaches_the_broker(
    fmt: str, broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    link = str(tmp_path / "ttyBOARD")
    with SimulatedBoard("dev1", format=fmt, clock="uptime_ms", link=link, seed=3) as board:
        cfg = config(
            broker.port,
            source={"kind": "pty", "path": link},
            frames={"format": "cobs_cbor" if fmt == "cobs_cbor" else "auto"},
            clock={"mode": "uptime_ms", "field": "uptime_ms"},
        )
        async with Bridge(cfg) as bridge:
            await until(lambda: bridge.source.is_open and bridge.publisher.connected.is_set())
            t0 = time.time()
            board.send(30)
            await until(lambda: len(sub) >= 30, what="30 messages")
            t1 = time.time()
            await until(lambda: bridge.publisher.published == 30, what="30 PUBACKs")
            h = bridge.health()
    msgs = sub.snapshot()
    assert len(msgs) == 30 and {m.topic for m in msgs} == {"sensors/dev1"}
    want_ct = "application/cbor" if fmt == "cobs_cbor" else "application/json"
    assert {m.content_type for m in msgs} == {want_ct}
    loads = cbor2.loads if fmt == "cobs_cbor" else json.loads
    objs = [loads(m.payload) for m in msgs]
    assert all(set(o) == {"id", "ts", "temp", "hum"} for o in objs)  # seq and uptime stripped
    # Uptime mapped onto the wall clock: each frame's time is when it was sent, give or
    # take the clock tolerance (2 s), and it was sent between t0 and t1.
    assert all(t0 - 2.0 <= o["ts"] <= t1 + 2.0 for o in objs), (t0, t1, [o["ts"] for o in objs])
    assert [o["ts"] for o in objs] == sorted(o["ts"] for o in objs)  # in order, one offset
    assert h["frames_in"] == 30 and h["published"] == 30 and sum(h["dropped"].values()) == 0
    assert h["boards"]["dev1"]["lost"] == 0


async def test_bad_checksums_noise_long_lines_and_seq_gaps_are_counted(
    broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    link = str(tmp_path / "tty")
    with SimulatedBoard(link=link) as board:
        cfg = config(broker.port, source={"kind": "pty", "path": link}, frames={"max_line": 200})
        async with Bridge(cfg) as bridge:
            await until(lambda: bridge.source.is_open and bridge.publisher.connected.is_set())
            good = encode_text_frame
            board.write(
                b"".join(
                    [
                        good("id=b1 seq=0 temp=1"),
                        b"id=b1 seq=1 temp=2*00\n",  # bad checksum: dropped, and seq 1 is lost
                        b"\x00\xff\xfe\x80\x81 noise \x07\n",  # binary noise
                        b"x" * 500 + b"\n",  # over-long
                        good('{"id":"b1","seq":2,"temp":3}'),
                        b'{"id":"b1","seq":5,"temp":4}\n',  # no checksum (optional): fine; 3 and 4 lost
                        b'{"id":"b1","seq":5,"temp":4}\n',  # duplicate
                        b'{"id":"b1", "temp":\n',  # malformed
                        good('{"id":"b2","seq":9,"temp":5}'),
                        good('{"id":"b2","seq":0,"temp":6}'),  # b2 rebooted: no loss before seq 0
                    ]
                )
            )
            await until(lambda: bridge.health()["frames_in"] == 10, what="10 frames")
            await until(lambda: bridge.publisher.published == 5, what="5 published")
            h = bridge.health()
            assert not bridge.publisher.queued
    d = h["dropped"]
    assert (d["checksum"], d["noise"], d["too_long"], d["duplicate"], d["malformed"]) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert h["boards"]["b1"]["lost"] == 3 and h["boards"]["b1"]["resets"] == 0
    assert h["boards"]["b2"]["resets"] == 1 and h["boards"]["b2"]["lost"] == 0
    await until(lambda: len(sub) == 5)
    assert [json.loads(m.payload)["temp"] for m in sub.snapshot()] == [1, 3, 4, 5, 6]


async def test_dropouts_show_up_as_lost_frames(
    broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    link = str(tmp_path / "tty")
    with SimulatedBoard("lossy", dropout=0.2, seed=7, link=link, format="cobs_cbor") as board:
        cfg = config(
            broker.port, source={"kind": "pty", "path": link}, frames={"format": "cobs_cbor"}
        )
        async with Bridge(cfg) as bridge:
            await until(lambda: bridge.source.is_open)
            board.send(200)
            board.dropout = 0.0
            board.send(1)  # a last frame, so a trailing gap is visible too
            await until(lambda: bridge.publisher.published == board.sent, what="all published")
            h = bridge.health()
    assert board.lost > 10
    assert h["boards"]["lossy"]["lost"] == board.lost
    assert h["boards"]["lossy"]["frames"] == board.sent == 201 - board.lost


async def test_unplug_and_replug_without_restart(
    broker: Broker, sub: Subscriber, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="firmware_bridge")
    link = str(tmp_path / "ttyACM-by-id")
    board = SimulatedBoard("dev1", format="kv", checksum=False, link=link)
    with board:
        cfg = config(broker.port, source={"kind": "pty", "path": link})
        async with Bridge(cfg) as bridge:
            await until(lambda: bridge.source.is_open and bridge.publisher.connected.is_set())
            board.send(5)  # the first bare kv line after an open may be torn: dropped as partial
            await until(lambda: bridge.publisher.published == 4)
            board.close()  # unplug
            os.unlink(link)  # udev removes the link too: the bridge keeps retrying
            await until(lambda: not bridge.source.is_open, what="device lost")
            # Several failed reopen attempts (its debug log says so), and no open meanwhile.
            await until(
                lambda: sum("cannot open" in r.getMessage() for r in caplog.records) >= 3,
                what="failed reopen attempts",
            )
            assert bridge.source.opens == 1
            board.open()  # replug: new pty, link moved; the board rebooted (seq from 0)
            await until(lambda: bridge.source.opens == 2, what="reopened")
            board.send(5)  # again its first line is dropped as partial
            await until(lambda: bridge.publisher.published == 8, what="frames after replug")
            h = bridge.health()
    assert h["dropped"]["partial"] == 2
    assert h["boards"]["dev1"]["resets"] == 1 and h["boards"]["dev1"]["lost"] == 1


async def test_udp_datagrams(broker: Broker, sub: Subscriber) -> None:
    port = free_port()
    cfg = config(broker.port, source={"kind": "udp", "listen": f"127.0.0.1:{port}"})
    async with Bridge(cfg) as bridge:
        await until(lambda: bridge.source.is_open and bridge.publisher.connected.is_set())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(
                b'{"id":"esp1","seq":0,"t":1}\n{"id":"esp1","seq":1,"t":2}', ("127.0.0.1", port)
            )
            s.sendto(encode_text_frame("temp=3 seq=0"), ("127.0.0.1", port))  # id = sender
            s.sendto(b"\xde\xad\xbe\xef", ("127.0.0.1", port))
            board = SimulatedBoard("esp2", clock="board")
            board.send_udp(("127.0.0.1", port), 3)
        await until(lambda: len(sub) == 6, what="6 messages")
        h = bridge.health()
    topics = sorted(m.topic for m in sub.snapshot())
    assert topics == ["sensors/127.0.0.1"] + ["sensors/esp1"] * 2 + ["sensors/esp2"] * 3
    assert h["dropped"]["noise"] == 1 and h["dropped"]["partial"] == 0


async def test_broker_outage_bounded_queue_then_reconnect(broker: Broker, tmp_path: Path) -> None:
    link = str(tmp_path / "tty")
    with SimulatedBoard("b", link=link) as board:
        cfg = config(broker.port, source={"kind": "pty", "path": link}, publish={"queue_size": 5})
        async with Bridge(cfg) as bridge:
            await until(lambda: bridge.publisher.connected.is_set() and bridge.source.is_open)
            board.send(3)
            await until(lambda: bridge.publisher.published == 3)
            broker.stop()
            await until(lambda: not bridge.publisher.connected.is_set(), what="disconnect")
            board.send(20)
            await until(lambda: bridge.health()["frames_in"] == 23)
            assert bridge.health()["dropped"]["queue_full"] == 15
            assert bridge.health()["queued"] == 5
            broker.start()
            await until(lambda: bridge.publisher.published == 8, timeout=10, what="backlog sent")
            assert bridge.publisher.connects == 2


# ---- the command line ------------------------------------------------------------------


def _cli(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "firmware_bridge", *args], env=env, **kw)  # type: ignore[call-overload]


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "fb.toml"
    bad.write_text('[source]\nkind = "carrier-pigeon"\n')
    p = _cli("run", "-c", str(bad), stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 2
    assert (
        f'{bad}:2: source.kind: expected one of serial, pty, stdin, udp, got "carrier-pigeon"'
        in err.decode()
    )
    p = _cli("run", "-c", str(tmp_path / "missing.toml"), stderr=subprocess.PIPE)
    p.communicate(timeout=10)
    assert p.returncode == 2


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


async def test_cli_run_on_stdin_with_health_and_sigusr1(
    broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    hport = free_port()
    cfg = tmp_path / "fb.toml"
    cfg.write_text(
        toml(
            broker.port,
            source={"kind": "stdin"},
            frames={"default_id": "pipe"},
            health={"listen": f"127.0.0.1:{hport}"},
        )
    )
    p = _cli("run", "-c", str(cfg), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdin is not None and p.stderr is not None
        p.stdin.write(b"temp=1\ntemp=2\n\xff\xff\n")
        p.stdin.flush()
        await until(lambda: len(sub) == 2, timeout=10, what="2 messages from stdin")

        async def health() -> tuple[int, dict[str, Any]]:
            status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{hport}/healthz")
            return status, json.loads(body)

        # The subscriber may see a message a moment before the bridge has its PUBACK.
        for _ in range(100):
            status, h = await health()
            if h["published"] == 2:
                break
            await asyncio.sleep(0.05)
        assert status == 200 and h["published"] == 2 and h["dropped"]["noise"] == 1
        assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{hport}/nope"))[0] == 404
        # the agent's HealthServer serves the bridge: /readyz too, no /metrics, HEAD works
        assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{hport}/readyz"))[0] == 200
        assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{hport}/metrics"))[0] == 404
        p.send_signal(signal.SIGUSR1)
        line = await asyncio.to_thread(p.stderr.readline)
        while not line.startswith(b"{"):  # skip log lines
            line = await asyncio.to_thread(p.stderr.readline)
        assert json.loads(line)["frames_in"] == 3
        p.stdin.close()  # EOF: the bridge flushes and exits 0
        assert await asyncio.to_thread(p.wait, 10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pipe in (p.stdin, p.stderr):
            if pipe is not None:
                pipe.close()
    assert {json.loads(m.payload)["id"] for m in sub.snapshot()} == {"pipe"}


def test_cli_simulate_writes_frames_into_a_pty() -> None:
    p = _cli(
        "simulate",
        "--rate",
        "200",
        "--duration",
        "3",
        "--seed",
        "1",
        "--noise",
        "0",
        "--dropout",
        "0",
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert p.stdout is not None
        path = p.stdout.readline().decode().strip()
        assert path.startswith("/dev/pts/")
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
        buf = bytearray()

        def six_lines() -> bool:  # never blocks: select() first, so a silent pty fails the poll
            if select.select([fd], [], [], 0.1)[0]:
                buf.extend(os.read(fd, 4096))
            return buf.count(b"\n") >= 6

        try:
            poll(six_lines, 30, interval=0, what="six lines from the simulator")
        finally:
            os.close(fd)
        lines = buf.split(b"\n")[1:5]  # the first may have been cut by our late open
        objs = [json.loads(line[: line.rindex(b"*")]) for line in lines]
        assert all(o["id"] == "sim1" and "uptime_ms" in o for o in objs)
        assert [o["seq"] for o in objs] == list(range(objs[0]["seq"], objs[0]["seq"] + 4))
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        p.stdout.close()

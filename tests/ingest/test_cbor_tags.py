"""Issue 11 item 7: CBOR payloads with costly tags (a regular expression, a MIME
message, a decimal fraction or bigfloat with a huge exponent) are decoded without
evaluating those tags, so a flood of them leaves ordinary readings flowing and the
systemd watchdog fed."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import cbor2

from edge_agent.ingest.decode import NEUTRALIZED_TAGS, PayloadDecoder
from edge_agent.mqtt import MqttClient
from tests.helpers.agent_harness import REPO, agent_env, healthz, pipeline, poll, write_config
from tests.helpers.aio import run_async
from tests.helpers.brokers import Broker

# The tags readings use (date/time for ts, bignums, string references, shared values,
# self-described CBOR): cbor2 may decode these itself.
NEEDED = {0, 1, 2, 3, 25, 28, 29, 256, 55799}

REGEX = cbor2.CBORTag(35, "(a|b)*" * 8000)  # ~1.2 s to compile
MIME = cbor2.CBORTag(36, "Content-Type: text/plain\n\n" + "x: y\n" * 10000)
DECIMAL = cbor2.CBORTag(4, [10**6, cbor2.CBORTag(2, b"\xff" * 30000)])
BIGFLOAT = cbor2.CBORTag(5, [2**62, 3])


def test_every_tag_cbor2_gives_a_meaning_is_needed_or_neutralized() -> None:
    native = set()
    for tag in [*range(5000), 55799, 65535, 65536, 2**32]:
        for content in (1, "x", b"x", [1, 2], {"a": 1}):
            try:
                out = cbor2.loads(cbor2.dumps(cbor2.CBORTag(tag, content)))
            except Exception:
                native.add(tag)
                break
            if not (isinstance(out, cbor2.CBORTag) and out.tag == tag):
                native.add(tag)
                break
    if not hasattr(cbor2.CBORDecoder, "strict_hashable_types"):
        # cbor2 5 (armv7l): edge_agent/ingest/_cbor5.py neutralizes every tag 5.x
        # decodes other than NEEDED; 5.x knows fewer tags than 6 (not 52 and 54).
        assert native - NEEDED <= set(NEUTRALIZED_TAGS)
        return
    assert native - NEEDED == set(NEUTRALIZED_TAGS), (
        "a cbor2 release decodes new tags: review NEUTRALIZED_TAGS"
    )


def test_costly_tags_are_rejected_readings_not_computations() -> None:
    dec = PayloadDecoder("cbor", 300.0)
    out: list[tuple[str, float, float]] = []
    rejects: Counter[str] = Counter()
    for tag in (REGEX, MIME, DECIMAL, BIGFLOAT):
        dec.decode("s/x", cbor2.dumps({"value": tag}), None, 1.7e9, out, rejects)
        dec.decode("s/x", cbor2.dumps({"ok": 1.5, "meta": tag}), None, 1.7e9, out, rejects)
    assert rejects == Counter({"not_a_number": 4, "bad_field": 4})
    assert out == [("s/x/ok", 1.7e9, 1.5)] * 4  # the sibling field of a bad one is kept


class _Notify:
    """A NOTIFY_SOCKET that timestamps what the agent sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            self.got.append((time.monotonic(), data))

    def pings(self, since: float) -> list[float]:
        return [t for t, m in self.got if m == "WATCHDOG=1" and t >= since]

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        self.sock.close()


async def _publish(port: int, costly: int) -> None:
    """`costly` costly payloads, and an ordinary reading after every tenth."""
    pub = MqttClient(host="127.0.0.1", port=port, max_inflight=50)
    await pub.connect()
    bad = [cbor2.dumps({"id": "dev", "meta": t}) for t in (REGEX, MIME, DECIMAL, BIGFLOAT)]
    futs = []
    for i in range(costly):
        futs.append(pub.publish("costly/dev", bad[i % len(bad)], 1, "application/cbor"))
        if i % 10 == 0:
            futs.append(pub.publish("ok/dev", b"%d.5" % i, 1))
    await asyncio.gather(*futs)
    await pub.disconnect()


def test_a_flood_of_costly_payloads_leaves_readings_flowing_and_the_watchdog_fed(
    tmp_path: Path,
    broker: Broker,
    upstream_broker: Broker,
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline("p", topics=["costly/#", "ok/#"], format="auto")],
    )
    notify = _Notify(tmp_path / "notify")
    # WatchdogSec=2: the agent pings every second; systemd would kill it after 2 s without one.
    env = {**agent_env(), "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "-c", str(cfg.path)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll(lambda: any("READY=1" in m for _, m in notify.got), 15, what="READY=1")
        t0 = time.monotonic()
        costly = 400  # each took 0.3-1.2 s to decode before, on the event loop
        run_async(_publish(broker.port, costly))
        h = poll(
            lambda: (h := healthz(cfg.base_url))["counters"]["readings_rejected"] >= costly and h,
            60,
            what="every costly payload taken",
        )
        t1 = time.monotonic()
        assert h["counters"]["readings_in"] == costly // 10  # every ordinary reading went through
        assert h["rejected_by_reason"].get("bad_field") == costly
        pings = notify.pings(t0)
        gaps = [b - a for a, b in zip([t0, *pings], [*pings, t1], strict=True)]
        assert max(gaps) < 2.0, f"the watchdog went {max(gaps):.1f} s without a ping"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        notify.close()

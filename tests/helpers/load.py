"""Load for the agent: sensor publishers and the consumer-side totals that check it.

Shared by the durability, fault, overload and ingest-clock tests (no test file
imports another test file).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.helpers.agent_harness import TIME_SCALE, AgentProcess, Consumer, poll

JOIN_TIMEOUT = 10.0  # a publisher thread that does not stop within this is a hang: fail


def _client(prefix: str) -> paho.Client:
    return paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{prefix}-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )


def join(thread: threading.Thread, timeout: float = JOIN_TIMEOUT) -> None:
    """Join a helper thread, failing the test (not hanging it) if it does not end."""
    thread.join(timeout)
    assert not thread.is_alive(), f"thread {thread.name} did not end within {timeout} s"


class LoadPublisher:
    """Sensors on one paho client: QoS 1, `{"ts": now, "value": i}` with i = 0, 1, 2, ...

    Runs in a thread at about `rate` messages/s over `sensors` topics until stopped;
    `acked` counts messages the local broker acknowledged, `value_sum` their values.
    """

    def __init__(
        self, port: int, *, rate: float = 800.0, sensors: int = 4, prefix: str = "s"
    ) -> None:
        self.client = _client("load")
        self.client.max_inflight_messages_set(200)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.rate = rate
        self.topics = [f"{prefix}/{k}" for k in range(sensors)]
        self.sent = 0
        self.acked = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _on_publish(self, *_args: Any) -> None:
        with self._lock:
            self.acked += 1

    def start(self) -> LoadPublisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while self.sent < due:
                i = self.sent
                payload = b'{"ts": %.6f, "value": %d}' % (time.time(), i)
                self.client.publish(self.topics[i % len(self.topics)], payload, qos=1)
                self.sent += 1
            time.sleep(0.005)

    def stop(self) -> tuple[int, int]:
        """Stop publishing, wait for every PUBACK; (messages, sum of their values)."""
        self._stop.set()
        if self._thread.is_alive():
            join(self._thread)
        # The agent may hold a loaded machine's backlog of QoS 1 acks (backpressure):
        # wait while acks keep coming, fail when they stall for 15 s.
        poll(
            lambda: self.acked >= self.sent,
            15,
            what=f"every sensor message acknowledged ({self.sent} sent)",
            progress=lambda: self.acked,
        )
        self.client.disconnect()
        self.client.loop_stop()
        n = self.sent
        return n, n * (n - 1) // 2


FIELDS = 10  # number fields in each flood message


class _Flood:
    """A publishing thread that runs `_run` for its `seconds` or until stopped."""

    _stop: threading.Event
    thread: threading.Thread

    def _start(self, name: str) -> None:
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        join(self.thread)


class FloodPublisher(_Flood):
    """Multi-field readings flat out from a thread for `seconds` (or until stopped).

    `count` is what was published so far, `acked` what the broker acknowledged (QoS 1).
    """

    def __init__(self, port: int, qos: int, seconds: float) -> None:
        self.qos = qos
        self.seconds = seconds
        self.count = 0
        self.acked = 0
        self.client = _client("flood")
        self.client.max_inflight_messages_set(1000)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._start("flood")

    def _on_publish(self, *_args: Any) -> None:
        self.acked += 1  # paho calls back from its one network thread

    def _run(self) -> None:
        body = ", ".join(f'"f{i}": {i}.5' for i in range(FIELDS))
        deadline = time.monotonic() + self.seconds
        n = 0
        while time.monotonic() < deadline and not self._stop.is_set():
            now = time.time()
            for _ in range(50):
                self.client.publish(f"f/{n % 50}", f'{{"ts": {now:.3f}, {body}}}', qos=self.qos)
                n += 1
            self.count = n
            # paho queues what it cannot send yet without bound: keep its queue short.
            while (
                n - self.acked > 2000 if self.qos else self.client._out_packet
            ) and not self._stop.is_set():
                time.sleep(0.001)

    def close(self) -> int:
        """Stop, wait until the broker has all of it (QoS 1: acknowledged, QoS 0: written);
        the number of messages published."""
        self.stop()
        if self.qos:
            poll(lambda: self.acked >= self.count, 30, what="the broker acknowledged every publish")
        else:
            poll(lambda: not self.client._out_packet, 30, what="every publish written")
        self.client.disconnect()
        self.client.loop_stop()
        return self.count


class PipeFlood(_Flood):
    """QoS 0 multi-field readings flat out for `seconds`, through `mosquitto_pub -l`
    (one process per topic, fed lines from a thread) at about `rate` messages/s: C
    publishes them, so the flood outpaces the agent even when this test process gets
    little CPU on a loaded machine (paho from a Python thread managed ~1,000
    messages/s there: no overload, nothing shed, the test failed).
    Same interface as FloodPublisher; `close()` returns the messages written."""

    TOPICS = 8
    CHUNK = 400  # lines per write

    def __init__(self, port: int, seconds: float, rate: float = 30_000.0) -> None:
        import shutil
        import subprocess

        exe = shutil.which("mosquitto_pub")
        assert exe, "mosquitto_pub is not installed (Debian package mosquitto-clients)"
        self.seconds = seconds
        self.rate = rate  # messages/s in all: about 2.5x what the overload test's agent
        # processes on a quiet 2-core machine (16 pipelines of 10 fields a message)
        self.count = 0
        self.procs = [
            subprocess.Popen(
                [exe, "-h", "127.0.0.1", "-p", str(port), "-q", "0", "-t", f"f/{t}", "-l"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
            )
            for t in range(self.TOPICS)
        ]
        self._start("pipe-flood")

    def _run(self) -> None:
        body = ", ".join(f'"f{i}": {i}.5' for i in range(FIELDS)).encode()
        t0 = time.monotonic()
        deadline = t0 + self.seconds
        try:
            while time.monotonic() < deadline and not self._stop.is_set():
                ahead = self.count / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
                line = b'{"ts": %.3f, %s}\n' % (time.time(), body)
                chunk = line * self.CHUNK
                for p in self.procs:
                    assert p.stdin is not None
                    p.stdin.write(chunk)
                    p.stdin.flush()
                    self.count += self.CHUNK
        except BrokenPipeError:
            pass  # a publisher died: close() reports it

    def close(self) -> int:
        """Stop; every line written is handed to the broker before the publishers exit."""
        self.stop()
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            code = p.wait(30 * TIME_SCALE)
            assert code == 0, f"mosquitto_pub exited with {code}"
        return self.count


def window_totals(consumer: Consumer) -> tuple[int, float, int]:
    """(sum of counts, sum of sums, windows) over the newest rev of each window.

    Also checks what SPEC 4 promises about the stream itself: `Consumer.unique`
    fails on a seq resent with other bytes, and with tumbling windows and no
    allowed lateness every window is emitted once (rev 0) - a second emission in
    another batch would be a reading counted twice that the rev rule hides.
    """
    seen: dict[tuple[Any, ...], int] = {}
    count = 0
    total = 0.0
    for b in consumer.unique():
        for w in b.doc.get("windows", ()):
            k = (w["pipeline"], w["key"], w["start"], w["end"])
            assert w["rev"] == 0, f"window {k} revised: {w}"
            assert k not in seen, f"window {k} emitted in seq {seen[k]} and again in seq {b.seq}"
            seen[k] = b.seq
            count += int(w["count"])
            total += float(w["sum"])
    return count, total, len(seen)


def first_arrival_seqs(consumer: Consumer) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    for b in consumer.batches:
        if b.seq not in seen:
            seen.add(b.seq)
            out.append(b.seq)
    return out


def settle(
    consumer: Consumer,
    agent: AgentProcess,
    published: int,
    timeout: float = 25.0,
    idle: float = 3.0,
) -> tuple[int, float]:
    """Wait until the consumer holds `published` readings and the agent is quiet.

    Quiet = its outbox is empty and no batch arrived for longer than `idle` (the
    pipeline's idle_timeout), so a reading counted twice would have shown up by then.
    """
    poll(
        lambda: window_totals(consumer)[0] >= published,
        timeout,
        what=f"{published} readings upstream (have {window_totals(consumer)[0]})",
    )

    def quiet() -> bool:
        n = len(consumer.batches)
        h = agent.health()
        if h["buffer"]["batches"]:
            return False
        t0 = time.monotonic()
        while time.monotonic() - t0 < idle + 0.5:
            time.sleep(0.1)
            if len(consumer.batches) != n:
                return False
        return True

    poll(quiet, 20, what="agent quiet")
    count, total, _ = window_totals(consumer)
    return count, total

"""Black-box helpers: the real agent process (`python -m edge_agent`), real brokers.

Nothing here imports the agent's code: the agent is driven only through its config
file, its command line, signals, MQTT and HTTP, exactly as SPEC describes them.

    cfg = write_config(tmp_path, broker.port, upstream.port, pipelines=[pipeline()])
    with Consumer(upstream.port) as batches, AgentProcess(cfg) as agent:
        agent.wait_ready()
        publish(broker.port, "s/a", b"21.5")
        batches.wait_for(lambda bs: windows(bs), timeout=10)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.brokers import free_port

REPO = Path(__file__).resolve().parents[2]
HEX12 = re.compile(r"[0-9a-f]{12}")
T = TypeVar("T")

# -- polling ---------------------------------------------------------------------


# Every wait in the tests is for an event (ready, a batch upstream, a counter reached),
# never a speed claim (those are under the perf marker), so its timeout is only how long
# to wait before calling it lost. A busy CI machine may need longer: the timeouts are
# multiplied by EDGE_TEST_TIME_SCALE (default 2; a passing wait returns at once anyway).
TIME_SCALE = float(os.environ.get("EDGE_TEST_TIME_SCALE", "2"))


def poll(
    cond: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "",
    progress: Callable[[], object] | None = None,
) -> T:
    """Call `cond` until it returns something truthy; return that, or fail after
    `timeout` (times TIME_SCALE) seconds. The one polling helper of the tests
    (`apoll` is the same for coroutines).

    With `progress` (e.g. a counter), the timeout runs from its last change: work
    that advances slowly on a loaded machine is waited for, a stall still fails.
    """
    timeout *= TIME_SCALE
    deadline = time.monotonic() + timeout
    seen = progress() if progress is not None else None
    while True:
        value = cond()
        if value:
            return value
        if progress is not None and (now := progress()) != seen:
            seen, deadline = now, time.monotonic() + timeout
        if time.monotonic() >= deadline:
            stalled = f" (no progress: {seen!r})" if progress is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}{stalled}")
        time.sleep(interval)


async def apoll(
    cond: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """`poll` for coroutines: the same rule, sleeping with asyncio so the loop keeps running."""
    import asyncio

    timeout *= TIME_SCALE
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")
        await asyncio.sleep(interval)


# -- config ------------------------------------------------------------------------


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def pipeline(
    name: str = "p", topics: Iterable[str] = ("s/#",), **keys: object
) -> dict[str, object]:
    """A fast pipeline: 1 s tumbling windows that fire 1 s after a key goes quiet."""
    base: dict[str, object] = {
        "name": name,
        "topics": list(topics),
        "size": "1s",
        "max_out_of_orderness": "0s",
        "idle_timeout": "1s",
    }
    base.update(keys)
    return base


def render_config(
    local_port: int,
    upstream_port: int,
    *,
    state_dir: Path,
    health_port: int | None,
    agent_id: str,
    pipelines: list[dict[str, object]],
    upstream: dict[str, object] | None = None,
    local: dict[str, object] | None = None,
    buffer: dict[str, object] | None = None,
    health_keys: dict[str, object] | None = None,
) -> str:
    sections: dict[str, dict[str, object]] = {
        "agent": {"id": agent_id, "state_dir": str(state_dir), "log_level": "info"},
        "local": {"host": "127.0.0.1", "port": local_port, **(local or {})},
        "upstream": {
            "host": "127.0.0.1",
            "port": upstream_port,
            "max_batch_delay": "100ms",
            **(upstream or {}),
        },
        "buffer": dict(buffer or {}),
        "health": {
            "listen": f"127.0.0.1:{health_port}" if health_port else "",
            **(health_keys or {}),
        },
    }
    lines: list[str] = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
        lines.append("")
    for p in pipelines:
        lines.append("[[pipeline]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in p.items()]
        lines.append("")
    return "\n".join(lines)


@dataclass(slots=True)
class AgentConfig:
    """A config file written into a test's tmp dir, and what a test needs to know of it."""

    path: Path
    state_dir: Path
    agent_id: str
    local_port: int
    upstream_port: int
    health_port: int | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        assert self.health_port is not None, "health endpoint disabled in this config"
        return f"http://127.0.0.1:{self.health_port}"

    @property
    def batch_topic(self) -> str:
        return f"edge/{self.agent_id}/batches"

    def rewrite(self, **changes: Any) -> None:
        """Write the file again with some render_config arguments changed."""
        self.kwargs.update(changes)
        self.path.write_text(self._render())

    def _render(self) -> str:
        return render_config(
            self.local_port,
            self.upstream_port,
            state_dir=self.state_dir,
            health_port=self.health_port,
            agent_id=self.agent_id,
            **self.kwargs,
        )


def write_config(
    tmp_path: Path,
    local_port: int,
    upstream_port: int,
    *,
    pipelines: list[dict[str, object]] | None = None,
    health: bool = True,
    name: str = "agent.toml",
    **kwargs: Any,
) -> AgentConfig:
    cfg = AgentConfig(
        path=tmp_path / name,
        state_dir=tmp_path / "state",
        agent_id=f"t-{uuid.uuid4().hex[:8]}",
        local_port=local_port,
        upstream_port=upstream_port,
        health_port=free_port() if health else None,
        kwargs={"pipelines": pipelines or [pipeline()], **kwargs},
    )
    cfg.path.write_text(cfg._render())
    return cfg


# -- the CLI -------------------------------------------------------------------------


def agent_env() -> dict[str, str]:
    """The test's environment without EDGE_AGENT_* (those are config overrides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NOTIFY_SOCKET", None)
    return env


def cli(
    *args: str, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m edge_agent ARGS`, to completion."""
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=agent_env(),
        cwd=cwd or REPO,
    )


# -- HTTP --------------------------------------------------------------------------


def http(url: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body); HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def healthz(base_url: str) -> dict[str, Any]:
    status, _, body = http(base_url + "/healthz")
    doc = json.loads(body)
    assert status == (503 if doc["status"] == "failing" else 200), (status, doc)
    return doc


def try_healthz(base_url: str) -> dict[str, Any] | None:
    try:
        return healthz(base_url)
    except OSError:
        return None


# -- the agent process -----------------------------------------------------------------


class AgentProcess:
    """`python -m edge_agent run -c FILE` in the foreground, output in a log file."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.log_path = cfg.path.parent / f"agent-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "-c", str(self.cfg.path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=agent_env(),
                cwd=REPO,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Until /readyz answers 200 (subscribed on the local broker)."""

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"agent exited with {self.proc and self.proc.returncode}:\n{self.log()}"
                )
            try:
                return http(self.cfg.base_url + "/readyz", timeout=1.0)[0] == 200
            except OSError:
                return False

        try:
            poll(ready, timeout, what="/readyz 200")
        except AssertionError as exc:
            if not str(exc).startswith("timed out"):  # not "agent exited" (has its log)
                raise
            raise AssertionError(f"{exc}; the agent's log:\n{self.log()[-4000:]}") from None

    def health(self) -> dict[str, Any]:
        return healthz(self.cfg.base_url)

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal it and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent did not stop within {timeout} s:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            with contextlib.suppress(AssertionError):
                self.stop(timeout=10.0)
        self.kill()


def kill_from_pid_file(state_dir: Path) -> None:
    """Cleanup for agents started in the background by `start`."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((state_dir / "edge-agent.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"edge_agent" in cmdline:
            os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


# -- MQTT ------------------------------------------------------------------------------


def _client(client_id: str = "") -> paho.Client:
    return paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"test-{uuid.uuid4().hex[:10]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )


@contextlib.contextmanager
def raw_messages(port: int, topic: str) -> Iterator[list[paho.MQTTMessage]]:
    """The messages on `topic` as they came over the wire (QoS, properties, bytes), from
    a plain MQTT 5 subscriber; Consumer decodes, this does not."""
    got: list[paho.MQTTMessage] = []
    sub = _client()
    sub.on_message = lambda _c, _u, m: got.append(m)
    sub.connect("127.0.0.1", port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    try:
        yield got
    finally:
        sub.loop_stop()
        sub.disconnect()


class Publisher:
    """A sensor: QoS 1 publishes to the local broker, each waited for."""

    def __init__(self, port: int) -> None:
        self.client = _client()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, content_type: str | None = None) -> None:
        props = None
        if content_type is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = content_type
        if isinstance(payload, str):
            payload = payload.encode()
        info = self.client.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(5.0)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Batch:
    topic: str
    raw: bytes
    doc: dict[str, Any]
    content_type: str | None

    @property
    def seq(self) -> int:
        return int(self.doc["seq"])


class Consumer:
    """Subscribes to everything on the upstream broker and decodes each batch with cbor2.

    A persistent session (clean start off, long expiry) keyed on a fixed client id,
    so batches the agent sends while this client reconnects after a broker restart
    are queued for it, not lost to the test.
    """

    def __init__(self, port: int, topic: str = "#") -> None:
        self.topic = topic
        self._lock = threading.Lock()
        self._batches: list[Batch] = []
        self.statuses: list[tuple[str, dict[str, Any], bool]] = []  # (topic, map, retained)
        self.errors: list[str] = []
        self.client = _client()
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._connected = threading.Event()
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._connected.wait(5.0):
            raise AssertionError("consumer did not connect to the upstream broker")

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self, _c: paho.Client, _u: object, _mid: int, _codes: object, _p: object
    ) -> None:
        # Ready only once the broker holds the subscription: a test that stops the
        # broker right away must find it in the saved session.
        self._connected.set()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        ct = getattr(msg.properties, "ContentType", None) if msg.properties else None
        user = dict(getattr(msg.properties, "UserProperty", None) or ()) if msg.properties else {}
        try:
            body = msg.payload
            if user.get("content-encoding") == "deflate":
                body = zlib.decompress(body)
            doc = cbor2.loads(body)
        except Exception as exc:
            with self._lock:
                self.errors.append(f"{msg.topic}: undecodable payload: {exc!r}")
            return
        with self._lock:
            if isinstance(doc, dict) and doc.get("schema") == "edge-agent/status/1":
                self.statuses.append((msg.topic, doc, bool(msg.retain)))  # not a batch
                return
            self._batches.append(Batch(msg.topic, bytes(msg.payload), doc, ct))

    @property
    def batches(self) -> list[Batch]:
        with self._lock:
            return list(self._batches)

    def unique(self) -> list[Batch]:
        """Batches deduplicated on (schema, agent, seq), as SPEC 4 tells consumers to."""
        seen: dict[tuple[object, object, object], Batch] = {}
        for b in self.batches:
            k = (b.doc.get("schema"), b.doc.get("agent"), b.doc.get("seq"))
            if k in seen:
                assert seen[k].raw == b.raw, f"resent batch {k} has different bytes"
            else:
                seen[k] = b
        return list(seen.values())

    def records(self, kind: str = "windows") -> list[dict[str, Any]]:
        return [r for b in self.unique() for r in b.doc.get(kind, [])]

    def wait_for(self, cond: Callable[[Consumer], T], timeout: float = 15.0, what: str = "") -> T:
        return poll(lambda: cond(self), timeout, what=what or "batches")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def latest(records: list[dict[str, Any]]) -> dict[tuple[object, ...], dict[str, Any]]:
    """Per (pipeline, key, start, end), the record with the highest rev (SPEC 3)."""
    out: dict[tuple[object, ...], dict[str, Any]] = {}
    for r in records:
        k = (r["pipeline"], r["key"], r["start"], r["end"])
        if k not in out or r["rev"] > out[k]["rev"]:
            out[k] = r
    return out


def counted(records: Iterable[dict[str, Any]], key: str | None = None) -> int:
    """Sum of `count` over the newest revision of every window (of one key)."""
    recs = latest(list(records)).values()
    return sum(int(r["count"]) for r in recs if key is None or r["key"] == key)


@contextlib.contextmanager
def running_agent(cfg: AgentConfig) -> Iterator[AgentProcess]:
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        yield agent

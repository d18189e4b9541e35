"""Readings to the local broker: a bounded queue in front of edge_agent's MQTT client.

The connection is edge_agent.mqtt.MqttClient, the agent's own MQTT 5 client (an
asyncio Protocol; connect never blocks the loop), each pump's messages published as
one group with one completion (not a future per message).

Flow control: frames wait in a bounded deque (queue_size, overflow per when_full,
every drop counted) and are published only while connected, at most max_inflight
(and never more than the broker's Receive Maximum) unacknowledged at once. Messages
unacknowledged when the connection drops go back to the front of the queue, in
order, and are sent again after the reconnect (at least once, as before). A message
the broker refuses (PUBACK reason code >= 0x80, e.g. 0x87 not authorized by its ACL)
or that cannot be encoded (a topic over 65,535 bytes) is dropped, counted as
`refused` and logged: sending it again would only be refused again.
Reconnects back off exponentially with full jitter (edge_agent.backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from pathlib import Path

from edge_agent.backoff import Backoff
from edge_agent.mqtt import MqttClient, MqttError, PublishGroup
from firmware_bridge.config import PublishSection

__all__ = ["CBOR", "JSON", "Publisher"]

log = logging.getLogger("firmware_bridge.publish")

#: MQTT 5 content types of the payloads the bridge publishes
JSON = "application/json"
CBOR = "application/cbor"

# (arrival number, topic, payload, content type)
_Item = tuple[int, str, bytes, str]


class Publisher:
    """Publishes (topic, payload, content type) at cfg.qos; reconnects with backoff."""

    def __init__(self, cfg: PublishSection) -> None:
        self.cfg = cfg
        self.published = 0  # acknowledged by the broker (sent, for QoS 0)
        self.dropped = 0  # queue overflow
        self.refused = 0  # refused by the broker, or unencodable: dropped, not resent
        self.connects = 0
        self.connected = asyncio.Event()
        self._queue: deque[_Item] = deque()
        self._n = 0
        # sent, one group of publishes per pump, in order; finished groups are swept
        # from the left (a group's future completes when the broker answered it all)
        self._inflight: deque[tuple[PublishGroup, list[_Item]]] = deque()
        self._outstanding = 0  # messages in self._inflight
        self._unacked: list[_Item] = []  # lost with a connection: sent again first
        self._limit = cfg.max_inflight  # lowered to the broker's Receive Maximum on connect
        self._pump_scheduled = False
        self._client: MqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- public surface -------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._unacked)

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def submit(self, topic: str, payload: bytes, content_type: str) -> None:
        """Queue one message; never blocks, drops per when_full when the queue is full."""
        q = self._queue
        if len(q) >= self.cfg.queue_size:
            self.dropped += 1
            if self.cfg.when_full == "drop_newest":
                return
            q.popleft()
        self._n += 1
        q.append((self._n, topic, payload, content_type))
        self._schedule_pump()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        password = _read_password(self.cfg.password_file) if self.cfg.username else ""
        self._client = MqttClient(
            host=self.cfg.host,
            port=self.cfg.port,
            client_id=self.cfg.client_id or f"firmware-bridge-{os.getpid()}-{id(self):x}",
            keepalive=self.cfg.keepalive,
            username=self.cfg.username,
            password=password,
            max_inflight=max(1, self.cfg.max_inflight),
        )
        self._task = asyncio.create_task(self._supervise(), name="publish-connect")

    async def close(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for queued and unacknowledged messages, then disconnect."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.connected.is_set() and (self._queue or self._inflight):
                    await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.disconnect(timeout=1.0)
        self.connected.clear()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- connection ------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Connect, publish until the connection is lost, back off, repeat."""
        client = self._client
        assert client is not None
        backoff = Backoff(self.cfg.reconnect_min, self.cfg.reconnect_max)
        while True:
            try:
                await client.connect(timeout=5.0)
            except MqttError as e:
                log.debug("broker %s:%s: %s", self.cfg.host, self.cfg.port, e)
            else:
                self.connects += 1
                backoff.reset()  # we were up: back off afresh
                self._limit = max(1, min(self.cfg.max_inflight, client.server_receive_maximum))
                log.info("connected to %s:%s", self.cfg.host, self.cfg.port)
                self.connected.set()
                self._schedule_pump()
                why = await client.wait_disconnected()
                self.connected.clear()
                log.warning("lost the broker: %s", why)
                client.close()
            await asyncio.sleep(backoff.next())

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self.connected.is_set():
            self._pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        client = self._client
        if not self.connected.is_set() or client is None or not client.connected:
            return
        if self._unacked:  # what the last connection lost goes first, in order
            self._unacked.sort()
            self._queue.extendleft(reversed(self._unacked))
            self._unacked.clear()
        q = self._queue
        n = min(len(q), self._limit - self._outstanding)
        if n <= 0:
            return
        items = [q.popleft() for _ in range(n)]
        try:
            # one completion for the pump's messages, not a future each: 0.77x the
            # CPU per message (bench/README.md, bench_bridge.py --publisher)
            group = client.publish_many(((i[1], i[2], i[3]) for i in items), self.cfg.qos)
        except MqttError:  # not connected after all: keep them for the next connection
            q.extendleft(reversed(items))
            return
        self._inflight.append((group, items))
        self._outstanding += n
        group.future.add_done_callback(self._sweep)

    def _sweep(self, _: object = None) -> None:
        """Count what the broker acknowledged; keep what a lost connection left unsent."""
        inflight = self._inflight
        while inflight and inflight[0][0].future.done():
            group, items = inflight.popleft()
            self._outstanding -= len(items)
            redo = group.unacknowledged()
            if redo:  # the connection went before their PUBACK: send them again
                self._unacked.extend(items[i] for i in redo)
            refused = group.refused()
            if refused:  # for good: sent again, they would only be refused again
                self.refused += len(refused)
                log.warning(
                    "the broker refused %d message(s), dropped (the first to topic %.80r)",
                    len(refused),
                    items[refused[0]][1],
                )
            self.published += len(items) - len(redo) - len(refused)
        if inflight and not self.connected.is_set():
            return
        if self._queue or self._unacked:
            self._schedule_pump()


def _read_password(path: str) -> str:
    """publish.password_file's content (its errors never quote it)."""
    if not path:
        return ""
    from edge_agent.errors import ConfigError
    from edge_agent.logs import register_secret

    try:
        password = Path(path).read_text(encoding="utf-8").strip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"publish.password_file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"publish.password_file {path}: cannot read it: {exc.strerror}") from None
    register_secret(password)
    return password

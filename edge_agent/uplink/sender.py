"""Batches leave through here: outbox -> upstream broker.

The uplink keeps a connection to the upstream broker and, while connected, asks
the Outbox (edge_agent.buffer.outbox) for the next batch, publishes it within the
rate limit and the adaptive in-flight window, and reports each PUBACK back. It
holds no batch state of its own: which batch goes next, what is in flight, acked
or dropped is the Outbox's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from edge_agent.backoff import Backoff
from edge_agent.batches.builder import is_deflated
from edge_agent.buffer.outbox import Outbox
from edge_agent.buffer.store import OutboxRow
from edge_agent.config import UpstreamSection
from edge_agent.errors import EdgeAgentError
from edge_agent.mqtt import MqttClient, MqttError, TlsSettings, Will
from edge_agent.uplink.throttle import AdaptiveWindow, RateLimiter

__all__ = ["Uplink"]

log = logging.getLogger("edge_agent.uplink")

CONTENT_TYPE = "application/cbor"
DEFLATE = ("content-encoding", "deflate")  # MQTT 5 user property of a compressed batch (SPEC 4)


class Uplink:
    """Keeps a connection to the upstream broker and drains the outbox through it."""

    def __init__(
        self,
        cfg: UpstreamSection,
        *,
        client_id: str,
        outbox: Outbox,
        max_inflight: int = 64,
        ack_timeout: float = 30.0,
        password: str = "",
        status: Callable[[str], tuple[bytes, str]] | None = None,
        status_topic: str = "",
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.outbox = outbox
        outbox.on_new = self._wake_up
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        self.password = password
        self.connected = False
        self.lost_since: float | None = time.monotonic()  # unreachable until the first CONNACK
        self.last_error = ""
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._client: MqttClient | None = None
        self._kick = asyncio.Event()  # cuts a reconnect wait short (reconfigure)
        self._setup_limits()
        self.latency: float | None = None  # last PUBACK latency, seconds
        self.inflight = 0
        # Device status (SPEC 4): `status(state)` gives (payload, health status string).
        self.status = status
        self.status_topic = status_topic
        self._status_health = ""  # health in the last status published
        self._status_at = 0.0  # monotonic time of it
        self._stopping = False

    def _setup_limits(self) -> None:
        cfg = self.cfg
        self.window = AdaptiveWindow(self.max_inflight)
        self.rate = RateLimiter(cfg.rate_limit)

    def reconfigure(self, cfg: UpstreamSection, password: str) -> None:
        """New upstream settings (a reload): reconnect with them, resending what is unacknowledged."""
        changed = cfg != self.cfg or password != self.password
        self.cfg, self.password = cfg, password
        self.max_inflight = cfg.max_inflight
        self._setup_limits()
        if changed:
            self.last_error = ""
            if self._client is not None:
                self._client.close()  # the run loop sees the loss, rewinds and reconnects
            self._kick.set()

    @property
    def batches_sent(self) -> int:
        return self.outbox.batches_sent

    @property
    def last_ack(self) -> float | None:
        return self.outbox.last_ack

    @property
    def queued(self) -> int:
        return self.outbox.queued

    # -- the connection loop ----------------------------------------------

    async def run(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            self._kick.clear()
            cfg = self.cfg
            tls = TlsSettings(cfg.ca_file, cfg.cert_file, cfg.key_file) if cfg.tls else None
            will = None
            if self.status is not None and self.status_topic:
                will = Will(
                    self.status_topic,
                    self.status("offline")[0],
                    qos=1,
                    retain=True,
                    content_type=CONTENT_TYPE,
                )
            client = MqttClient(
                host=cfg.host,
                port=cfg.port,
                client_id=self.client_id,
                clean_start=True,
                tls=tls,
                username=cfg.username,
                password=self.password,
                max_inflight=self.max_inflight + 8,
                keepalive=max(1, round(cfg.keepalive)),
                will=will,
            )
            try:
                await client.connect(timeout=10.0)
            except (MqttError, OSError) as exc:
                self._note_error(str(exc))
                await self._pause(backoff.next())
                continue
            self.outbox.live_share = self.cfg.live_share
            await self.outbox.link_up()
            # Never more in flight than the broker accepts (paho does not enforce it).
            self.window.cap(client.server_receive_maximum)
            self._client = client
            self.connected = True
            self.lost_since = None
            self.last_error = ""
            backoff.reset()
            log.info("upstream connected: %s:%d", cfg.host, cfg.port)
            self.publish_status()
            try:
                await self._send_until_lost(client)
            except MqttError as exc:
                self._note_error(str(exc))
            finally:
                self.connected = False
                self.lost_since = time.monotonic()
                self._client = None
                client.close()
                self.outbox.link_down()
            await self._pause(backoff.next())

    # -- device status ----------------------------------------------------

    def publish_status(self) -> None:
        """Publish "online" now (retained, QoS 1), if connected and a status topic is set."""
        client = self._client
        if self.status is None or not self.status_topic or client is None or not client.connected:
            return
        payload, health = self.status("online")
        self._status_health, self._status_at = health, time.monotonic()
        try:
            fut = client.publish(self.status_topic, payload, 1, CONTENT_TYPE, retain=True)
        except MqttError as exc:
            log.debug("status not published: %s", exc)
            return
        fut.add_done_callback(_log_status_failure)

    def status_tick(self, health: str) -> None:
        """Called about once a second: republish on a health change or when the interval is up."""
        if (
            health != self._status_health
            or time.monotonic() - self._status_at >= self.cfg.status_interval
        ):
            self.publish_status()

    async def say_offline(self, timeout: float = 2.0) -> None:
        """Graceful stop: publish "offline" and wait (bounded) for its PUBACK, then DISCONNECT,
        which discards the will (MQTT 5 3.1.2.5). The run loop does not reconnect after this."""
        self._stopping = True
        self._kick.set()
        client = self._client
        if client is None or not client.connected:
            return
        if self.status is not None and self.status_topic:
            try:
                fut = client.publish(
                    self.status_topic, self.status("offline")[0], 1, CONTENT_TYPE, retain=True
                )
                async with asyncio.timeout(timeout):
                    await asyncio.shield(fut)
            except (MqttError, TimeoutError) as exc:
                log.warning("offline status not acknowledged: %s", exc)
        await client.disconnect(timeout=timeout)

    async def _pause(self, delay: float) -> None:
        """The reconnect wait; a reconfigure ends it at once."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._kick.wait()

    def _note_error(self, why: str) -> None:
        if why != self.last_error:
            log.warning("upstream %s:%d unreachable: %s", self.cfg.host, self.cfg.port, why)
        self.last_error = why

    async def _send_until_lost(self, client: MqttClient) -> None:
        # Hot loop of a backlog drain: per batch one publish, one completion callback
        # and (when idle) one future to sleep on; no tasks, no asyncio.wait.
        inflight: dict[int, tuple[OutboxRow, float]] = {}  # insertion order = send order
        done: deque[tuple[OutboxRow, BaseException | None]] = deque()
        lost = asyncio.ensure_future(client.wait_disconnected())
        lost.add_done_callback(lambda _f: self._wake_up())
        publish, qos, rate, outbox = client.publish, self.cfg.qos, self.rate, self.outbox
        monotonic = time.monotonic

        def on_done(row: OutboxRow, fut: asyncio.Future[None]) -> None:
            done.append((row, fut.exception() if not fut.cancelled() else MqttError("cancelled")))
            self._wake_up()

        try:
            while not lost.done():
                await outbox.refill()  # from the database, when a memory queue ran dry
                throttled = 0.0
                limit = self.window.limit
                while len(inflight) < limit:
                    row = outbox.next_batch()
                    if row is None:
                        break
                    if rate.active:
                        throttled = rate.wait_time(len(row.payload))
                        if throttled > 0:
                            break
                        rate.take(len(row.payload))
                    outbox.published(row)
                    payload = row.payload
                    if is_deflated(payload):
                        fut = publish(row.topic, payload, qos, CONTENT_TYPE, user_property=DEFLATE)
                    else:
                        fut = publish(row.topic, payload, qos, CONTENT_TYPE)
                    inflight[row.id] = (row, monotonic())
                    fut.add_done_callback(functools.partial(on_done, row))
                while done:
                    row, exc = done.popleft()
                    sent_at = inflight.pop(row.id, (row, monotonic()))[1]
                    if exc is not None:
                        raise exc if isinstance(exc, MqttError) else MqttError(str(exc))
                    self.latency = monotonic() - sent_at
                    self.window.on_ack(self.latency)
                    outbox.acked(row)
                self.inflight = len(inflight)
                if inflight:
                    oldest = next(iter(inflight.values()))[1]
                    if monotonic() - oldest > self.ack_timeout:
                        self.window.on_timeout()
                        raise MqttError(f"no PUBACK within {self.ack_timeout:g} s")
                room = len(inflight) < self.window.limit
                if room and throttled == 0 and outbox.has_more():
                    continue
                await self._sleep(throttled if throttled > 0 and room else 1.0)
        finally:
            lost.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lost

    def _wake_up(self) -> None:
        self._woken = True
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _sleep(self, timeout: float) -> None:
        """Until something happens (a PUBACK, new batches, the connection lost) or timeout."""
        if self._woken:
            self._woken = False
            return
        loop = asyncio.get_running_loop()
        w = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, w)
        try:
            await w
        finally:
            timer.cancel()
            self._waiter = None
            self._woken = False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.disconnect()


def _log_status_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("status publish failed: %s", fut.exception())


def read_password(path: str, section: str = "upstream") -> str:
    """A broker password, from `<section>.password_file` (never from the config itself)."""
    if not path:
        return ""
    from edge_agent.logs import register_secret

    try:
        password = Path(path).read_text(encoding="utf-8").strip("\r\n")
    except UnicodeDecodeError:  # its message would quote bytes of the file
        raise EdgeAgentError(f"{section}.password_file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise EdgeAgentError(
            f"{section}.password_file {path}: cannot read it: {exc.strerror or type(exc).__name__}"
        ) from None
    register_secret(password)
    return password


def _wake(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_result(None)

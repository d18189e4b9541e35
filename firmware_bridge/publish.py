"""The one module that imports paho: an MQTT 5 publisher driven by the asyncio loop.

No paho thread: paho's socket callbacks map onto loop.add_reader/add_writer and a 1 s
task calls loop_misc() for keepalives (the pattern of aiomqtt v2.5.1's client.py).
All paho calls therefore happen on the loop thread, and so do all its callbacks.

Flow control: frames wait in a bounded deque (queue_size, overflow per when_full,
every drop counted) and are handed to paho only while connected, at most
max_inflight unacknowledged at once, so paho's own unbounded queue stays bounded
too. Messages paho holds when the connection drops are re-sent by paho after the
reconnect (it resets unacknowledged QoS>0 publishes to be sent again, with DUP).

connect() is paho's blocking connect, called on the loop: it targets the local broker
(loopback; a refused connection returns at once) with paho's 5 s connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.uplink.backoff import Backoff
from firmware_bridge.config import PublishSection

__all__ = ["CBOR", "JSON", "Publisher"]

log = logging.getLogger("firmware_bridge.publish")


class _PackedProperties(Properties):
    """PUBLISH properties packed once.

    paho calls properties.pack() on every publish, and Properties.pack() walks every
    property name each time (~25 µs a message, a third of the bridge's CPU in
    bench/bench_bridge.py); ours never change, so the bytes are packed here once.
    """

    def __init__(self, content_type: str) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.ContentType = content_type
        packed: bytes = super().pack()  # type: ignore[no-untyped-call]
        object.__setattr__(self, "_packed", packed)  # Properties refuses other names

    def pack(self) -> bytes:
        packed: bytes = object.__getattribute__(self, "_packed")
        return packed


def _content_type(value: str) -> Properties:
    return _PackedProperties(value)


#: built once and shared by every publish: paho only serialises them
JSON = _content_type("application/json")
CBOR = _content_type("application/cbor")


class Publisher:
    """Publishes (topic, payload, properties) at cfg.qos; reconnects with backoff."""

    def __init__(self, cfg: PublishSection) -> None:
        self.cfg = cfg
        self.published = 0  # acknowledged by the broker (sent, for QoS 0)
        self.dropped = 0  # queue overflow
        self.connects = 0
        self.connected = asyncio.Event()
        self._queue: deque[tuple[str, bytes, Properties]] = deque()
        self._outstanding = 0
        self._limit = cfg.max_inflight  # lowered to the broker's Receive Maximum on CONNACK
        self._pump_scheduled = False
        self._lost = asyncio.Event()
        self._client: mqtt.Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._misc: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- public surface -------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def submit(self, topic: str, payload: bytes, props: Properties) -> None:
        """Queue one message; never blocks, drops per when_full when the queue is full."""
        q = self._queue
        if len(q) >= self.cfg.queue_size:
            self.dropped += 1
            if self.cfg.when_full == "drop_newest":
                return
            q.popleft()
        q.append((topic, payload, props))
        if not self._pump_scheduled and self.connected.is_set():
            self._pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._pump)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        client_id = self.cfg.client_id or f"firmware-bridge-{os.getpid()}-{id(self):x}"
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        # paho's own window off (0 = unlimited): with a window, every PUBACK makes paho
        # scan all its unacknowledged messages (_update_inflight), O(window) per ack.
        # We bound what paho holds ourselves (max_inflight, capped by the broker's
        # Receive Maximum, which paho 2.2 does not honour itself).
        c.max_inflight_messages_set(0)
        if self.cfg.username:
            c.username_pw_set(self.cfg.username, _read_password(self.cfg.password_file) or None)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_socket_register_write
        c.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = c
        self._tasks.append(asyncio.create_task(self._supervise(), name="publish-connect"))

    async def close(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for queued and unacknowledged messages, then disconnect."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.connected.is_set() and (self._queue or self._outstanding):
                    await asyncio.sleep(0.01)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._client is not None:
            # paho closes the socket itself once its writer callback has sent DISCONNECT
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while self._client.socket() is not None:
                        await asyncio.sleep(0.005)
            sock = self._client.socket()
            if sock is not None:  # the broker did not take it in time: close it ourselves
                self._drop_socket(sock)
                sock.close()
        if self._misc is not None:
            self._misc.cancel()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- connection ------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Connect, wait until the connection is lost, back off, repeat."""
        assert self._client is not None
        backoff = Backoff(self.cfg.reconnect_min, self.cfg.reconnect_max)
        first = True
        while True:
            self._lost.clear()
            before = self.connects
            try:
                if first:
                    first = False
                    self._client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive)
                else:
                    self._client.reconnect()
            except OSError as e:
                log.debug("broker %s:%s unreachable: %s", self.cfg.host, self.cfg.port, e)
            else:
                await self._lost.wait()
                if self.connects > before:
                    backoff.reset()  # we were up: back off afresh
            await asyncio.sleep(backoff.next())

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.warning("broker refused the connection: %s", rc)
            return
        self.connects += 1
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._limit = min(self.cfg.max_inflight, receive_max or 65535)
        log.info("connected to %s:%s", self.cfg.host, self.cfg.port)
        self.connected.set()
        self._pump_scheduled = True
        assert self._loop is not None
        self._loop.call_soon(self._pump)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self.connected.is_set():
            log.warning("lost the broker: %s", rc)
        self.connected.clear()
        self._lost.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self.published += 1
        self._outstanding -= 1
        if self._queue and not self._pump_scheduled:
            self._pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if not self.connected.is_set() or self._client is None:
            return
        q = self._queue
        publish = self._client.publish
        qos = self.cfg.qos
        limit = self._limit
        while q and self._outstanding < limit:
            topic, payload, props = q[0]
            info = publish(topic, payload, qos, False, props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # not connected after all: keep it for the next connection
            q.popleft()
            self._outstanding += 1

    # ---- paho socket callbacks -> event loop --------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        # up to 64 packets (PUBACKs) per wake-up instead of paho's default of one
        self._loop.add_reader(sock, functools.partial(client.loop_read, 64))
        if self._misc is None or self._misc.done():
            self._misc = self._loop.create_task(self._misc_loop(), name="publish-misc")

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._drop_socket(sock)
        self.connected.clear()
        self._lost.set()

    def _drop_socket(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        """Keepalive PINGREQs and timeouts: paho's loop_misc, once a second while open."""
        assert self._client is not None
        while self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1.0)


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

"""Our MQTT 5 client: an asyncio `Protocol` that parses the byte stream itself.

The one module that speaks MQTT for the agent (the local subscription and the
upstream batches). It replaces a paho-mqtt adapter that had to reach into paho's
private attributes to be fast enough (bench/README.md, "MQTT layer", has the
figures): paho's read loop costs ~45 us per message at QoS 0 (three recv() and a
select() per packet), a Protocol fed by the event loop's own reads costs a few
microseconds, whatever the codec. Only public asyncio and ssl APIs are used.

What the client does, and no more: MQTT 5 CONNECT (clean start, session expiry,
Receive Maximum, username/password, will with retain, content type and user
properties), TLS through an `ssl.SSLContext`, SUBSCRIBE with Subscription
Identifiers, UNSUBSCRIBE, PUBLISH QoS 0/1/2 both ways (content type, retain, user
properties), acknowledgements in batches (`manual_ack`), keep-alive, and read
backpressure. `connect()` may be called again after the connection is lost (the
bridge does); nothing queued survives a disconnect: what is resent after an outage
is decided by the caller (the outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from edge_agent.mqtt.codec import (
    _ACK4,
    _CONNACK,
    _DISCONNECT,
    _H,
    _I,
    _PINGRESP,
    _PUBACK,
    _PUBCOMP,
    _PUBLISH,
    _PUBREC,
    _PUBREL,
    _SUBACK,
    _UNSUBACK,
    _binary,
    _packet,
    _props,
    _props_at,
    _ProtocolError,
    _utf8,
    _varint,
    reason_name,
)
from edge_agent.mqtt.messages import Message, MqttError, Will
from edge_agent.mqtt.tls import TlsSettings, _describe

__all__ = ["MAX_PACKET", "MqttClient"]

log = logging.getLogger("edge_agent.mqtt")

# Bounds what one connection buffers. A PUBLISH larger than this is not held: its
# payload is skipped as it streams in and the Message comes with `too_large` set and
# an empty payload (the caller counts it; QoS 1 is still acknowledged by the caller),
# so one oversized message can neither exhaust memory nor, redelivered, stall a session.
MAX_PACKET = 4 * 1024 * 1024


class _Protocol(asyncio.Protocol):
    """Feeds what the transport reads to its client; says when the connection ends."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._connection_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.client._data_received(data)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._connection_lost(exc)


class MqttClient:
    """One MQTT 5 connection, read and written from the event loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str = "",
        clean_start: bool = True,
        session_expiry: float | None = None,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        tls: TlsSettings | None = None,
        username: str = "",
        password: str = "",
        keepalive: int = 30,
        on_message: Callable[[Message], None] | None = None,
        max_inflight: int = 100,
        will: Will | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._client_id = client_id
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._receive_maximum = receive_maximum
        self._manual_ack = manual_ack
        self._tls = tls
        self._username, self._password = username, password
        self._keepalive = max(0, int(keepalive))
        self._on_message = on_message
        self._max_inflight = max(1, max_inflight)
        self._will = will
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._disconnected: asyncio.Future[str] | None = None
        self._buf = b""
        self._skip = 0  # bytes of an oversized packet still to discard
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._parse_handle: asyncio.Handle | None = None
        self._paused = False
        self._pending: dict[int, asyncio.Future[None]] = {}  # QoS 1/2 publishes awaiting their ack
        self._waiting: deque[tuple[int, bytes]] = deque()  # publishes past the in-flight limit
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._next_mid = 0
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._ping_task: asyncio.Task[None] | None = None
        self._inflight_cap = self._max_inflight
        # The broker's Receive Maximum from CONNACK (MQTT 5 3.2.2.3.3): how many QoS 1/2
        # publishes it accepts unacknowledged. The client keeps within it.
        self.server_receive_maximum = 65535
        self.messages_received = 0

    # -- lifecycle -------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> bool:
        """Open the connection; return the broker's session-present flag."""
        loop = self._loop = asyncio.get_running_loop()
        self._teardown()  # what a previous connection of this client left
        self._paused = False
        self._connack = loop.create_future()
        self._disconnected = loop.create_future()
        ctx = self._tls.context() if self._tls is not None else None
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Protocol(self),
                    self.host,
                    self.port,
                    ssl=ctx,
                    server_hostname=self.host if ctx is not None else None,
                ),
                timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
            self._teardown()
            raise MqttError(f"cannot connect to {self.host}:{self.port}: {_describe(exc)}") from exc
        self._send(self._connect_packet())
        try:
            return await asyncio.wait_for(asyncio.shield(self._connack), timeout)
        except TimeoutError as exc:
            self._teardown()
            raise MqttError(
                f"no CONNACK from {self.host}:{self.port} within {timeout:g} s"
            ) from exc
        except MqttError:
            self._teardown()
            raise

    def _connect_packet(self) -> bytes:
        flags = 0x02 if self._clean_start else 0
        props = b""
        if self._session_expiry is not None:
            props += b"\x11" + _I.pack(max(0, min(int(self._session_expiry), 0xFFFFFFFF)))
        if self._receive_maximum is not None:
            props += b"\x21" + _H.pack(max(1, min(int(self._receive_maximum), 65535)))
        payload = _utf8(self._client_id)
        w = self._will
        if w is not None:
            flags |= 0x04 | (w.qos << 3) | (0x20 if w.retain else 0)
            payload += (
                _props(w.content_type, w.user_properties) + _utf8(w.topic) + _binary(w.payload)
            )
        if self._username:
            flags |= 0x80
            payload += _utf8(self._username)
        if self._password:
            flags |= 0x40
            payload += _binary(self._password.encode("utf-8"))
        body = b"\x00\x04MQTT\x05" + bytes((flags,)) + _H.pack(min(self._keepalive, 0xFFFF))
        body += _varint(len(props)) + props + payload
        return _packet(0x10, body)

    async def disconnect(self, timeout: float = 2.0) -> None:
        """Make sure the broker applied what we sent, send DISCONNECT, and close."""
        if self._transport is None:
            self._teardown()
            return
        if self.connected:
            # Closing a socket that still has unread data (a broker keeps publishing
            # to us until DISCONNECT) sends a TCP RST, and the broker's kernel may then
            # drop packets of ours it has not read yet: the last PUBACKs, which would
            # make it redeliver messages we committed. A broker answers packets in
            # order (MQTT 5 4.6), so once an UNSUBACK comes back, everything before it
            # was applied.
            with contextlib.suppress(MqttError, TimeoutError):
                await self.unsubscribe(["$edge-agent/flush"], timeout=timeout)
        if self.connected:
            self._send(b"\xe0\x00")  # DISCONNECT, normal disconnection (3.14.2.1)
            self._flush()
            transport = self._transport
            if transport is not None:
                transport.close()  # after the buffered writes
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                assert self._disconnected is not None
                await asyncio.wait_for(asyncio.shield(self._disconnected), timeout)
        self._teardown()

    def close(self) -> None:
        """Drop the connection at once, without DISCONNECT (as a crash would)."""
        self._teardown()

    @property
    def connected(self) -> bool:
        return (
            self._transport is not None
            and self._disconnected is not None
            and not self._disconnected.done()
            and self._connack is not None
            and self._connack.done()
            and not self._connack.cancelled()
            and self._connack.exception() is None
        )

    async def wait_disconnected(self) -> str:
        """Wait until the connection is lost or closed; return the reason."""
        assert self._disconnected is not None, "connect() first"
        return await asyncio.shield(self._disconnected)

    # -- data ------------------------------------------------------------

    async def subscribe(
        self, filters: list[tuple[str, int]], timeout: float = 10.0, *, ids: list[int] | None = None
    ) -> list[int]:
        """Subscribe and return the granted QoS per filter; raise MqttError on refusal.

        With `ids`, each filter goes in its own SUBSCRIBE carrying that MQTT 5
        Subscription Identifier (a SUBSCRIBE's properties apply to all its filters).
        """
        self._require()
        groups: list[tuple[list[tuple[str, int]], bytes]] = []
        if ids is None:
            groups.append((filters, b"\x00"))
        else:
            for (f, q), sid in zip(filters, ids, strict=True):
                sp = b"\x0b" + _varint(sid)
                groups.append(([(f, q)], _varint(len(sp)) + sp))
        waits: list[tuple[list[tuple[str, int]], int, asyncio.Future[list[int]]]] = []
        for group, props in groups:
            mid = self._alloc_mid()
            body = _H.pack(mid) + props + b"".join(_utf8(f) + bytes((q & 3,)) for f, q in group)
            fut = self._subacks[mid] = self._future()
            self._send(_packet(0x82, body))
            waits.append((group, mid, fut))
        granted: list[int] = []
        try:
            for group, _, fut in waits:
                codes = await asyncio.wait_for(fut, timeout)
                for (topic, _), code in zip(group, codes, strict=False):
                    if code >= 0x80:
                        raise MqttError(f"subscription to {topic!r} refused: {reason_name(code)}")
                    granted.append(code)
        except TimeoutError as exc:
            raise MqttError(f"no SUBACK from {self.host}:{self.port} within {timeout:g} s") from exc
        finally:
            for _, mid, _ in waits:
                self._subacks.pop(mid, None)
        return granted

    async def unsubscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        """Remove subscriptions (e.g. ones a persistent session kept from an older config)."""
        self._require()
        if not filters:
            return
        mid = self._alloc_mid()
        fut = self._subacks[mid] = self._future()
        self._send(_packet(0xA2, _H.pack(mid) + b"\x00" + b"".join(_utf8(f) for f in filters)))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._subacks.pop(mid, None)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        content_type: str | None = None,
        *,
        retain: bool = False,
        user_properties: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
        user_property: tuple[str, str] | None = None,
    ) -> asyncio.Future[None]:
        """Queue a PUBLISH; the future completes on PUBACK (QoS 1), PUBCOMP (QoS 2) or
        once handed to the transport (QoS 0).

        `user_properties` are MQTT 5 User Properties (3.3.2.3.7), in order;
        `user_property` adds one, e.g. ("content-encoding", "deflate").
        """
        self._require()
        if user_property is not None:
            user_properties = (*user_properties, user_property)
        fut = self._future()
        first = 0x30 | (qos << 1) | (1 if retain else 0)
        props = (
            _props(content_type, user_properties) if (content_type or user_properties) else b"\x00"
        )
        try:
            t = _utf8(topic)
        except MqttError as exc:
            fut.set_exception(exc)
            return fut
        if qos == 0:
            self._send(_packet(first, t + props + payload))
            fut.set_result(None)
            return fut
        mid = self._alloc_mid()
        self._pending[mid] = fut
        pkt = _packet(first, t + _H.pack(mid) + props + payload)
        if len(self._pending) - len(self._waiting) > self._inflight_cap or self._waiting:
            self._waiting.append((mid, pkt))  # sent when an acknowledgement frees a slot
        else:
            self._send(pkt)
        return fut

    def ack(self, mid: int, qos: int = 1) -> None:
        """Acknowledge a received message (manual_ack mode): PUBACK, or PUBREC for QoS 2."""
        if self._transport is not None and qos > 0:
            self._send(_ACK4.pack(0x40 if qos == 1 else 0x50, 2, mid))

    def ack_many(self, mids: list[int]) -> None:
        """PUBACKs for QoS 1 messages, written as one buffer (3.4.2.1: 4 bytes each)."""
        if self._transport is None or not mids:
            return
        pack = _ACK4.pack
        self._send(b"".join([pack(0x40, 2, m) for m in mids]))

    @property
    def unacked_publishes(self) -> int:
        return len(self._pending)

    def pause_reading(self) -> None:
        """Stop reading the socket (backpressure): the broker holds what we do not read."""
        if self._transport is not None and not self._paused:
            self._paused = True
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()
            if self._buf and self._parse_handle is None and self._loop is not None:
                # Bytes read before the pause wait in our buffer; select() cannot see them.
                self._parse_handle = self._loop.call_soon(self._parse_later)

    @property
    def reading_paused(self) -> bool:
        return self._paused

    # -- the wire --------------------------------------------------------

    def _require(self) -> None:
        if not self.connected:
            raise MqttError(f"not connected to {self.host}:{self.port}")

    def _future(self) -> asyncio.Future[Any]:
        assert self._loop is not None
        return self._loop.create_future()

    def _alloc_mid(self) -> int:
        for _ in range(65536):
            self._next_mid = self._next_mid % 65535 + 1
            mid = self._next_mid
            if mid not in self._pending and mid not in self._subacks:
                return mid
        raise MqttError("no free packet identifier (65,535 in flight)")

    def _send(self, data: bytes) -> None:
        """Queue bytes; they are written once per event-loop turn (one send() for a
        turn's worth of PUBACKs and publishes)."""
        if self._transport is None:
            return
        self._out.append(data)
        if self._flush_handle is None:
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        out, self._out = self._out, []
        t = self._transport
        if t is not None and out:
            t.write(b"".join(out) if len(out) > 1 else out[0])
            self._last_sent = time.monotonic()

    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._last_heard = self._last_sent = time.monotonic()

    def _connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            why = "connection closed by the broker"
        else:
            why = _describe(exc) if isinstance(exc, OSError) else str(exc) or type(exc).__name__
        self._lost(why)

    def _lost(self, why: str) -> None:
        self._transport = None
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(
                MqttError(f"{self.host}:{self.port} closed the connection: {why}")
            )
        self._fail_pending(why)
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(why)
        self._stop_timers()

    def _data_received(self, data: bytes) -> None:
        self._last_heard = time.monotonic()
        if self._skip:  # the rest of an oversized PUBLISH
            cut = min(self._skip, len(data))
            self._skip -= cut
            data = data[cut:]
            if not data:
                return
        self._buf = self._buf + data if self._buf else data
        if not self._paused:
            self._parse()

    def _parse_later(self) -> None:
        self._parse_handle = None
        if not self._paused:
            self._parse()

    def _parse(self) -> None:
        try:
            self._parse_packets()
        except (_ProtocolError, IndexError, struct.error, ValueError) as exc:
            log.warning("%s:%d sent a malformed packet: %s", self.host, self.port, exc)
            self._abort(f"protocol error: {exc}")

    def _parse_packets(self) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        on_message = self._on_message
        manual = self._manual_ack
        acks: list[bytes] | None = None
        try:
            while pos < n and not self._paused:
                b0 = buf[pos]
                # Remaining length: a variable byte integer (2.1.4), at most 4 bytes.
                i = pos + 1
                if i >= n:
                    break
                b = buf[i]
                if b < 0x80:
                    rl = b
                    i += 1
                else:
                    rl = b & 0x7F
                    shift = 7
                    i += 1
                    while True:
                        if i >= n:
                            rl = -1
                            break
                        b = buf[i]
                        i += 1
                        rl |= (b & 0x7F) << shift
                        if b < 0x80:
                            break
                        shift += 7
                        if shift > 21:
                            raise _ProtocolError("malformed remaining length")
                    if rl < 0:
                        break
                if rl > MAX_PACKET:
                    if b0 >> 4 != _PUBLISH:
                        raise _ProtocolError(f"a packet of {rl} bytes (more than {MAX_PACKET})")
                    qos = (b0 >> 1) & 3
                    if i + 2 > n:
                        break
                    head = i + 2 + ((buf[i] << 8) | buf[i + 1]) + (2 if qos else 0)
                    if head > n:
                        break  # wait for the topic and packet id (at most 64 KiB)
                    msg = Message(
                        buf[i + 2 : head - (2 if qos else 0)],
                        b"",
                        qos,
                        ((buf[head - 2] << 8) | buf[head - 1]) if qos else 0,
                        bool(b0 & 8),
                        bool(b0 & 1),
                    )
                    msg.too_large = True
                    end = i + rl
                    if end > n:
                        self._skip = end - n
                        end = n
                    pos = end
                    log.warning(
                        "%s:%d sent a PUBLISH of %d bytes on %r: payload skipped",
                        self.host,
                        self.port,
                        rl,
                        msg.topic[:200],
                    )
                    if qos and not manual:
                        self._send(_ACK4.pack(0x40 if qos == 1 else 0x50, 2, msg.mid))
                    if on_message is not None:
                        try:
                            on_message(msg)
                        except Exception:
                            log.exception("message handler failed")
                    continue
                end = i + rl
                if end > n:
                    break
                pos = end
                kind = b0 >> 4
                if kind == _PUBLISH:
                    qos = (b0 >> 1) & 3
                    tl = (buf[i] << 8) | buf[i + 1]
                    j = i + 2 + tl
                    topic = buf[i + 2 : j]
                    mid = 0
                    if qos:
                        mid = (buf[j] << 8) | buf[j + 1]
                        j += 2
                    if buf[j] == 0:
                        props = None
                        j += 1
                    else:
                        props, j = _props_at(buf, j)
                    if j > end:
                        raise _ProtocolError("PUBLISH shorter than its headers")
                    msg = Message(topic, buf[j:end], qos, mid, bool(b0 & 8), bool(b0 & 1))
                    if props:
                        if 0x23 in props:
                            raise _ProtocolError("topic alias without a Topic Alias Maximum")
                        msg.content_type = props.get(0x03)
                        msg.subscription_ids = tuple(props.get(0x0B, ()))
                        msg.user_properties = tuple(props.get(0x26, ()))
                    self.messages_received += 1
                    if qos and not manual:
                        if acks is None:
                            acks = []
                        acks.append(_ACK4.pack(0x40 if qos == 1 else 0x50, 2, mid))
                    if on_message is not None:
                        try:
                            on_message(msg)
                        except Exception:  # one bad handler call never ends the connection
                            log.exception("message handler failed")
                elif kind in (_PUBACK, _PUBCOMP):
                    self._ack_received(_H.unpack_from(buf, i)[0], buf[i + 2] if rl > 2 else 0)
                elif kind == _PUBREC:
                    mid = _H.unpack_from(buf, i)[0]
                    code = buf[i + 2] if rl > 2 else 0
                    if code >= 0x80:
                        self._ack_received(mid, code)
                    else:
                        self._send(_ACK4.pack(0x62, 2, mid))  # PUBREL
                elif kind == _PUBREL:
                    self._send(_ACK4.pack(0x70, 2, _H.unpack_from(buf, i)[0]))  # PUBCOMP
                elif kind in (_SUBACK, _UNSUBACK):
                    mid = _H.unpack_from(buf, i)[0]
                    _, k = _props_at(buf, i + 2)
                    fut = self._subacks.get(mid)
                    if fut is not None and not fut.done():
                        fut.set_result(list(buf[k:end]))
                elif kind == _PINGRESP:
                    pass
                elif kind == _CONNACK:
                    self._connack_received(buf, i, end)
                elif kind == _DISCONNECT:
                    code = buf[i] if rl else 0
                    self._abort(
                        f"the broker disconnected: {reason_name(code) if code else 'normal'}"
                    )
                    return
                else:
                    raise _ProtocolError(f"unexpected packet type {kind}")
        finally:
            self._buf = buf[pos:] if pos < n else b""
            if acks:
                self._send(b"".join(acks))

    def _connack_received(self, buf: bytes, i: int, end: int) -> None:
        fut = self._connack
        if fut is None or fut.done():
            raise _ProtocolError("a second CONNACK")
        present, code = bool(buf[i] & 1), buf[i + 1]
        props, _ = _props_at(buf, i + 2) if end > i + 2 else ({}, end)
        if code >= 0x80:
            fut.set_exception(
                MqttError(
                    f"{self.host}:{self.port} refused the connection: {reason_name(code).capitalize()}"
                )
            )
            return
        self.server_receive_maximum = int(props.get(0x21, 65535)) or 65535
        self._inflight_cap = min(self._max_inflight, self.server_receive_maximum)
        if 0x13 in props:  # Server Keep Alive (3.2.2.3.14) overrides ours
            self._keepalive = int(props[0x13])
        fut.set_result(present)
        if self._keepalive > 0 and self._ping_task is None and self._loop is not None:
            self._ping_task = self._loop.create_task(
                self._keep_alive(), name=f"mqtt-ping-{self.host}:{self.port}"
            )

    def _ack_received(self, mid: int, code: int) -> None:
        fut = self._pending.pop(mid, None)
        if fut is not None and not fut.done():
            if code >= 0x80:
                fut.set_exception(MqttError(f"the broker refused the publish: {reason_name(code)}"))
            else:
                fut.set_result(None)
        waiting = self._waiting
        while waiting and len(self._pending) - len(waiting) < self._inflight_cap:
            self._send(waiting.popleft()[1])

    async def _keep_alive(self) -> None:
        """PINGREQ when we sent nothing for half the keep-alive (3.1.2.10); the
        connection is dead when nothing came back for 1.5 times it."""
        ka = self._keepalive
        while self._transport is not None:
            await asyncio.sleep(max(0.5, ka / 4))
            now = time.monotonic()
            if now - self._last_heard > 1.5 * ka:
                self._abort(f"no answer from the broker within {1.5 * ka:g} s (keep-alive)")
                return
            if now - self._last_sent >= ka / 2:
                self._send(b"\xc0\x00")

    def _abort(self, why: str) -> None:
        t = self._transport
        self._lost(why)
        if t is not None:
            t.abort()

    def _stop_timers(self) -> None:
        for h in (self._flush_handle, self._parse_handle):
            if h is not None:
                h.cancel()
        self._flush_handle = self._parse_handle = None
        task, self._ping_task = self._ping_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        self._waiting.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(MqttError(f"connection lost before PUBACK: {why}"))
                fut.exception()  # retrieved: a caller that gave up on it is not an error
        for suback in self._subacks.values():
            if not suback.done():
                suback.set_exception(MqttError(f"connection lost before SUBACK: {why}"))

    def _teardown(self) -> None:
        t, self._transport = self._transport, None
        self._out = []
        if t is not None:
            t.abort()
        self._buf = b""
        self._skip = 0
        self._lost("closed")
        if self._connack is not None and self._connack.done() and not self._connack.cancelled():
            self._connack.exception()  # mark retrieved

"""MqttClient: the session on top of a `Connection` (connection.py).

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
import ssl
import time
from collections.abc import Callable, Iterable

from edge_agent.mqtt.codec import (
    U16,
    U32,
    ProtocolError,
    encode_binary,
    encode_packet,
    encode_props,
    encode_utf8,
    encode_varint,
    read_props,
    reason_name,
)
from edge_agent.mqtt.connection import MAX_PACKET, Connection, _Protocol
from edge_agent.mqtt.messages import Message, MqttError, PublishGroup, Will
from edge_agent.mqtt.tls import TlsSettings, describe_failure

__all__ = ["MAX_PACKET", "MqttClient"]


class MqttClient(Connection):
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
        read_nap: float = 0.0,
    ) -> None:
        super().__init__(
            host=host,
            port=port,
            manual_ack=manual_ack,
            keepalive=keepalive,
            on_message=on_message,
            max_inflight=max_inflight,
            read_nap=read_nap,
        )
        self._client_id = client_id
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._receive_maximum = receive_maximum
        self._tls = tls
        self._username, self._password = username, password
        self._will = will

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
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: _Protocol(self),
                    self.host,
                    self.port,
                    ssl=ctx,
                    server_hostname=self.host if ctx is not None else None,
                )
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
            self._teardown()
            raise MqttError(
                f"cannot connect to {self.host}:{self.port}: {describe_failure(exc)}"
            ) from exc
        self._send(self._connect_packet())
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._connack)
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
            props += b"\x11" + U32.pack(max(0, min(int(self._session_expiry), 0xFFFFFFFF)))
        if self._receive_maximum is not None:
            props += b"\x21" + U16.pack(max(1, min(int(self._receive_maximum), 65535)))
        payload = encode_utf8(self._client_id)
        w = self._will
        if w is not None:
            flags |= 0x04 | (w.qos << 3) | (0x20 if w.retain else 0)
            payload += (
                encode_props(w.content_type, w.user_properties)
                + encode_utf8(w.topic)
                + encode_binary(w.payload)
            )
        if self._username:
            flags |= 0x80
            payload += encode_utf8(self._username)
        if self._password:
            flags |= 0x40
            payload += encode_binary(self._password.encode("utf-8"))
        body = b"\x00\x04MQTT\x05" + bytes((flags,)) + U16.pack(min(self._keepalive, 0xFFFF))
        body += encode_varint(len(props)) + props + payload
        return encode_packet(0x10, body)

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
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._disconnected)
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
                sp = b"\x0b" + encode_varint(sid)
                groups.append(([(f, q)], encode_varint(len(sp)) + sp))
        waits: list[tuple[list[tuple[str, int]], int, asyncio.Future[list[int]]]] = []
        for group, props in groups:
            mid = self._alloc_mid()
            body = (
                U16.pack(mid) + props + b"".join(encode_utf8(f) + bytes((q & 3,)) for f, q in group)
            )
            fut = self._subacks[mid] = self._future()
            self._send(encode_packet(0x82, body))
            waits.append((group, mid, fut))
        granted: list[int] = []
        try:
            for group, _, fut in waits:
                async with asyncio.timeout(timeout):
                    codes = await fut
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
        self._send(
            encode_packet(0xA2, U16.pack(mid) + b"\x00" + b"".join(encode_utf8(f) for f in filters))
        )
        try:
            async with asyncio.timeout(timeout):
                await fut
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
            encode_props(content_type, user_properties)
            if (content_type or user_properties)
            else b"\x00"
        )
        try:
            t = encode_utf8(topic)
        except MqttError as exc:
            fut.set_exception(exc)
            return fut
        if qos == 0:
            self._send(encode_packet(first, t + props + payload))
            fut.set_result(None)
            return fut
        mid = self._alloc_mid()
        self._pending[mid] = fut
        pkt = encode_packet(first, t + U16.pack(mid) + props + payload)
        if len(self._pending) - len(self._waiting) > self._inflight_cap or self._waiting:
            self._waiting.append((mid, pkt))  # sent when an acknowledgement frees a slot
        else:
            self._send(pkt)
        return fut

    def publish_many(
        self, messages: Iterable[tuple[str, bytes, str | None]], qos: int = 1
    ) -> PublishGroup:
        """Queue PUBLISHes of (topic, payload, content type) with one completion for all.

        As `publish` each, without a future per message (the firmware bridge's path):
        the group's future completes when the broker answered them all, and its
        `undelivered()` names the ones it refused or did not acknowledge.
        """
        self._require()
        group = PublishGroup(self._future())
        first = 0x30 | (qos << 1)
        heads: dict[tuple[str, str | None], tuple[bytes, bytes]] = {}  # -> (topic, props)
        pending, waiting, track = self._pending, self._waiting, group.track
        out: list[bytes] = []  # written as one buffer (what the in-flight limit lets go)
        for index, (topic, payload, content_type) in enumerate(messages):
            head = heads.get((topic, content_type))
            if head is None:
                try:
                    t = encode_utf8(topic)
                except MqttError:
                    group.refuse(index)
                    continue
                p = encode_props(content_type) if content_type else b"\x00"
                head = heads[topic, content_type] = (t, p)
            t, p = head
            if qos == 0:
                out.append(encode_packet(first, t + p + payload))
                continue
            mid = self._alloc_mid()
            pending[mid] = group
            track(mid, index)
            n = len(t) + len(p) + len(payload) + 2
            pkt = b"".join(
                (
                    bytes((first, n)) if n < 0x80 else bytes((first,)) + encode_varint(n),
                    t,
                    U16.pack(mid),
                    p,
                    payload,
                )
            )
            if waiting or len(pending) - len(waiting) > self._inflight_cap:
                waiting.append((mid, pkt))  # sent when an acknowledgement frees a slot
            else:
                out.append(pkt)
        if out:
            self._send(b"".join(out))
        group.sent_all()
        return group

    # -- the session -----------------------------------------------------

    def _require(self) -> None:
        if not self.connected:
            raise MqttError(f"not connected to {self.host}:{self.port}")

    def _connack_received(self, buf: bytes, i: int, end: int) -> None:
        fut = self._connack
        if fut is None or fut.done():
            raise ProtocolError("a second CONNACK")
        present, code = bool(buf[i] & 1), buf[i + 1]
        props, _ = read_props(buf, i + 2) if end > i + 2 else ({}, end)
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

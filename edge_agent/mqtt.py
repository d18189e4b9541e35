"""paho-mqtt driven by the asyncio event loop: the one module that imports paho.

No `loop_start()` thread: paho's socket callbacks map to `loop.add_reader` /
`loop.add_writer`, and a 1 s task calls `loop_misc()` for keepalives. Only the
blocking TCP/TLS connect runs in the default executor; what paho announces from
that thread is applied on the loop once the connect returns.

One `MqttClient` is one connection. Reconnecting means a new `MqttClient`: no
paho-side queue survives a disconnect, so what is resent after an outage is
decided by the caller (the outbox), never by paho.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt._packet as _paho_packet
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.errors import EdgeAgentError

__all__ = ["Message", "MqttClient", "MqttError", "TlsSettings", "Will"]

log = logging.getLogger("edge_agent.mqtt")

Message = paho.MQTTMessage


class _SharedTableProperties(Properties):
    """paho's Properties for received packets, without paho's per-packet setup cost.

    paho 2.x builds a Properties for every MQTT 5 PUBLISH it decodes, and its
    __init__ rebuilds three lookup tables (~30 entries, ~80 str.replace calls): with
    an empty property block that is most of the ~10 us paho spends decoding a
    PUBLISH (bench/README.md has the profile). The tables are never mutated, so one
    copy serves every instance, and an empty property block (one 0x00 byte, the
    common case) needs no parsing. Everything else is paho's own code;
    tests/test_mqtt.py checks that decoding gives the same result as paho's.
    """

    _proto = Properties(PacketTypes.PUBLISH)

    def __init__(self, packetType: int) -> None:
        set_ = object.__setattr__
        set_(self, "packetType", packetType)
        set_(self, "types", self._proto.types)
        set_(self, "names", self._proto.names)
        set_(self, "properties", self._proto.properties)

    def unpack(self, buffer: Any) -> tuple[Properties, int]:
        if buffer[:1] == b"\x00":
            return self, 1
        return super().unpack(buffer)  # type: ignore[no-any-return]


class _PackedProperties(Properties):
    """PUBLISH properties that never change after set-up: packed once, not per message.

    paho calls pack() on every publish (~30 us of str.replace and hasattr scans).
    """

    def __init__(self, packetType: int) -> None:
        super().__init__(packetType)
        object.__setattr__(self, "_packed", None)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        object.__setattr__(self, "_packed", None)

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()
            object.__setattr__(self, "_packed", packed)
        return packed


def _install_shared_table_properties() -> None:
    # decode_publish and its siblings look `Properties` up in paho.mqtt._packet at
    # call time; replace it there only, and only on the paho major version we know.
    if getattr(_paho_packet, "Properties", None) is Properties and hasattr(_paho_packet, "decode_publish"):
        _paho_packet.Properties = _SharedTableProperties  # type: ignore[misc]


_install_shared_table_properties()


class MqttError(EdgeAgentError):
    """A connection, subscription or publish failed; the message says why."""


@dataclass(frozen=True, slots=True)
class Will:
    """The MQTT will (3.1.2.5): what the broker publishes when the connection dies uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Server verification against `ca_file` (or the system store), plus a client chain for mTLS."""

    ca_file: str = ""  # "" = the system's trust store
    cert_file: str = ""
    key_file: str = ""

    def context(self) -> ssl.SSLContext:
        """A fresh context, files read now (a certificate renewed on disk is used at the next connect).

        Raises MqttError naming the file and what is wrong with it.
        """
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file or None)
        except FileNotFoundError as exc:
            raise MqttError(f"ca_file {self.ca_file}: no such file") from exc
        except OSError as exc:  # SSLError included: not PEM, no certificate in it
            raise MqttError(f"ca_file {self.ca_file}: cannot load CA certificates: {_describe_ssl(exc)}") from exc
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file or None)
            except FileNotFoundError as exc:
                missing = exc.filename or (self.cert_file if not self.key_file else f"{self.cert_file} or {self.key_file}")
                raise MqttError(f"client certificate: {missing}: no such file") from exc
            except ssl.SSLError as exc:
                if "KEY_VALUES_MISMATCH" in str(exc):
                    why = f"key_file {self.key_file or self.cert_file} is not the key of cert_file {self.cert_file}"
                else:
                    why = f"cert_file {self.cert_file} / key_file {self.key_file or '(in cert_file)'}: {_describe_ssl(exc)}"
                raise MqttError(f"client certificate: {why}") from exc
            except OSError as exc:
                raise MqttError(f"client certificate {self.cert_file}: {exc.strerror or exc}") from exc
        ctx.sslsocket_class = _ClosingSSLSocket
        return ctx


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when its handshake fails.

    paho's `_ssl_wrap_socket` lets a failed `do_handshake()` propagate without
    closing the socket it just wrapped (paho 2.2), so every refused handshake (a
    wrong CA, an expired certificate) would leave a file descriptor to the garbage
    collector: one per reconnect attempt for as long as upstream stays bad.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


_CONNACK_REASONS_RETRYABLE = {0x88, 0x89, 0x97, 0x9F}  # unavailable, busy, quota, rate
_PUBACK = struct.Struct(">BBH")
_RECV_CHUNK = 65536
_READ_TURN = 256  # packets read per event-loop turn


class _BufferedRecv:
    """A drop-in for paho's _sock_recv that reads the socket 64 KiB at a time.

    paho reads a packet's first byte, then its length byte by byte, then its body:
    three or more recv() system calls per message. Serving those reads from one
    buffer makes it one recv() per 64 KiB. Semantics kept: BlockingIOError when
    nothing is buffered and the socket has nothing, b"" at end of stream.

    Data in this buffer is invisible to select(): whoever stops reading early must
    come back while `buffered` is true (MqttClient._do_read does).
    """

    __slots__ = ("_client", "_data", "_pos", "_sock")

    def __init__(self, client: paho.Client, sock: Any) -> None:
        self._client, self._sock = client, sock
        self._data = b""
        self._pos = 0

    @property
    def buffered(self) -> bool:
        return self._pos < len(self._data)

    def __call__(self, bufsize: int) -> bytes:
        if self._pos >= len(self._data):
            try:
                self._data = self._sock.recv(_RECV_CHUNK)
            except ssl.SSLWantReadError as err:
                raise BlockingIOError() from err
            except ssl.SSLWantWriteError as err:
                self._client._call_socket_register_write()
                raise BlockingIOError() from err
            self._pos = 0
            if not self._data:
                return b""
        pos = self._pos
        chunk = self._data[pos : pos + bufsize]
        self._pos = pos + len(chunk)
        return chunk


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
        self._keepalive = keepalive
        self._on_message = on_message
        self._max_inflight = max_inflight
        self._will = will
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: Any = None
        self._misc_task: asyncio.Task[None] | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._disconnected: asyncio.Future[str] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._subacks: dict[int, asyncio.Future[list[Any]]] = {}
        self._in_connect = False
        self._want_reader = False
        self._publish_props: dict[tuple[str | None, tuple[str, str] | None], Properties] = {}
        self._paused = False
        self._recv: _BufferedRecv | None = None
        self._read_again: asyncio.Handle | None = None
        # The broker's Receive Maximum from CONNACK (MQTT 5 3.2.2.3.3): how many QoS 1/2
        # publishes it accepts unacknowledged. paho does not enforce it; callers must.
        self.server_receive_maximum = 65535

    # -- lifecycle -------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> bool:
        """Open the connection; return the broker's session-present flag."""
        loop = self._loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._disconnected = loop.create_future()
        c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=self._manual_ack,
            reconnect_on_failure=False,
        )
        # Callers keep their own in-flight window at or below this: paho's
        # _update_inflight() scans its whole queue on every PUBACK, so letting
        # publishes queue inside paho turns draining quadratic.
        c.max_inflight_messages_set(self._max_inflight)
        c.max_queued_messages_set(0)
        if self._username:
            c.username_pw_set(self._username, self._password or None)
        if self._tls is not None:
            c.tls_set_context(self._tls.context())
        if self._will is not None:
            w = self._will
            wprops = None
            if w.content_type:
                wprops = Properties(PacketTypes.WILLMESSAGE)
                wprops.ContentType = w.content_type
            c.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain, properties=wprops)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_subscribe
        if self._on_message is not None:
            c.on_message = self._on_message_cb
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_socket_register_write
        c.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = c
        props = Properties(PacketTypes.CONNECT)
        if self._session_expiry is not None:
            props.SessionExpiryInterval = min(int(self._session_expiry), 0xFFFFFFFF)
        if self._receive_maximum is not None:
            props.ReceiveMaximum = max(1, min(int(self._receive_maximum), 65535))
        self._in_connect = True
        try:
            await asyncio.wait_for(
                loop.run_in_executor(
                    None,
                    lambda: c.connect(
                        self.host,
                        self.port,
                        keepalive=self._keepalive,
                        clean_start=self._clean_start,
                        properties=props,
                    ),
                ),
                timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
            self._teardown()
            raise MqttError(f"cannot connect to {self.host}:{self.port}: {_describe(exc)}") from exc
        finally:
            self._in_connect = False
        # paho announced its socket from the executor thread; attach it here, on the loop.
        self._attach()
        try:
            return await asyncio.wait_for(asyncio.shield(self._connack), timeout)
        except TimeoutError as exc:
            self._teardown()
            raise MqttError(f"no CONNACK from {self.host}:{self.port} within {timeout:g} s") from exc
        except MqttError:
            self._teardown()
            raise

    async def disconnect(self, timeout: float = 2.0) -> None:
        """Make sure the broker applied what we sent, send DISCONNECT, and close."""
        c = self._client
        if c is None:
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
            c.disconnect()
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
            self._client is not None
            and self._disconnected is not None
            and not self._disconnected.done()
            and self._connack is not None
            and self._connack.done()
            and not self._connack.exception()
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
        c = self._require()
        assert self._loop is not None
        groups: list[tuple[list[tuple[str, int]], Properties | None]] = []
        if ids is None:
            groups.append((filters, None))
        else:
            for (f, q), sid in zip(filters, ids, strict=True):
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sid
                groups.append(([(f, q)], props))
        waits: list[tuple[list[tuple[str, int]], int, asyncio.Future[list[Any]]]] = []
        for group, props in groups:
            opts = [(f, paho.SubscribeOptions(qos=q)) for f, q in group]
            rc, mid = c.subscribe(opts, properties=props)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise MqttError(f"subscribe failed: {paho.error_string(rc)}")
            fut: asyncio.Future[list[Any]] = self._loop.create_future()
            self._subacks[mid] = fut
            waits.append((group, mid, fut))
        granted: list[int] = []
        try:
            for group, _, fut in waits:
                codes = await asyncio.wait_for(fut, timeout)
                for (topic, _), code in zip(group, codes, strict=False):
                    value = code.value if hasattr(code, "value") else int(code)
                    if value >= 0x80:
                        raise MqttError(f"subscription to {topic!r} refused: {code}")
                    granted.append(value)
        finally:
            for _, mid, _ in waits:
                self._subacks.pop(mid, None)
        return granted

    async def unsubscribe(self, filters: list[str], timeout: float = 10.0) -> None:
        """Remove subscriptions (e.g. ones a persistent session kept from an older config)."""
        c = self._require()
        if not filters:
            return
        assert self._loop is not None
        rc, mid = c.unsubscribe(filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"unsubscribe failed: {paho.error_string(rc)}")
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        self._subacks[mid] = fut
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
        user_property: tuple[str, str] | None = None,
    ) -> asyncio.Future[None]:
        """Queue a PUBLISH; the future completes on PUBACK (QoS 1) or once written (QoS 0).

        `user_property` is one MQTT 5 User Property (3.3.2.3.7), e.g.
        ("content-encoding", "deflate").
        """
        c = self._require()
        props = None
        if content_type or user_property:
            # Building a paho Properties costs ~30 us; it is packed at publish
            # time, so one per (content type, user property) serves every message.
            key = (content_type, user_property)
            props = self._publish_props.get(key)
            if props is None:
                props = self._publish_props[key] = _PackedProperties(PacketTypes.PUBLISH)
                if content_type:
                    props.ContentType = content_type
                if user_property:
                    props.UserProperty = user_property
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        info = c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            fut.set_exception(MqttError(f"publish failed: {paho.error_string(info.rc)}"))
            return fut
        if info.is_published():
            fut.set_result(None)
        else:
            self._pending[info.mid] = fut
        return fut

    def ack(self, mid: int, qos: int = 1) -> None:
        """Send the PUBACK for a received message (manual_ack mode)."""
        if self._client is not None and qos > 0:
            self._client.ack(mid, qos)

    def ack_many(self, mids: list[int]) -> None:
        """PUBACKs for QoS 1 messages, written as one buffer.

        paho queues one packet (and later makes one send()) per acknowledgement; a
        checkpoint acknowledges thousands at once. In MQTT 5 a PUBACK with reason
        Success and no properties is 4 bytes (3.4.2.1): 0x40, 2, packet id. paho keeps
        no state for received QoS 1 messages in manual-ack mode, so handing it the
        concatenation as one outgoing packet is the same bytes in one write.
        """
        c = self._client
        if c is None or not mids:
            return
        pack = _PUBACK.pack
        c._packet_queue(0x40, b"".join(pack(0x40, 2, m) for m in mids), 0, 0)

    @property
    def unacked_publishes(self) -> int:
        return len(self._pending)

    def pause_reading(self) -> None:
        """Stop reading the socket (backpressure): the broker holds what we do not read."""
        if self._loop is not None and self._sock is not None and not self._paused:
            self._paused = True
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        if self._loop is not None and self._sock is not None and self._paused:
            self._paused = False
            self._loop.add_reader(self._sock, self._do_read)
            self._schedule_read()  # what is already buffered will not wake select()

    def _schedule_read(self) -> None:
        if (self._loop is not None and not self._paused and self._read_again is None
                and self._recv is not None and self._recv.buffered):
            self._read_again = self._loop.call_soon(self._do_read)

    @property
    def reading_paused(self) -> bool:
        return self._paused

    # -- paho callbacks (all on the loop, except socket-open during connect) --

    def _require(self) -> paho.Client:
        if self._client is None or not self.connected:
            raise MqttError(f"not connected to {self.host}:{self.port}")
        return self._client

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        fut = self._connack
        if fut is None or fut.done():
            return
        if reason.is_failure:
            fut.set_exception(MqttError(f"{self.host}:{self.port} refused the connection: {reason}"))
        else:
            self.server_receive_maximum = int(getattr(props, "ReceiveMaximum", 65535) or 65535)
            fut.set_result(bool(flags.session_present))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        why = str(reason)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError(f"{self.host}:{self.port} closed the connection: {why}"))
        self._fail_pending(why)
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(why)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        fut = self._pending.pop(mid, None)
        if fut is None or fut.done():
            return
        if reason.is_failure:
            fut.set_exception(MqttError(f"upstream broker refused the publish: {reason}"))
        else:
            fut.set_result(None)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        fut = self._subacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(list(codes))

    def _on_message_cb(self, client: paho.Client, userdata: Any, message: Message) -> None:
        assert self._on_message is not None
        try:
            self._on_message(message)
        except Exception:  # never raise into paho
            log.exception("message handler failed")

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        self._want_reader = True
        if not self._in_connect:
            self._attach()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._detach(sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._in_connect or self._loop is None:
            return  # _attach() checks want_write() once connect() returns
        with contextlib.suppress(ValueError, OSError):
            self._loop.add_writer(sock, self._do_write)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and not self._in_connect:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock)

    # -- socket plumbing -------------------------------------------------

    def _attach(self) -> None:
        loop, c, sock = self._loop, self._client, self._sock
        if loop is None or c is None or sock is None or not self._want_reader:
            return
        self._want_reader = False
        self._recv = _BufferedRecv(c, sock)
        c._sock_recv = self._recv  # type: ignore[method-assign]
        loop.add_reader(sock, self._do_read)
        if c.want_write():
            loop.add_writer(sock, self._do_write)
        if self._misc_task is None:
            self._misc_task = loop.create_task(self._misc(), name=f"mqtt-misc-{self.host}:{self.port}")

    def _detach(self, sock: Any) -> None:
        loop = self._loop
        if loop is not None and sock is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock)
            with contextlib.suppress(ValueError, OSError):
                loop.remove_writer(sock)

    def _do_read(self) -> None:
        # loop_read() handles one packet per call (paho reads the header a byte
        # at a time); drain everything the socket holds in one loop turn so a
        # burst costs one select() instead of one per message.
        self._read_again = None
        c = self._client
        if c is None or self._paused:
            return
        read = c._packet_read  # private, but the only way to learn "socket drained" (AGAIN)
        # At most 256 packets per turn: bounds what is held between reading and
        # processing (a message may decode into hundreds of readings) and lets timers
        # and other sockets run in between.
        for _ in range(_READ_TURN):
            if c._sock is None or self._paused:
                return
            rc = read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                c._loop_rc_handle(rc)
                return
        # Stopped at the cap: packets may wait in our buffer, where select() cannot
        # see them (the broker may send nothing more until we acknowledge them).
        self._schedule_read()

    def _do_write(self) -> None:
        c = self._client
        if c is not None:
            c.loop_write()

    async def _misc(self) -> None:
        while self._client is not None:
            await asyncio.sleep(1.0)
            c = self._client
            if c is None:
                return
            c.loop_misc()

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(MqttError(f"connection lost before PUBACK: {why}"))
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(MqttError(f"connection lost before SUBACK: {why}"))

    def _teardown(self) -> None:
        if self._read_again is not None:
            self._read_again.cancel()
            self._read_again = None
        c, self._client = self._client, None
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        self._detach(self._sock)
        if c is not None:
            with contextlib.suppress(Exception):
                c.on_socket_close = None
                c.on_socket_unregister_write = None
                sock = c.socket()
                if sock is not None:
                    sock.close()
                c._sock = None
        self._sock = None
        self._fail_pending("closed")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError("closed"))
            self._connack.exception()  # mark retrieved
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result("closed")


# OpenSSL verify results that mean "ca_file is not the CA that signed the broker's certificate".
_WRONG_CA = (
    "unable to get local issuer certificate",
    "self-signed certificate",
    "self signed certificate",
    "unable to verify the first certificate",
)
_SSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\]\s*|\s*\(_ssl\.c:\d+\)$")


def _describe_ssl(exc: OSError) -> str:
    """An ssl.SSLError's words without the `[SSL: CODE]` prefix and the `(_ssl.c:NNN)` suffix."""
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    return _SSL_NOISE.sub("", text).strip() or type(exc).__name__


def _describe(exc: BaseException) -> str:
    """One clause saying why a connect failed, for a log line and for /healthz."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or _describe_ssl(exc)
        if any(w in why for w in _WRONG_CA):
            # The most common cause by far: the wrong or a missing ca_file.
            why += " (is ca_file the CA that signed the broker's certificate?)"
        return f"TLS certificate verification failed: {why}"
    if isinstance(exc, ssl.SSLError):
        why = _describe_ssl(exc)
        if "alert" in why:
            return f"TLS handshake failed: the broker refused it ({why})"
        if "wrong version number" in why or "record layer failure" in why:
            return f"TLS handshake failed: {why} (is the port a TLS listener?)"
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return f"TLS handshake failed: the broker closed the connection ({why})"
        return f"TLS handshake failed: {why}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        # "[Errno 111] Connection refused" -> "connection refused"; DNS errors keep their words.
        return exc.strerror[:1].lower() + exc.strerror[1:] if exc.errno else exc.strerror
    return str(exc) or type(exc).__name__

"""One MQTT 5 byte stream over an asyncio transport: the `Protocol` that parses what
the event loop reads, writes batched once per loop turn, the in-flight limit on our
publishes and manual acknowledgements (read backpressure and naps: flow.py).

`MqttClient` (client.py) builds on it with the API (connect, subscribe, publish);
this layer owns the bytes and the per-connection state, nothing of the session.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from edge_agent.mqtt.codec import (
    ACK4,
    CONNACK,
    DISCONNECT,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    U16,
    UNSUBACK,
    ProtocolError,
    read_props,
    read_remaining_length,
    reason_name,
)
from edge_agent.mqtt.flow import NAP_BELOW, ReadFlow
from edge_agent.mqtt.messages import Message, MqttError, PublishGroup
from edge_agent.mqtt.tls import describe_failure

__all__ = ["MAX_PACKET", "Connection"]

log = logging.getLogger("edge_agent.mqtt")

# Bounds what one connection buffers. A PUBLISH larger than this is not held: its
# payload is skipped as it streams in and the Message comes with `too_large` set and
# an empty payload (the caller counts it; QoS 1 is still acknowledged by the caller),
# so one oversized message can neither exhaust memory nor, redelivered, stall a session.
MAX_PACKET = 4 * 1024 * 1024


class _Protocol(asyncio.Protocol):
    """Feeds what the transport reads to its client; says when the connection ends."""

    def __init__(self, client: Connection) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._connection_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.client._data_received(data)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._connection_lost(exc)


class Connection(ReadFlow):
    """The wire half of one MQTT 5 connection, read and written from the event loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        manual_ack: bool,
        keepalive: int,
        on_message: Callable[[Message], None] | None,
        max_inflight: int,
        read_nap: float = 0.0,
    ) -> None:
        self.host, self.port = host, port
        self._read_nap = max(0.0, read_nap)  # seconds; see flow.py
        self._napping = False
        self._manual_ack = manual_ack
        self._keepalive = max(0, int(keepalive))
        self._on_message = on_message
        self._max_inflight = max(1, max_inflight)
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
        # QoS 1/2 publishes awaiting their ack: a future each (publish), or their group
        # (publish_many)
        self._pending: dict[int, asyncio.Future[None] | PublishGroup] = {}
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

    # -- acknowledgements and backpressure ----------------------------------

    def ack(self, mid: int, qos: int = 1) -> None:
        """Acknowledge a received message (manual_ack mode): PUBACK, or PUBREC for QoS 2."""
        if self._transport is not None and qos > 0:
            self._send(ACK4.pack(0x40 if qos == 1 else 0x50, 2, mid))

    def ack_many(self, mids: list[int]) -> None:
        """PUBACKs for QoS 1 messages, written as one buffer (3.4.2.1: 4 bytes each)."""
        if self._transport is None or not mids:
            return
        pack = ACK4.pack
        self._send(b"".join([pack(0x40, 2, m) for m in mids]))

    @property
    def unacked_publishes(self) -> int:
        return len(self._pending)

    # -- the wire --------------------------------------------------------

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
            why = (
                describe_failure(exc)
                if isinstance(exc, OSError)
                else str(exc) or type(exc).__name__
            )
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
        if self._read_nap and len(data) < NAP_BELOW and not self._napping:
            self._nap()

    def _parse_later(self) -> None:
        self._parse_handle = None
        if not self._paused:
            self._parse()

    def _parse(self) -> None:
        try:
            self._parse_packets()
        except (ProtocolError, IndexError, struct.error, ValueError) as exc:
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
                if b < 0x80:  # one byte: most packets, read inline
                    rl = b
                    i += 1
                else:
                    rl, i = read_remaining_length(buf, i)
                    if rl < 0:
                        break
                if rl > MAX_PACKET:
                    if b0 >> 4 != PUBLISH:
                        raise ProtocolError(f"a packet of {rl} bytes (more than {MAX_PACKET})")
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
                        self._send(ACK4.pack(0x40 if qos == 1 else 0x50, 2, msg.mid))
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
                if kind == PUBLISH:
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
                        props, j = read_props(buf, j)
                    if j > end:
                        raise ProtocolError("PUBLISH shorter than its headers")
                    msg = Message(topic, buf[j:end], qos, mid, bool(b0 & 8), bool(b0 & 1))
                    if props:
                        if 0x23 in props:
                            raise ProtocolError("topic alias without a Topic Alias Maximum")
                        msg.content_type = props.get(0x03)
                        msg.subscription_ids = tuple(props.get(0x0B, ()))
                        msg.user_properties = tuple(props.get(0x26, ()))
                    self.messages_received += 1
                    if qos and not manual:
                        if acks is None:
                            acks = []
                        acks.append(ACK4.pack(0x40 if qos == 1 else 0x50, 2, mid))
                    if on_message is not None:
                        try:
                            on_message(msg)
                        except Exception:  # one bad handler call never ends the connection
                            log.exception("message handler failed")
                elif kind in (PUBACK, PUBCOMP):
                    self._ack_received(U16.unpack_from(buf, i)[0], buf[i + 2] if rl > 2 else 0)
                elif kind == PUBREC:
                    mid = U16.unpack_from(buf, i)[0]
                    code = buf[i + 2] if rl > 2 else 0
                    if code >= 0x80:
                        self._ack_received(mid, code)
                    else:
                        self._send(ACK4.pack(0x62, 2, mid))  # PUBREL
                elif kind == PUBREL:
                    self._send(ACK4.pack(0x70, 2, U16.unpack_from(buf, i)[0]))  # PUBCOMP
                elif kind in (SUBACK, UNSUBACK):
                    mid = U16.unpack_from(buf, i)[0]
                    _, k = read_props(buf, i + 2)
                    fut = self._subacks.get(mid)
                    if fut is not None and not fut.done():
                        fut.set_result(list(buf[k:end]))
                elif kind == PINGRESP:
                    pass
                elif kind == CONNACK:
                    self._connack_received(buf, i, end)
                elif kind == DISCONNECT:
                    code = buf[i] if rl else 0
                    self._abort(
                        f"the broker disconnected: {reason_name(code) if code else 'normal'}"
                    )
                    return
                else:
                    raise ProtocolError(f"unexpected packet type {kind}")
        finally:
            self._buf = buf[pos:] if pos < n else b""
            if acks:
                self._send(b"".join(acks))

    def _connack_received(self, buf: bytes, i: int, end: int) -> None:
        raise NotImplementedError  # the session's business: MqttClient

    def _ack_received(self, mid: int, code: int) -> None:
        fut = self._pending.pop(mid, None)
        if isinstance(fut, PublishGroup):
            fut.answer(mid, code)
        elif fut is not None and not fut.done():
            if code >= 0x80:
                fut.set_exception(MqttError(f"the broker refused the publish: {reason_name(code)}"))
            else:
                fut.set_result(None)
        waiting = self._waiting
        while waiting and len(self._pending) - len(waiting) < self._inflight_cap:
            self._send(waiting.popleft()[1])

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
            if isinstance(fut, PublishGroup):
                fut.fail(why)
            elif not fut.done():
                fut.set_exception(MqttError(f"connection lost before PUBACK: {why}"))
                fut.exception()  # retrieved: a caller that gave up on it is not an error
        for suback in self._subacks.values():
            if not suback.done():
                suback.set_exception(MqttError(f"connection lost before SUBACK: {why}"))

"""MQTT 5 packets as bytes: the constants, reason codes, and the encoding and
decoding helpers (properties, variable byte integers, strings). Pure functions, no I/O."""

from __future__ import annotations

import struct
from typing import Any

from edge_agent.mqtt.messages import MqttError

__all__ = [
    "ACK4",
    "U16",
    "U32",
    "ProtocolError",
    "decode_varint",
    "encode_binary",
    "encode_packet",
    "encode_props",
    "encode_utf8",
    "encode_varint",
    "parse_props",
    "read_props",
    "read_remaining_length",
    "reason_name",
]

# Packet types (MQTT 5 2.1.2), as the first byte's high nibble.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = range(1, 8)
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = range(8, 15)

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
# PUBACK/PUBREC/PUBREL/PUBCOMP with Success and no properties (3.4.2.1)
ACK4 = struct.Struct(">BBH")

_REASONS = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x92: "packet identifier not found",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "qos not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA0: "maximum connect time",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}


def reason_name(code: int) -> str:
    """A reason code in words (MQTT 5 2.4)."""
    return _REASONS.get(code, f"reason code 0x{code:02x}")


class ProtocolError(Exception):
    """The peer sent something MQTT 5 does not allow; the connection is closed."""


# -- encoding ---------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise MqttError(f"string of {len(b)} bytes is longer than MQTT allows (65,535)")
    return U16.pack(len(b)) + b


def encode_binary(b: bytes) -> bytes:
    return U16.pack(len(b)) + b


def encode_packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def encode_props(
    content_type: str | None = None,
    user: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    extra: bytes = b"",
) -> bytes:
    body = extra
    if content_type:
        body += b"\x03" + encode_utf8(content_type)
    for k, v in user:
        body += b"\x26" + encode_utf8(k) + encode_utf8(v)
    return encode_varint(len(body)) + body


# -- decoding ---------------------------------------------------------------------------


def decode_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    for _ in range(4):
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7
    raise ProtocolError("malformed variable byte integer")


def read_remaining_length(buf: bytes, i: int) -> tuple[int, int]:
    """A fixed header's Remaining Length at buf[i] (2.1.4) and the index after it, or
    (-1, i) when buf ends inside it; more than four bytes is a ProtocolError."""
    n = len(buf)
    rl = shift = 0
    while True:
        if i >= n:
            return -1, i
        b = buf[i]
        i += 1
        rl |= (b & 0x7F) << shift
        if b < 0x80:
            return rl, i
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed remaining length")


_FIXED = {
    # property id -> byte width (0 = UTF-8 string, -1 = binary, -2 = string pair, -3 = varint)
    0x01: 1,
    0x02: 4,
    0x03: 0,
    0x08: 0,
    0x09: -1,
    0x0B: -3,
    0x11: 4,
    0x12: 0,
    0x13: 2,
    0x15: 0,
    0x16: -1,
    0x17: 1,
    0x18: 4,
    0x19: 1,
    0x1A: 0,
    0x1C: 0,
    0x1F: 0,
    0x21: 2,
    0x22: 2,
    0x23: 2,
    0x24: 1,
    0x25: 1,
    0x26: -2,
    0x27: 4,
    0x28: 1,
    0x29: 1,
    0x2A: 1,
}


def parse_props(buf: bytes, i: int, end: int) -> dict[int, Any]:
    """An MQTT 5 property block (2.2.2) as {id: value}; repeatable ones (user
    properties, subscription identifiers) as lists."""
    out: dict[int, Any] = {}
    while i < end:
        pid = buf[i]
        i += 1
        width = _FIXED.get(pid)
        if width is None:
            raise ProtocolError(f"unknown property 0x{pid:02x}")
        value: Any
        if width > 0:
            value = int.from_bytes(buf[i : i + width], "big")
            i += width
        elif width == -3:
            value, i = decode_varint(buf, i)
            out.setdefault(pid, []).append(value)
            continue
        else:
            n = U16.unpack_from(buf, i)[0]
            raw = buf[i + 2 : i + 2 + n]
            i += 2 + n
            if width == -2:
                m = U16.unpack_from(buf, i)[0]
                val2 = buf[i + 2 : i + 2 + m]
                i += 2 + m
                out.setdefault(pid, []).append(
                    (raw.decode("utf-8", "replace"), val2.decode("utf-8", "replace"))
                )
                continue
            value = bytes(raw) if width == -1 else raw.decode("utf-8", "replace")
        out[pid] = value
    if i != end:
        raise ProtocolError("property block overruns its length")
    return out


def read_props(buf: bytes, i: int) -> tuple[dict[int, Any], int]:
    n, j = decode_varint(buf, i)
    return (parse_props(buf, j, j + n) if n else {}), j + n

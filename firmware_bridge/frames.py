"""Frame splitting and decoding: JSON lines, key=value lines, COBS/CBOR/CRC-16.

Decoding returns the frame's object (a dict) or a drop reason (a str). Drops are data,
not exceptions: a noisy cable must never be able to stop the bridge.

Text frames may end in an NMEA-style `*HH` suffix: two hex digits, the XOR of every
byte before the `*` (the whole line, unlike NMEA's `$`...`*` span).

Binary frames (format "cobs_cbor"): CBOR map + CRC-16/CCITT-FALSE of the CBOR bytes,
appended big-endian (high byte first), the whole COBS-encoded and ended by one 0x00.
"""

from __future__ import annotations

from json import loads as json_loads
from typing import Any

import cbor2

from firmware_bridge.codec import cobs_decode, cobs_encode, crc16, xor8

__all__ = [
    "DROP_REASONS",
    "FrameDecoder",
    "Splitter",
    "encode_binary_frame",
    "encode_text_frame",
]

#: every reason a frame is dropped, as counted in the health figures
DROP_REASONS = (
    "checksum",  # text *HH mismatch (or missing with checksum = "required")
    "crc",  # binary frame: COBS torn or CRC-16 mismatch
    "too_long",  # line or binary frame longer than frames.max_line
    "noise",  # not UTF-8 text, control characters, neither JSON nor key=value
    "partial",  # the unparseable first line after (re)opening a device
    "malformed",  # looks like a frame but does not decode, or a bad id/seq/clock field
    "duplicate",  # same seq twice in a row
    "too_many_boards",  # more distinct ids than frames.max_boards
    "queue_full",  # the publish queue overflowed while the broker was away
    "refused",  # the broker refused the message (PUBACK >= 0x80), or it cannot be encoded
)

_BRACE = 0x7B  # '{'
_STAR = 0x2A  # '*'
_HEX = frozenset(b"0123456789abcdefABCDEF")


class Splitter:
    """Cuts a byte stream into delimited frames, bounding what it holds.

    Bytes of an over-long frame are discarded as they arrive (counted once when the
    frame is given up), so a stream without delimiters cannot grow memory.
    """

    __slots__ = ("_skipping", "_tail", "delimiter", "max_len", "too_long")

    def __init__(self, delimiter: bytes, max_len: int) -> None:
        self.delimiter = delimiter
        self.max_len = max_len
        self._tail = b""
        self._skipping = False
        self.too_long = 0  # frames given up while still arriving

    def reset(self) -> None:
        self._tail = b""
        self._skipping = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete frames in chunk (delimiters removed); frames over max_len are kept for the caller to count."""
        if self._tail:
            chunk = self._tail + chunk
        parts = chunk.split(self.delimiter)
        tail = parts.pop()
        if self._skipping:
            if not parts:
                return parts  # still inside the over-long frame
            del parts[0]  # its end
            self._skipping = False
        if len(tail) > self.max_len:
            self.too_long += 1
            self._skipping = True
            tail = b""
        self._tail = tail
        return parts


def _kv_value(v: str) -> Any:
    # ASCII digits only: "²".isdigit() is true, and int("²") raises ValueError
    if v.isascii() and (v.isdigit() or (v[:1] == "-" and v[1:].isdigit())):
        if len(v) > 4000:  # int() refuses over 4300 digits (CVE-2020-10735 limit)
            return v
        return int(v)
    try:
        return float(v)
    except ValueError:
        return v


class FrameDecoder:
    """Decodes one frame to its object or a drop reason; keeps no per-frame state."""

    __slots__ = ("_json", "_kv", "_required", "max_len")

    def __init__(self, fmt: str = "auto", checksum: str = "optional", max_len: int = 1024) -> None:
        self._json = fmt in ("auto", "json")
        self._kv = fmt in ("auto", "kv")
        self._required = checksum == "required"
        self.max_len = max_len

    def text(self, line: bytes) -> dict[str, Any] | str | None:
        """One line without its '\\n'; None for a blank line (not a frame)."""
        n = len(line)
        if n and line[n - 1] == 0x0D:  # CRLF from Arduino's println
            n -= 1
            line = line[:n]
        if not n:
            return None
        if n > self.max_len:
            return "too_long"
        if n >= 3 and line[n - 3] == _STAR and line[n - 2] in _HEX and line[n - 1] in _HEX:
            if xor8(line[: n - 3]) != int(line[n - 2 :], 16):
                return "checksum"
            line = line[: n - 3]
        elif self._required:
            return "checksum"
        if line[0] == _BRACE:
            if not self._json:
                return "malformed"
            try:
                obj = json_loads(line)
            except UnicodeDecodeError:
                return "noise"
            except (ValueError, RecursionError):  # JSONDecodeError; an int over 4300 digits
                return "malformed"
            return obj if type(obj) is dict else "malformed"
        try:
            s = line.decode()
        except UnicodeDecodeError:
            return "noise"
        if not s.isprintable() or "=" not in s:
            return "noise"
        if not self._kv:
            return "malformed"
        obj = {}
        for token in s.split():
            k, eq, v = token.partition("=")
            if not eq or not k:
                return "malformed"
            obj[k] = _kv_value(v)
        return obj

    def binary(self, frame: bytes) -> dict[str, Any] | str | None:
        """One COBS frame without its 0x00; None for an empty one (back-to-back delimiters)."""
        if not frame:
            return None
        if len(frame) > self.max_len:
            return "too_long"
        raw = cobs_decode(frame)
        # a CRC over data followed by its own big-endian CRC is 0 (unreflected, xorout 0)
        if raw is None or len(raw) < 3 or crc16(raw) != 0:
            return "crc"
        try:
            obj = cbor2.loads(raw[:-2])
        except Exception:  # CBORDecodeError, and whatever a tag's decoder raises: a drop
            return "malformed"
        return obj if type(obj) is dict else "malformed"


def encode_text_frame(body: str, checksum: bool = True) -> bytes:
    """A text line as a board would send it: body, optional *HH, CRLF-free '\\n'."""
    raw = body.encode()
    if checksum:
        return b"%s*%02X\n" % (raw, xor8(raw))
    return raw + b"\n"


def encode_binary_frame(obj: dict[str, Any]) -> bytes:
    """CBOR + CRC-16/CCITT-FALSE (big-endian) -> COBS -> 0x00, as a board would send it."""
    raw = cbor2.dumps(obj)
    return cobs_encode(raw + crc16(raw).to_bytes(2, "big")) + b"\x00"

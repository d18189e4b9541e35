"""HTTP/1.1 on the wire for the health endpoint: the request head checked and parsed
(strictly: RFC 9112's grammar, bounded header count, one Authorization at most) and
responses built (`Connection: close`, `Cache-Control: no-store`, JSON bodies without
NaN). No I/O here: `server.py` reads and writes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = [
    "JSON",
    "REASONS",
    "Reject",
    "Request",
    "check_request_line",
    "end_of_head",
    "error_response",
    "http_response",
    "json_body",
    "parse_head",
]

JSON = "application/json"
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
# RFC 9112 3: request-line = method SP request-target SP HTTP-version. The method is
# an RFC 9110 token; the target is visible ASCII (no spaces, no controls).
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
# What an unfinished request line may hold: a TLS hello or binary junk is refused at
# its first byte instead of waiting for a line end that may never come.
_PARTIAL_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?: [\x20-\x7e]*)?\r?")
_MAX_HEADERS = 100


class Reject(Exception):
    """The request cannot be served; carries the status to answer with."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Request:
    __slots__ = ("authorization", "method", "path")

    def __init__(self, method: str, path: str, authorization: str | None) -> None:
        self.method = method
        self.path = path
        self.authorization = authorization


def end_of_head(buf: bytearray, start: int) -> int:
    """Index just past the blank line ending the head, or -1; bare LF lines are accepted.

    Only bytes from `start` on are searched, so a byte-at-a-time client costs linear time.
    """
    i = buf.find(b"\r\n\r\n", start)
    j = buf.find(b"\n\n", start)
    if i < 0 and j < 0:
        return -1
    if j < 0 or (0 <= i < j):
        return i + 4
    return j + 2


def check_request_line(buf: bytearray) -> bool:
    """Fail fast on bytes that cannot form an HTTP request line; True once it is complete."""
    nl = buf.find(b"\n")
    if nl < 0:
        # Only part of the line so far: visible ASCII and spaces, starting with a token byte.
        if _PARTIAL_LINE.fullmatch(buf) is None:
            raise Reject(400)
        return False
    if _REQUEST_LINE.fullmatch(bytes(buf[:nl]).rstrip(b"\r")) is None:
        raise Reject(400)
    return True


def parse_head(head: bytes) -> Request:
    lines = head.split(b"\n")
    request_line = lines[0].rstrip(b"\r")
    m = _REQUEST_LINE.fullmatch(request_line)
    if m is None:
        raise Reject(400)
    method = m.group(1).decode("ascii")
    target = m.group(2).decode("ascii")
    if m.group(3) != b"1":
        raise Reject(505)
    authorization: str | None = None
    for count, raw in enumerate(lines[1:], 1):
        line = raw.rstrip(b"\r")
        if not line:
            break
        if count > _MAX_HEADERS:
            raise Reject(431)
        hm = _HEADER_LINE.fullmatch(line)
        if hm is None:  # includes obsolete line folding and "Name : value" (RFC 9112 5.1)
            raise Reject(400)
        if hm.group(1).lower() == b"authorization":
            if authorization is not None:
                raise Reject(400)  # two credentials: refuse rather than pick one
            authorization = hm.group(2).decode("latin-1")
    return Request(method, _path_of(target), authorization)


def _path_of(target: str) -> str:
    """The path of an origin-form or absolute-form target; query and fragment ignored."""
    if not target.startswith("/"):
        scheme, sep, rest = target.partition("://")
        if sep and scheme.lower() in ("http", "https"):
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
        else:
            return target  # "*" or garbage: no route will match
    for stop in ("?", "#"):
        target = target.partition(stop)[0]
    return target


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats with None: JSON has no NaN or Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def json_body(obj: Any) -> bytes:
    try:
        text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_json_safe(obj), allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def http_response(
    status: int,
    body: bytes = b"",
    content_type: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
    head_only: bool = False,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Cache-Control: no-store")
    lines.extend(f"{k}: {v}" for k, v in extra)
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def error_response(
    status: int, extra: tuple[tuple[str, str], ...] = (), head_only: bool = False
) -> bytes:
    body = json_body({"error": REASONS.get(status, "Error")})
    return http_response(status, body, JSON, extra, head_only)

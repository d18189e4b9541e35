"""The bridge's small health endpoint: GET / or /healthz -> its figures as JSON.

Deliberately tiny: one request per connection, a bounded read with a timeout, no
keep-alive. Any other path is 404, any other method 405.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

__all__ = ["serve_health"]

_MAX_HEAD = 8192
_TIMEOUT = 2.0


def _response(status: str, body: bytes, ctype: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def serve_health(
    health: Callable[[], dict[str, Any]], host: str, port: int
) -> asyncio.Server:
    """Serve `health()` as JSON on GET / and /healthz."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path, *_ = [*head.split(b"\r\n", 1)[0].decode("latin-1").split(" "), "", ""]
            if method != "GET":
                out = _response("405 Method Not Allowed", b"", "text/plain")
            elif path.split("?", 1)[0] not in ("/", "/healthz"):
                out = _response("404 Not Found", b"", "text/plain")
            else:
                out = _response("200 OK", json.dumps(health()).encode())
            writer.write(out)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=_MAX_HEAD)

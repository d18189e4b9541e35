"""A cancelled connect is cancelled, even when its attempt fails in the same loop turn.

On Python 3.11, `asyncio.wait_for` returns (or raises) the inner result when the inner
future finished just as the caller was cancelled: the CancelledError is swallowed. The
bridge's Publisher then caught the connect's MqttError, slept its backoff and never
stopped (the bridge's idle-flood test hung once in ~15 runs under load). Cancelling
after 0, 1, 2, ... loop turns lands on that turn for sure."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from edge_agent.mqtt import MqttClient, MqttError


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()  # nobody listens: a connect is refused at once
    return port


async def _connect_then_retry(client: MqttClient) -> None:
    """The Publisher's shape: a failed connect is an MqttError, then a retry later."""
    while True:
        with contextlib.suppress(MqttError):
            await client.connect(timeout=5.0)
        await asyncio.sleep(3600)


async def test_cancel_during_a_refused_connect_always_cancels() -> None:
    port = _closed_port()
    for turns in range(40):
        client = MqttClient(host="127.0.0.1", port=port)
        task = asyncio.create_task(_connect_then_retry(client))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
        assert task in done, f"cancel after {turns} loop turns was swallowed"
        assert task.cancelled()
        client.close()

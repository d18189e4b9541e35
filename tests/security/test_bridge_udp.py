"""Issue 13, item 5: the firmware bridge: UDP on loopback unless told, broker login."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from firmware_bridge.config import parse_config
from firmware_bridge.transports import UdpSource


def _udp_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_default_udp_listen_is_loopback() -> None:
    assert parse_config('[source]\nkind = "udp"\n').source.listen == "127.0.0.1:5005"


async def test_an_empty_host_binds_loopback_not_every_interface() -> None:
    port = _udp_free_port()
    cfg = replace(parse_config('[source]\nkind = "udp"\n').source, listen=f":{port}")
    src = UdpSource(cfg, lambda data, sender: None, lambda: None)
    task = asyncio.create_task(src.run())
    try:
        async with asyncio.timeout(5):
            while src.address is None:
                await asyncio.sleep(0.01)
        assert src.address[0] == "127.0.0.1"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def test_bridge_password_file_value_is_never_quoted(tmp_path: Path) -> None:
    from edge_agent.errors import ConfigError

    for value in ('"hunter2-Xq9"', "271828182"):
        with pytest.raises(ConfigError) as e:
            parse_config(f'[publish]\nusername = "bridge"\npassword_file = {value}\n', "b.toml")
        assert "publish.password_file" in str(e.value)
        assert "hunter2" not in str(e.value) and "271828182" not in str(e.value)
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = parse_config(f'[publish]\nusername = "bridge"\npassword_file = "{pw}"\n')
    assert (cfg.publish.username, cfg.publish.password_file) == ("bridge", str(pw))


async def test_bridge_health_endpoint_survives_an_idle_flood() -> None:
    """Item 5: the bridge's endpoint had no connection cap (EMFILE under a flood); it is
    the agent's HealthServer now, caps included."""
    from firmware_bridge.bridge import Bridge
    from tests.helpers.brokers import free_port

    health_port = free_port()
    cfg = parse_config(
        f'[source]\nkind = "udp"\nlisten = "127.0.0.1:{_udp_free_port()}"\n'
        f'[health]\nlisten = "127.0.0.1:{health_port}"\n[publish]\nport = {free_port()}\n'
    )
    async with Bridge(cfg):
        flood = []
        for _ in range(200):
            try:
                _, w = await asyncio.open_connection(
                    "127.0.0.1", health_port, local_addr=("127.0.0.2", 0)
                )
            except OSError:
                continue
            flood.append(w)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", health_port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: pi\r\n\r\n")
            async with asyncio.timeout(3):
                data = await r.read()
            w.close()
            head, _, body = data.partition(b"\r\n\r\n")
            assert b"retry-after" not in head.lower(), head  # not the over-the-cap refusal
            assert b'"source"' in body, data[:300]  # the bridge's own figures
        finally:
            for fw in flood:
                fw.close()

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

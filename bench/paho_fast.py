"""Bench-only experiment (not used by the agent): cheaper paho MQTT 5 PUBLISH decoding.

`install()` swaps paho's per-message `Properties` for one that shares its lookup
tables (paho rebuilds ~30-entry dicts with ~80 `str.replace` calls per PUBLISH) and
unpacks with precomputed tables, and makes `_handle_on_message` skip the topic
matcher when no filtered callback is registered. bench_agent.py --fast-paho runs the
agent with it, to measure what such a change would buy before anyone makes it.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt._packet as _packet
import paho.mqtt.client as _client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

_PROTO = Properties(PacketTypes.PUBLISH)
# identifier -> (type index, attribute name, may repeat)
_BY_ID = {
    ident: (_PROTO.properties[ident][0], name.replace(" ", ""), ident in (11, 38))
    for name, ident in _PROTO.names.items()
}
_set = object.__setattr__


class FastProperties(Properties):
    def __init__(self, packetType: int) -> None:
        _set(self, "packetType", packetType)
        _set(self, "types", _PROTO.types)
        _set(self, "names", _PROTO.names)
        _set(self, "properties", _PROTO.properties)

    def unpack(self, buffer: Any) -> tuple[Properties, int]:
        if buffer[:1] == b"\x00":
            return self, 1
        propslen, vbilen = VariableByteIntegers.decode(buffer)
        buffer = buffer[vbilen:]
        left = propslen
        d = self.__dict__
        while left > 0:
            ident, n = VariableByteIntegers.decode(buffer)
            buffer = buffer[n:]
            left -= n
            kind, name, multiple = _BY_ID[ident]
            value, n = self.readProperty(buffer, kind, left)
            buffer = buffer[n:]
            left -= n
            if multiple:
                d[name] = [*d.get(name, []), value]
            else:
                d[name] = value
        return self, propslen + vbilen


_orig_handle = _client.Client._handle_on_message


def _handle_on_message(self: Any, message: Any) -> None:
    if self._on_message_filtered._root._children:  # filtered callbacks exist: paho's way
        return _orig_handle(self, message)
    on_message = self.on_message
    if on_message:
        with self._in_callback_mutex:
            on_message(self, self._userdata, message)
    return None


def install() -> None:
    _packet.Properties = FastProperties  # type: ignore[misc]
    _client.Client._handle_on_message = _handle_on_message  # type: ignore[method-assign]

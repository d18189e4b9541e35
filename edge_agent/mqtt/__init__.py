"""Our MQTT 5 client: an asyncio `Protocol` that parses the byte stream itself.

The one module that speaks MQTT for the agent (the local subscription and the
upstream batches). It replaces a paho-mqtt adapter that had to reach into paho's
private attributes to be fast enough (bench/README.md, "MQTT layer", has the
figures): paho's read loop costs ~45 us per message at QoS 0 (three recv() and a
select() per packet), a Protocol fed by the event loop's own reads costs a few
microseconds, whatever the codec. Only public asyncio and ssl APIs are used.

The parts, each importable on its own: `client.py` (MqttClient: connect, subscribe,
publish, will, TLS; what it does and does not do is in its doc), `connection.py`
(the Protocol: stream parsing, batched writes, in-flight limit, pause/resume),
`codec.py` (packet bytes: pure functions, no I/O), `messages.py` (Message, Will,
PublishGroup, MqttError) and `tls.py` (TlsSettings, connect failures in words).
Callers import from `edge_agent.mqtt`.
"""

from edge_agent.mqtt.client import MAX_PACKET, MqttClient
from edge_agent.mqtt.codec import reason_name
from edge_agent.mqtt.messages import Message, MqttError, PublishGroup, Will
from edge_agent.mqtt.tls import TlsSettings

__all__ = [
    "MAX_PACKET",
    "Message",
    "MqttClient",
    "MqttError",
    "PublishGroup",
    "TlsSettings",
    "Will",
    "reason_name",
]

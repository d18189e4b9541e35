"""Our MQTT 5 client: an asyncio `Protocol` that parses the byte stream itself.

The one module that speaks MQTT for the agent (the local subscription and the
upstream batches). It replaces a paho-mqtt adapter that had to reach into paho's
private attributes to be fast enough (bench/README.md, "MQTT layer", has the
figures): paho's read loop costs ~45 us per message at QoS 0 (three recv() and a
select() per packet), a Protocol fed by the event loop's own reads costs a few
microseconds, whatever the codec. Only public asyncio and ssl APIs are used.

What the client does, and no more: MQTT 5 CONNECT (clean start, session expiry,
Receive Maximum, username/password, will with retain, content type and user
properties), TLS through an `ssl.SSLContext`, SUBSCRIBE with Subscription
Identifiers, UNSUBSCRIBE, PUBLISH QoS 0/1/2 both ways (content type, retain, user
properties), acknowledgements in batches (`manual_ack`), keep-alive, and read
backpressure. `connect()` may be called again after the connection is lost (the
bridge does); nothing queued survives a disconnect: what is resent after an outage
is decided by the caller (the outbox).
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

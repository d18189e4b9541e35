"""What callers of the MQTT client hand in and get back: errors, the will, a received message."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.errors import EdgeAgentError


class MqttError(EdgeAgentError):
    """A connection, subscription or publish failed; the message says why."""


@dataclass(frozen=True, slots=True)
class Will:
    """The MQTT 5 will message the broker publishes if the connection dies (3.1.3.2)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    content_type: str | None = None  # None or "" = none
    user_properties: tuple[tuple[str, str], ...] = ()


class Message:
    """One received PUBLISH."""

    __slots__ = (
        "content_type",
        "dup",
        "mid",
        "payload",
        "qos",
        "retain",
        "subscription_ids",
        "too_large",
        "topic_bytes",
        "user_properties",
    )

    def __init__(
        self, topic_bytes: bytes, payload: bytes, qos: int, mid: int, dup: bool, retain: bool
    ) -> None:
        self.topic_bytes = topic_bytes
        self.payload = payload
        self.qos = qos
        self.mid = mid
        self.dup = dup
        self.retain = retain
        self.content_type: str | None = None
        self.subscription_ids: tuple[int, ...] = ()
        self.user_properties: tuple[tuple[str, str], ...] = ()
        self.too_large = False  # payload over MAX_PACKET: skipped, `payload` is empty

    @property
    def topic(self) -> str:
        """The topic name; invalid UTF-8 (which brokers refuse, MQTT 5 1.5.4) replaced."""
        return self.topic_bytes.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, {len(self.payload)} bytes, qos={self.qos}, mid={self.mid})"

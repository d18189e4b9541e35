"""What callers of the MQTT client hand in and get back: errors, the will, a received message."""

from __future__ import annotations

import asyncio
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


class PublishGroup:
    """One completion for the PUBLISHes of one `MqttClient.publish_many` call.

    `future` completes (result None) once every QoS 1/2 message of the group was
    answered by the broker (PUBACK, or PUBCOMP for QoS 2), at once for QoS 0; it
    fails with MqttError if the connection is lost first. Either way,
    `undelivered()` says which messages (indices into the call's messages) the
    broker did not take: refused, or never acknowledged. Without a future per
    message the bridge's publish path costs 0.77x (bench/README.md, bench_bridge.py).
    """

    __slots__ = ("_refused", "_unacked", "future")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self._unacked: dict[int, int] = {}  # packet id -> index in the group
        self._refused: list[int] = []  # indices, in the order the refusals came

    # Called by the connection, as the group's messages go and their answers come.

    def track(self, mid: int, index: int) -> None:
        self._unacked[mid] = index

    def refuse(self, index: int) -> None:
        self._refused.append(index)

    def sent_all(self) -> None:
        if not self._unacked and not self.future.done():
            self.future.set_result(None)  # QoS 0, or nothing to wait for

    def answer(self, mid: int, code: int) -> None:
        index = self._unacked.pop(mid)
        if code >= 0x80:
            self._refused.append(index)
        if not self._unacked and not self.future.done():
            self.future.set_result(None)

    def fail(self, why: str) -> None:
        if not self.future.done():
            self.future.set_exception(MqttError(f"connection lost before PUBACK: {why}"))
            self.future.exception()  # retrieved: a caller that gave up on it is not an error

    def undelivered(self) -> list[int]:
        """Indices of the messages the broker refused or had not acknowledged, in order."""
        return sorted([*self._refused, *self._unacked.values()])

    def refused(self) -> list[int]:
        """Indices of the messages refused for good, in order: by the broker (a reason
        code >= 0x80 ends the exchange, MQTT 5 4.3.2), or here, unencodable (a topic
        over 65,535 bytes). Sending them again would be refused again."""
        return sorted(self._refused)

    def unacknowledged(self) -> list[int]:
        """Indices of the messages sent but never answered (the connection went first)."""
        return sorted(self._unacked.values())

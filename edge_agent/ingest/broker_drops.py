"""Loss nobody sees: messages the local broker dropped before they reached us.

mosquitto drops QoS 0 and QoS 1 messages for a subscriber more than
`max_queued_messages` behind (1,000 by default), even while it is connected, and
says so only in `$SYS/broker/publish/messages/dropped` (a broker-wide total since
it started, published every `sys_interval`, 10 s by default). The agent
subscribes to it where the broker offers it and reports what it grew by since the
agent connected: /healthz turns degraded for a minute after it grows, naming the
setting to raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["SYS_DROPPED", "BrokerDrops"]

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"
_SYS_DROPPED_B = SYS_DROPPED.encode()
DEGRADED_FOR = 60.0  # seconds after the count last grew


class BrokerDrops:
    """The broker's drop counter, as increases since we first saw it."""

    topic = SYS_DROPPED
    topic_bytes = _SYS_DROPPED_B

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: int | None = None
        self.dropped = 0  # messages the broker dropped since the agent first heard the counter
        self.grew_at: float | None = None
        self.available = False  # whether the broker publishes the counter at all

    def observe(self, payload: bytes) -> None:
        try:
            value = int(payload.strip())
        except ValueError:
            return
        self.available = True
        last, self._last = self._last, value
        if last is None:
            return  # the baseline: drops before the agent was there are not ours to report
        grew = value - last if value >= last else value  # a restarted broker counts from 0
        if grew > 0:
            self.dropped += grew
            self.grew_at = self._clock()

    def reason(self) -> str | None:
        """The /healthz reason while the count grew within the last minute, else None."""
        at = self.grew_at
        if at is None or self._clock() - at >= DEGRADED_FOR:
            return None
        return (
            f"local broker dropped {self.dropped} message(s) before they reached the agent "
            "(its queue limit: raise max_queued_messages in mosquitto.conf)"
        )

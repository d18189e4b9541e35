"""Load shedding: which QoS 0 messages to drop on arrival, before they are decoded.

The agent reads its local socket as fast as the broker sends and processes the
inbox in time slices (`SLICE_S`). When more arrives than it can process, the inbox
grows; once it holds `MAX_LIMIT` (16,384) messages, or `backlog_s` seconds of work
if that is fewer (at the measured CPU cost per message, at least `MIN_LIMIT`, 8,192
messages: more than one 256 KiB socket read of small readings, so a burst after the
process was descheduled is not mistaken for overload), or `max_bytes` of payload,
further QoS 0 messages are dropped as they arrive and counted as `readings_shed`
per pipeline. Everything already queued is processed, so the agent keeps working at
its full rate on the readings it keeps: what is shed is the excess, never the stream.

The cap is memory: a queued reading costs ~210 bytes, so 16,384 of them ~3.4 MiB.
At 2-5 us of CPU per message on a PC-class core, 1 s of work would be 200,000+
messages; measured with 1,000 keys (bench/README.md, "Inbox bound"), the former
cap of 100,000 let the agent's peak RSS reach 38-54 MiB at twice its sustained
rate (inboxes of up to 81,000 messages), 16,384 kept it at 37.5-38.6 MiB with
goodput there still >= 90 % of the sustained rate (a cap of 8,192 shed already at
20,000 readings/s at load 10). What goodput needs is an inbox that does not run dry between socket reads:
one 256 KiB read brings at most ~4,000 small messages, so 16,384 is four reads ahead.

- QoS 1 messages are never shed: the broker holds them back once our Receive
  Maximum is reached, and acknowledgements wait for the checkpoint.
- Priorities: a message that a `priority = "high"` pipeline takes is kept until
  the inbox holds twice the limit; normal ones are shed first.
- A shed message is not decoded, so the number of readings it held is unknown:
  it counts once for each pipeline whose filters match its topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["BACKLOG_S", "MAX_BYTES", "MAX_LIMIT", "MIN_LIMIT", "MIN_SAMPLE", "SLICE_S", "Shedder"]

SLICE_S = 0.05  # processing per event-loop turn before reading the socket again
BACKLOG_S = 1.0  # seconds of work (CPU time) the inbox holds before QoS 0 is shed
MIN_LIMIT = 8192  # messages the inbox may always hold
MAX_LIMIT = 16_384  # messages the inbox holds at most before QoS 0 is shed (memory)
MAX_BYTES = 16 * 1024 * 1024  # payload and topic bytes likewise
MIN_SAMPLE = 64  # the fewest messages a slice needs to update the cost per message
# 50 ms of processing per turn against at most one 256 KiB socket read (~5 ms of
# parsing and shedding on this machine): >= 90 % of the time goes to readings kept.


class Sheddable(Protocol):
    """A pipeline as the shedder sees it: its priority and its shed counter."""

    readings_shed: int

    @property
    def high_priority(self) -> bool: ...


class Shedder:
    """Counts and decides; `keep()` is called only once the inbox is over its soft limit."""

    def __init__(
        self,
        route: Callable[[str], tuple[int, ...]],
        pipelines: Sequence[Sheddable],
        *,
        backlog_s: float = BACKLOG_S,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._route = route
        self._pipelines = pipelines
        self._high = [p.high_priority for p in pipelines]
        self.backlog_s = backlog_s
        self.max_bytes = max_bytes
        self._clock = clock
        self.per_message = 50e-6  # seconds of processing per message (moving average)
        self.limit = self._limit()
        self.messages_shed = 0
        self.last_shed_at: float | None = None

    def _limit(self) -> int:
        return int(min(MAX_LIMIT, max(MIN_LIMIT, self.backlog_s / self.per_message)))

    def note_processed(self, messages: int, seconds: float) -> None:
        """The cost of a processing slice: keeps `limit` at `backlog_s` of work."""
        if messages >= MIN_SAMPLE:
            self.per_message += 0.2 * (seconds / messages - self.per_message)
            self.limit = self._limit()

    def over(self, queued: int, queued_bytes: int) -> bool:
        return queued >= self.limit or queued_bytes >= self.max_bytes

    def keep(self, topic_bytes: bytes, queued: int, queued_bytes: int) -> bool:
        """Over the limit: whether this QoS 0 message is still queued (else it is counted as shed)."""
        try:
            topic = topic_bytes.decode("utf-8")
        except UnicodeDecodeError:
            topic = ""
        idx = self._route(topic)
        high = self._high
        if (
            idx
            and queued < 2 * self.limit
            and queued_bytes < 2 * self.max_bytes
            and any(high[i] for i in idx)
        ):
            return True
        pipelines = self._pipelines
        for i in idx:
            pipelines[i].readings_shed += 1
        self.messages_shed += 1
        self.last_shed_at = self._clock()
        return False

    def shedding(self, within: float = 10.0) -> bool:
        """Whether a message was shed in the last `within` seconds."""
        at = self.last_shed_at
        return at is not None and self._clock() - at < within

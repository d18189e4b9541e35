"""How fast batches may leave: a token-bucket rate limit and an adaptive window.

Both are pure logic with an injected clock; the sender asks them before each
publish and tells them about each PUBACK.

Rate limit (`upstream.rate_limit`, SPEC 1): one bucket for batches/s and one for
bytes/s (`RateLimiter`). Each holds exactly one second's worth (at least one
batch), so over any interval of T seconds the broker sees at most rate x (T + 1).
A batch larger than one second's worth waits for a full bucket and then drives
it negative, so it goes alone, is paid for, and is never stuck: over an interval
holding it, the bound grows by its excess over one second's worth only.

Adaptive window (congestion control on PUBACK latency, AIMD as in TCP): the
number of unacknowledged batches allowed in flight starts at `max_inflight`.
Each PUBACK's latency is compared with the best latency seen recently (the
link's floor): when it exceeds `floor x 4 + 250 ms` the link is queueing, and the
window halves (at most once per round trip); otherwise it grows by one per
window's worth of PUBACKs, back up to `max_inflight`. A window of 1 with a slow
link sends one batch per round trip: the sender slows down instead of piling
publishes into a congested socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.units import RateLimit

__all__ = ["AdaptiveWindow", "RateLimiter", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # bucket size
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(default=-1.0)
    _at: float = field(default=-1.0)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self._at = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def wait_time(self, cost: float) -> float:
        """Seconds until `cost` tokens may be taken (0 = now)."""
        self._refill()
        need = min(cost, self.burst)  # an oversized cost waits for a full bucket only
        if self.tokens >= need:
            return 0.0
        return (need - self.tokens) / self.rate

    def take(self, cost: float) -> None:
        self._refill()
        self.tokens -= cost


class RateLimiter:
    """`upstream.rate_limit` as two token buckets, each one second's worth (SPEC 1)."""

    __slots__ = ("_batches", "_bytes")

    def __init__(
        self, limit: RateLimit | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._batches: TokenBucket | None = None
        self._bytes: TokenBucket | None = None
        if limit is not None and limit.batches_per_s:
            self._batches = TokenBucket(limit.batches_per_s, limit.burst_batches or 1.0, clock)
        if limit is not None and limit.bytes_per_s:
            # Not max_batch_bytes: a bigger bucket would let that much go at once.
            self._bytes = TokenBucket(limit.bytes_per_s, limit.bytes_per_s, clock)

    @property
    def active(self) -> bool:
        return self._batches is not None or self._bytes is not None

    def wait_time(self, size: int) -> float:
        """Seconds until a batch of `size` payload bytes may go (0 = now)."""
        wait = 0.0
        if self._batches is not None:
            wait = self._batches.wait_time(1)
        if self._bytes is not None:
            wait = max(wait, self._bytes.wait_time(size))
        return wait

    def take(self, size: int) -> None:
        if self._batches is not None:
            self._batches.take(1)
        if self._bytes is not None:
            self._bytes.take(size)


@dataclass(slots=True)
class AdaptiveWindow:
    max_inflight: int
    clock: Callable[[], float] = time.monotonic
    window: float = 0.0
    floor: float | None = None  # best recent PUBACK latency
    _floor_at: float = 0.0
    _last_cut: float = -1e9
    cuts: int = 0

    FLOOR_MEMORY = 30.0  # seconds a best latency is trusted before it is re-learnt

    ceiling: int = 0  # max_inflight, lowered to the broker's Receive Maximum when smaller

    def __post_init__(self) -> None:
        self.window = float(self.max_inflight)
        self.ceiling = self.max_inflight

    def cap(self, receive_maximum: int) -> None:
        """The broker's Receive Maximum bounds the window (MQTT 5 3.2.2.3.3)."""
        self.ceiling = max(1, min(self.max_inflight, receive_maximum))
        self.window = min(self.window, float(self.ceiling))

    @property
    def limit(self) -> int:
        return max(1, int(self.window))

    def on_ack(self, latency: float) -> None:
        now = self.clock()
        if self.floor is None or latency < self.floor or now - self._floor_at > self.FLOOR_MEMORY:
            self.floor, self._floor_at = latency, now
        threshold = self.floor * 4 + 0.25
        if latency > threshold:
            # At most one cut per round trip: the acks of one congested flight
            # should not halve the window once each.
            if now - self._last_cut > max(latency, 0.05):
                self.window = max(1.0, self.window / 2)
                self._last_cut = now
                self.cuts += 1
        else:
            self.window = min(float(self.ceiling), self.window + 1.0 / max(self.window, 1.0))

    def on_timeout(self) -> None:
        self.window = 1.0
        self._last_cut = self.clock()

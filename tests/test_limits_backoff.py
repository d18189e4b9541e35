"""ingest/limits.py (key cap, per-key token bucket) and uplink/backoff.py, directly,
with the clock and the random source injected; expected values from plain models."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ingest.limits import KeyLimits
from edge_agent.uplink.backoff import Backoff

# -- key cap ------------------------------------------------------------------------------


@given(st.lists(st.lists(st.sampled_from("abcdefgh"), max_size=12), max_size=12), st.integers(1, 6))
def test_key_cap_admits_exactly_what_a_set_model_admits(batches: list[list[str]], cap: int) -> None:
    lim = KeyLimits(cap, None)
    held: set[str] = set()  # the keys the window engine holds (none ever go idle here)
    refused = 0
    for keys in batches:
        readings = [(k, float(i), 1.0) for i, k in enumerate(keys)]
        before = frozenset(held)
        want = []
        for r in readings:  # first come, first held, up to the cap
            if r[0] in held or len(held) < cap:
                held.add(r[0])
                want.append(r)
            else:
                refused += 1
        assert lim.admit(readings, 0.0, len(before), before.__contains__) == want
    assert lim.over_key_cap == refused and lim.over_key_rate == 0


def test_below_the_cap_the_batch_passes_as_it_is() -> None:
    lim = KeyLimits(100, None)
    batch = [("a", 1.0, 1.0), ("b", 2.0, 2.0)]
    assert lim.admit(batch, 0.0, 3, lambda _k: False) == batch


# -- per-key rate -------------------------------------------------------------------------


@given(
    st.lists(st.tuples(st.sampled_from("xyz"), st.floats(0, 2.0)), max_size=80),
    st.sampled_from([0.5, 1.0, 3.0, 10.0, 100.0]),
)
def test_rate_limit_is_a_token_bucket_per_key(steps: list[tuple[str, float]], rate: float) -> None:
    # The model: each key starts full with max(1, rate) tokens, refills at `rate` per second
    # of wall time up to that, and a reading takes one whole token or is refused.
    lim = KeyLimits(1000, rate)
    burst = max(1.0, rate)
    tokens: dict[str, float] = {}
    last: dict[str, float] = {}
    wall, refused = 1000.0, 0
    for key, dt in steps:
        wall += dt
        t = tokens.get(key, burst)
        if key in last:
            t = min(burst, t + (wall - last[key]) * rate)
        last[key] = wall
        admitted = t >= 1.0
        tokens[key] = t - 1.0 if admitted else t
        refused += not admitted
        got = lim.admit([(key, wall, 0.0)], wall, 0, lambda _k: True)
        assert got == ([(key, wall, 0.0)] if admitted else []), (key, wall, t)
    assert lim.over_key_rate == refused


def test_rate_limit_over_a_second_of_wall_time() -> None:
    lim = KeyLimits(10, 10.0)
    burst = [("hot", float(i), 0.0) for i in range(25)]
    assert len(lim.admit(burst, 0.0, 0, lambda _k: True)) == 10  # the burst: one second's worth
    assert lim.admit([("hot", 0.0, 0.0)], 0.05, 0, lambda _k: True) == []  # half a token
    assert len(lim.admit([("hot", 0.0, 0.0)], 0.1, 0, lambda _k: True)) == 1
    assert len(lim.admit([("cold", 0.0, 0.0)] * 3, 0.1, 0, lambda _k: True)) == 3  # its own bucket
    assert lim.over_key_rate == 16


def test_rate_buckets_stay_bounded_and_forgetting_only_refills() -> None:
    lim = KeyLimits(2, 1.0)  # at most 4 * max_keys buckets
    for i in range(50):
        assert len(lim.admit([(f"k{i}", 0.0, 0.0)], 0.0, 0, lambda _k: True)) == 1
        assert len(lim._buckets) <= 8
    assert lim.over_key_rate == 0


# -- backoff ------------------------------------------------------------------------------


class Extremes(random.Random):
    """uniform(a, b) -> b on odd calls, a on even ones: the two ends of full jitter."""

    def __init__(self) -> None:
        super().__init__(0)
        self.calls = 0

    def uniform(self, a: float, b: float) -> float:
        self.calls += 1
        return b if self.calls % 2 else a


def test_backoff_doubles_to_the_cap_with_jitter_down_to_half() -> None:
    b = Backoff(initial=0.2, cap=3.0, rng=Extremes())
    got = [b.next() for _ in range(8)]
    ceil = [0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0, 3.0]  # 0.2 * 2^n, capped
    assert got == pytest.approx([d if i % 2 == 0 else d / 2 for i, d in enumerate(ceil)])
    b.reset()
    assert b.next() == pytest.approx(0.2)


@given(st.floats(0.01, 5), st.floats(0.01, 120), st.floats(1.1, 4), st.integers(0, 2**32), st.integers(1, 60))
def test_backoff_delays_stay_within_half_and_whole_of_the_capped_ceiling(
    initial: float, cap: float, factor: float, seed: int, n: int
) -> None:
    b = Backoff(initial=initial, cap=cap, factor=factor, rng=random.Random(seed))
    for attempt in range(n):
        d = min(cap, initial * factor**attempt)
        assert d / 2 <= b.next() <= d

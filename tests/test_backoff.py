"""edge_agent/backoff.py directly: capped exponential backoff with full jitter, the random
source injected."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.backoff import Backoff

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


@given(
    st.floats(0.01, 5),
    st.floats(0.01, 120),
    st.floats(1.1, 4),
    st.integers(0, 2**32),
    st.integers(1, 60),
)
def test_backoff_delays_stay_within_half_and_whole_of_the_capped_ceiling(
    initial: float, cap: float, factor: float, seed: int, n: int
) -> None:
    b = Backoff(initial=initial, cap=cap, factor=factor, rng=random.Random(seed))
    for attempt in range(n):
        d = min(cap, initial * factor**attempt)
        assert d / 2 <= b.next() <= d

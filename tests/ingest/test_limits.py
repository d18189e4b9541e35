"""ingest/limits.py directly: the key cap and the per-key token bucket, with the wall
clock injected; expected values from plain models (a set, a token bucket)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ingest.limits import KeyLimits

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

"""Topic routing: MQTT filter matching, covering, and one count per message under overlap."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ingest.router import TopicRouter, filter_covers, filter_matches
from tests.helpers.agent_harness import AgentProcess, Consumer, Publisher, pipeline, write_config
from tests.helpers.brokers import Broker

LEVELS = st.sampled_from(["a", "b", "c", "$x"])


@st.composite
def topics(draw: st.DrawFn) -> str:
    return "/".join(draw(st.lists(LEVELS, min_size=1, max_size=4)))


@st.composite
def filters(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(["a", "b", "c", "+"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


def test_filter_matches_rules() -> None:
    assert filter_matches("s/#", "s")  # '#' also matches the parent level
    assert filter_matches("s/+/t", "s/x/t")
    assert not filter_matches("s/+/t", "s/x/y/t")
    assert not filter_matches("#", "$SYS/load")  # MQTT 4.7.2
    assert filter_matches("$SYS/#", "$SYS/load")


def level_match(f: list[str], t: list[str]) -> bool:
    """MQTT 4.7 matching written out level by level (no '$' topics here)."""
    if not f:
        return not t
    if f[0] == "#":
        return True
    if not t:
        return f == ["#"]
    return f[0] in ("+", t[0]) and level_match(f[1:], t[1:])


@st.composite
def narrower(draw: st.DrawFn, f: str) -> str:
    """A filter every topic of which `f` matches: each '+' kept or made one level,
    a trailing '#' kept, cut off (its parent level) or replaced by more levels."""
    out: list[str] = []
    for part in f.split("/"):
        if part == "+":
            out.append(draw(st.sampled_from(["+", "a", "b", "c"])))
        elif part == "#":
            tail = draw(st.lists(st.sampled_from(["a", "b", "c", "+"]), max_size=3))
            out += tail + (["#"] if draw(st.booleans()) else [])
        else:
            out.append(part)
    return "/".join(out) if out else f


@st.composite
def instance(draw: st.DrawFn, f: str) -> str:
    """A topic that `f` matches."""
    out: list[str] = []
    for part in f.split("/"):
        if part == "+":
            out.append(draw(st.sampled_from(["a", "b", "c", "x"])))
        elif part == "#":
            out += draw(st.lists(st.sampled_from(["a", "b", "c", "x"]), max_size=3))
        else:
            out.append(part)
    return "/".join(out)


@given(st.data())
def test_covers_means_every_matched_topic_is_matched(data: st.DataObject) -> None:
    # b is built narrower than a, so filter_covers must hold, and every topic built
    # to match b must match a too (checked against the level-by-level rule as well).
    a = data.draw(filters())
    b = data.draw(narrower(a))
    assert filter_covers(a, b), (a, b)
    for t in data.draw(st.lists(instance(b), min_size=1, max_size=10)):
        assert filter_matches(b, t) and level_match(b.split("/"), t.split("/")), (b, t)
        assert filter_matches(a, t) and level_match(a.split("/"), t.split("/")), (a, b, t)


@given(filters(), filters(), st.lists(topics(), min_size=1, max_size=30))
def test_covers_is_never_claimed_for_a_topic_only_one_matches(
    a: str, b: str, ts: list[str]
) -> None:
    # The converse, on arbitrary pairs: a topic b matches and a does not refutes covering.
    for t in ts:
        if filter_matches(b, t) and not filter_matches(a, t):
            assert not filter_covers(a, b), (a, b, t)


@given(topics(), filters())
def test_filter_matches_agrees_with_the_level_rule(t: str, f: str) -> None:
    if not t.startswith("$"):
        assert filter_matches(f, t) == level_match(f.split("/"), t.split("/")), (f, t)


def test_subscriptions_drop_covered_filters_and_keep_partial_overlaps() -> None:
    assert TopicRouter([["s/#"], ["s/+/temp", "x/y"]]).subscriptions == ["s/#", "x/y"]
    assert TopicRouter([["s/+/temp", "s/#", "s/#"]]).subscriptions == ["s/#"]
    assert TopicRouter([["a/+"], ["+/b"]]).subscriptions == ["a/+", "+/b"]


def test_first_copy_picks_the_lowest_matching_subscription() -> None:
    r = TopicRouter([["a/+"], ["+/b"]])
    ids = r.sub_ids
    assert r.first_copy("a/b", [ids["a/+"]])
    assert not r.first_copy("a/b", [ids["+/b"]])
    assert r.first_copy("a/b", [ids["+/b"], ids["a/+"]])  # one copy carrying both
    assert r.first_copy("c/b", [ids["+/b"]])
    assert r.first_copy("a/b", [99]) is False
    assert TopicRouter([["z"]]).first_copy("q", [1])  # no matching filter known: process


def test_overlapping_filters_count_each_message_once_per_pipeline(
    tmp_path: Path, broker: Broker, upstream_broker: Broker
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[
            pipeline("left", ["s/dev1/+", "s/dev1/temp"]),  # the second is covered by the first
            pipeline("right", ["s/+/temp"]),  # overlaps "left" partly: neither covers the other
        ],
    )
    with Consumer(upstream_broker.port, cfg.batch_topic) as consumer, AgentProcess(cfg) as agent:
        agent.wait_ready()
        now = time.time()
        with Publisher(broker.port) as pub:
            for i in range(10):
                pub.publish("s/dev1/temp", json.dumps({"ts": now + i * 0.01, "value": i}))

        def counts(c: Consumer) -> dict[str, int]:
            out: dict[str, int] = {}
            for w in c.records():
                out[w["pipeline"]] = out.get(w["pipeline"], 0) + w["count"]
            return out

        got = consumer.wait_for(
            lambda c: counts(c) if sum(counts(c).values()) >= 20 else None,
            what="all pipelines' windows",
        )
        # A marker behind them, taken by "right" only: a second copy of any reading would
        # have been taken before it, so once the marker's window is upstream, so is that.
        with Publisher(broker.port) as pub:
            pub.publish("s/marker/temp", json.dumps({"ts": now + 5, "value": 0}))
        consumer.wait_for(
            lambda c: any(w["key"] == "s/marker/temp" for w in c.records()),
            what="the marker's window",
        )
        assert counts(consumer) == {"left": 10, "right": 11}, got
        h = agent.health()
        assert {k: v["readings_in"] for k, v in h["pipelines"].items()} == {"left": 10, "right": 11}


@st.composite
def wider(draw: st.DrawFn, t: str) -> str:
    """A filter that matches topic t: some levels made '+', maybe the rest made '#'."""
    parts = t.split("/")
    out = [draw(st.sampled_from([p, "+"])) for p in parts]
    cut = draw(st.integers(0, len(out)))
    return "/".join([*out[:cut], "#"]) if cut < len(out) or draw(st.booleans()) else "/".join(out)


@given(st.data())
def test_filters_that_share_a_topic_overlap(data: st.DataObject) -> None:
    from edge_agent.ingest.router import filters_overlap

    # Both filters are built to match one topic t: they overlap, by construction.
    t = data.draw(topics().filter(lambda x: not x.startswith("$")))
    a, b = data.draw(wider(t)), data.draw(wider(t))
    assert filter_matches(a, t) and filter_matches(b, t), (a, b, t)
    assert filters_overlap(a, b), (a, b, t)


@given(filters(), filters(), st.lists(topics(), min_size=1, max_size=30))
def test_filters_that_share_a_sampled_topic_overlap(a: str, b: str, ts: list[str]) -> None:
    from edge_agent.ingest.router import filters_overlap

    for t in ts:
        if filter_matches(a, t) and filter_matches(b, t):
            assert filters_overlap(a, b), (a, b, t)


def test_subscription_ids_only_when_subscriptions_overlap() -> None:
    assert not TopicRouter([["sensors/#"]]).needs_ids
    assert not TopicRouter([["a/+"], ["b/+"]]).needs_ids
    assert TopicRouter([["a/+"], ["+/b"]]).needs_ids

"""Topic routing: MQTT filter matching, covering, and one count per message under overlap."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ingest.router import TopicRouter, filter_covers, filter_matches
from tests.agent_harness import AgentProcess, Consumer, Publisher, pipeline, write_config
from tests.brokers import Broker

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


@given(filters(), filters(), st.lists(topics(), min_size=1, max_size=30))
def test_covers_means_every_matched_topic_is_matched(a: str, b: str, ts: list[str]) -> None:
    if filter_covers(a, b):
        for t in ts:
            if filter_matches(b, t):
                assert filter_matches(a, t), (a, b, t)


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
        tmp_path, broker.port, upstream_broker.port,
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

        got = consumer.wait_for(lambda c: counts(c) if sum(counts(c).values()) >= 20 else None,
                                what="all pipelines' windows")
        time.sleep(0.5)  # a double count would show up as more
        assert counts(consumer) == {"left": 10, "right": 10}, got
        h = agent.health()
        assert {k: v["readings_in"] for k, v in h["pipelines"].items()} == {"left": 10, "right": 10}


@given(filters(), filters(), st.lists(topics(), min_size=1, max_size=30))
def test_filters_that_share_a_topic_overlap(a: str, b: str, ts: list[str]) -> None:
    from edge_agent.ingest.router import filters_overlap

    if any(filter_matches(a, t) and filter_matches(b, t) for t in ts):
        assert filters_overlap(a, b), (a, b)


def test_subscription_ids_only_when_subscriptions_overlap() -> None:
    assert not TopicRouter([["sensors/#"]]).needs_ids
    assert not TopicRouter([["a/+"], ["b/+"]]).needs_ids
    assert TopicRouter([["a/+"], ["+/b"]]).needs_ids

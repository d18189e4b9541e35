"""How a config problem is said (edge_agent.config.problems), on its own: the line of a
key or of its nearest table, the pipeline it belongs to, an environment variable in
place of a line, and of two keys that disagree the one set later."""

from __future__ import annotations

import tomllib

from edge_agent.config.positions import KeyScanner
from edge_agent.config.problems import _Problems

TEXT = """\
[upstream]
host = "a"
max_batch_bytes = 100

[[pipeline]]
name = "climate"
topics = ["s/#"]

[[pipeline]]
topics = ["t/#"]
"""


def _problems(text: str = TEXT) -> _Problems:
    locs, _ = KeyScanner(text).run()
    return _Problems(tomllib.loads(text), "agent.toml", locs)


def test_a_key_is_placed_on_its_line_and_a_missing_one_on_its_table() -> None:
    p = _problems()
    p.error(("upstream", "host"), "bad")
    p.error(("upstream", "port"), "missing")  # not in the file: the [upstream] header
    p.error(("agent", "id"), "missing")  # no [agent] table at all: line 1
    assert p.errors == [
        (2, "agent.toml:2: upstream.host: bad"),
        (1, "agent.toml:1: upstream.port: missing"),
        (1, "agent.toml:1: agent.id: missing"),
    ]


def test_a_pipeline_key_names_its_pipeline_when_it_has_a_name() -> None:
    p = _problems()
    p.error(("pipeline", 0, "topics"), "bad")
    p.error(("pipeline", 1, "topics"), "bad")  # unnamed: the index alone
    assert [msg for _, msg in p.errors] == [
        'agent.toml:7: pipeline[0].topics: bad (in pipeline "climate")',
        "agent.toml:10: pipeline[1].topics: bad",
    ]


def test_of_two_keys_that_disagree_the_later_one_is_named() -> None:
    p = _problems()
    p.conflict(("upstream", "host"), ("upstream", "max_batch_bytes"), "disagree")
    p.conflict(("upstream", "max_batch_bytes"), ("upstream", "tls"), "needs tls")  # tls unset
    assert [msg for _, msg in p.errors] == [
        "agent.toml:3: upstream.max_batch_bytes: disagree (with upstream.host on line 2)",
        "agent.toml:3: upstream.max_batch_bytes: needs tls (with upstream.tls)",
    ]


def test_a_key_from_the_environment_is_named_by_its_variable() -> None:
    p = _problems()
    p.env_origin[("upstream", "host")] = "EDGE_AGENT_UPSTREAM_HOST"
    p.error(("upstream", "host"), "bad")
    p.conflict(("upstream", "max_batch_bytes"), ("upstream", "host"), "disagree")
    msgs = [msg for _, msg in p.errors]
    assert msgs[0] == "agent.toml: EDGE_AGENT_UPSTREAM_HOST: upstream.host: bad"
    # The override counts as set after the file: it is the one named.
    assert msgs[1] == (
        "agent.toml: EDGE_AGENT_UPSTREAM_HOST: upstream.host: disagree "
        "(with upstream.max_batch_bytes on line 3)"
    )

"""SPEC 2, 4 and 5 end to end: sensors -> local mosquitto -> the agent process ->
upstream mosquitto -> a consumer decoding CBOR batches; plus /healthz and SIGHUP.

Every test starts its own brokers, agent and tmp dir. Windows are 1 s tumbling with
no out-of-orderness and a 1 s idle timeout, so a key's windows fire about a second
after its last reading; batches leave 100 ms after their first record.
"""

from __future__ import annotations

import math
import re
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.helpers.agent_harness import (
    HEX12,
    AgentProcess,
    Consumer,
    Publisher,
    counted,
    http,
    latest,
    pipeline,
    poll,
    running_agent,
    write_config,
)
from tests.helpers.brokers import Broker


def _now_base() -> float:
    """A whole second a little in the past: readings at base + 0.1..0.9 share a window."""
    return float(math.floor(time.time()) - 3)


def _check_window(rec: dict[str, Any], values: list[float]) -> None:
    assert rec["count"] == len(values)
    assert rec["min"] == pytest.approx(min(values))
    assert rec["max"] == pytest.approx(max(values))
    assert rec["mean"] == pytest.approx(statistics.fmean(values))
    assert rec["rev"] == 0
    assert rec["end"] - rec["start"] == pytest.approx(1.0)


# -- SPEC 2: every payload form ------------------------------------------------------


def test_every_payload_form_arrives_as_windows(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    base = _now_base()
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg),
        Publisher(broker.port) as pub,
    ):
        # {"ts", "value"}: key = topic; other fields are metadata.
        for i, v in enumerate([20.0, 22.0, 21.0]):
            pub.publish("s/obj", f'{{"ts": {base + 0.1 * (i + 1)}, "value": {v}, "unit": "C"}}')
        # Multi-field object: one reading per number field, key = topic/field; strings ignored.
        for i, (t, h) in enumerate([(1.5, 40), (2.5, 42)]):
            pub.publish(
                "s/multi",
                f'{{"ts": {base + 0.2 * (i + 1)}, "id": "dev1", "temp": {t}, "hum": {h}}}',
            )
        # ts in milliseconds.
        pub.publish("s/ms", f'{{"ts": {int((base + 0.5) * 1000)}, "value": 7}}')
        # CBOR, said so by the content type.
        for i, v in enumerate([5, 6]):
            pub.publish(
                "s/cbor", cbor2.dumps({"ts": base + 0.3 + 0.1 * i, "value": v}), "application/cbor"
            )
        # CBOR without content type, in auto: it does not parse as JSON.
        pub.publish("s/cbor-auto", cbor2.dumps({"ts": base + 0.4, "temp": 3.25, "id": "x"}))
        # A bare number: event time = arrival time, key = the topic.
        for v in (1.0, 2.0, 4.0):
            pub.publish("s/bare", f"{v}")
        # A bare number as CBOR.
        pub.publish("s/bare-cbor", cbor2.dumps(9.5), "application/cbor")

        expected_counts = {
            "s/obj": 3,
            "s/multi/temp": 2,
            "s/multi/hum": 2,
            "s/ms": 1,
            "s/cbor": 2,
            "s/cbor-auto/temp": 1,
            "s/bare": 3,
            "s/bare-cbor": 1,
        }

        def all_in(c: Consumer) -> bool:
            recs = c.records()
            return all(counted(recs, k) == n for k, n in expected_counts.items())

        consumer.wait_for(all_in, 15, what="every key's windows")
        assert not consumer.errors
        windows = latest(consumer.records())
        keys = {k[1] for k in windows}
        assert keys == set(expected_counts), keys  # no s/multi/id, no s/obj/unit

        def one(key: str) -> dict[str, Any]:
            recs = [r for k, r in windows.items() if k[1] == key]
            assert len(recs) == 1, recs
            assert recs[0]["pipeline"] == "p"
            return recs[0]

        _check_window(one("s/obj"), [20.0, 22.0, 21.0])
        assert one("s/obj")["start"] == base
        _check_window(one("s/multi/temp"), [1.5, 2.5])
        _check_window(one("s/multi/hum"), [40, 42])
        _check_window(one("s/ms"), [7])
        assert one("s/ms")["start"] == base
        _check_window(one("s/cbor"), [5, 6])
        _check_window(one("s/cbor-auto/temp"), [3.25])
        _check_window(one("s/bare-cbor"), [9.5])
        # Bare numbers may straddle a second boundary: check the totals across windows.
        bare = [r for k, r in windows.items() if k[1] == "s/bare"]
        assert sum(r["count"] for r in bare) == 3
        assert min(r["min"] for r in bare) == 1.0 and max(r["max"] for r in bare) == 4.0
        assert sum(r["mean"] * r["count"] for r in bare) == pytest.approx(7.0)
        for r in bare:  # arrival time: within the last few seconds
            assert time.time() - 30 < r["start"] < time.time()


def test_rejected_readings_are_counted_never_fatal(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    now = time.time()
    rejects = [
        "{not json",  # neither JSON nor CBOR
        '{"value": true}',  # boolean value
        "true",  # bare boolean
        '"21.5"',  # numeric string
        '{"ts": 900000000, "value": 1}',  # before 2000
        f'{{"ts": {now + 3600}, "value": 1}}',  # an hour ahead: past max_future_skew (5m)
        '{"ts": "2024-01-01T00:00:00", "value": 1}',  # RFC 3339 without an offset
        '{"id": "only-metadata"}',  # no reading at all
        '{"value": NaN}',  # non-finite
        "[1, 2]",
    ]
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        for payload in rejects:
            pub.publish("s/bad", payload)
        # A bad field rejects only itself: temp is taken, flag and nothing are rejected.
        pub.publish("s/mixed", f'{{"ts": {now}, "temp": 1.0, "flag": false, "nothing": null}}')
        pub.publish("s/good", f'{{"ts": {now}, "value": 3}}')

        want_rejected = len(rejects) + 2

        def counters() -> dict[str, int] | None:
            c = agent.health()["counters"]
            return c if c["readings_rejected"] >= want_rejected and c["readings_in"] >= 2 else None

        c = poll(counters, 10, what="rejects counted")
        assert c["readings_rejected"] == want_rejected
        assert c["readings_in"] == 2
        consumer.wait_for(lambda c: counted(c.records(), "s/good") == 1, 10)
        consumer.wait_for(lambda c: counted(c.records(), "s/mixed/temp") == 1, 10)
        assert agent.alive()
        assert agent.health()["status"] == "ok"
        assert not [r for r in consumer.records() if r["key"].startswith("s/bad")]
        metrics = http(cfg.base_url + "/metrics")[2].decode()
        assert re.search(
            rf"^edge_agent_readings_rejected_total(\{{[^}}]*\}})? {want_rejected}(\.0)?$",
            metrics,
            re.M,
        ), metrics


# -- SPEC 4: batches ---------------------------------------------------------------------


def test_batch_envelope_and_content_type(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    base = _now_base()
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        t0 = time.time()
        pub.publish("s/a", f'{{"ts": {base + 0.5}, "value": 1}}')
        (batch,) = consumer.wait_for(lambda c: c.batches, 10)[:1]
        assert batch.topic == cfg.batch_topic
        assert batch.content_type == "application/cbor"
        doc = batch.doc
        assert doc["schema"] == "edge-agent/batch/1"
        assert doc["agent"] == cfg.agent_id
        assert isinstance(doc["seq"], int) and not isinstance(doc["seq"], bool) and doc["seq"] >= 0
        assert isinstance(doc["sent"], int | float)
        assert t0 - 1 <= doc["sent"] <= time.time() + 1
        assert isinstance(doc["config"], str) and HEX12.fullmatch(doc["config"])
        health = agent.health()
        assert doc["config"] == health["config"]
        (rec,) = doc["windows"]
        assert set(rec) == {"pipeline", "key", "start", "end", "rev", "count", "min", "max", "mean"}
        assert (rec["pipeline"], rec["key"], rec["start"], rec["end"]) == (
            "p",
            "s/a",
            base,
            base + 1,
        )
        assert not doc.get("readings")
        # The PUBACK was seen.
        poll(lambda: agent.health()["upstream"]["last_ack_age_s"] is not None, 5)
        poll(lambda: agent.health()["counters"]["batches_sent"] >= 1, 5)


def _contiguous(consumer: Consumer) -> list[int]:
    seqs = sorted(b.seq for b in consumer.unique())
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    return seqs


def test_seq_is_plus_one_per_batch_and_continues_across_a_restart(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path, broker.port, upstream_broker.port, pipelines=[pipeline(idle_timeout="5s")]
    )
    base = _now_base() - 20
    published = 0

    def reading(j: int) -> None:
        # Each reading moves the watermark past the previous window: it fires at once.
        nonlocal published
        pub.publish("s/k", f'{{"ts": {base + j + 0.5}, "value": {j}}}')
        published += 1

    with Consumer(upstream_broker.port) as consumer, Publisher(broker.port) as pub:
        with running_agent(cfg) as agent:
            for j in range(4):
                reading(j)
                consumer.wait_for(lambda c, n=j: len(c.unique()) >= n, 10)
            assert agent.stop() == 0  # window [base+3, base+4) is open: checkpointed
        first = _contiguous(consumer)
        assert len(first) == 3
        arrived = [b.seq for b in consumer.batches]
        assert arrived == sorted(arrived)  # sent in seq order
        with running_agent(cfg):
            for j in range(4, 7):
                reading(j)
                consumer.wait_for(lambda c, n=j: len(c.unique()) >= n, 10)
        seqs = _contiguous(consumer)  # no seq reused, none skipped
        assert len(seqs) >= 6 and seqs[:3] == first
        recs = latest(consumer.records())
        assert [k[2] for k in sorted(recs)] == [base + j for j in range(len(recs))]
        assert all(r["count"] == 1 and r["rev"] == 0 for r in recs.values())


def test_max_batch_windows_splits_batches(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        upstream={"max_batch_windows": 3, "max_batch_delay": "1s"},
    )
    base = _now_base()
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg),
        Publisher(broker.port) as pub,
    ):
        for i in range(10):
            pub.publish(f"s/k{i}", f'{{"ts": {base + 0.5}, "value": {i}}}')
        consumer.wait_for(lambda c: len(c.records()) >= 10, 15)
        sizes = [len(b.doc.get("windows", [])) for b in consumer.unique()]
        assert sum(sizes) == 10
        assert max(sizes) == 3, sizes
        assert all(1 <= s <= 3 for s in sizes), sizes
        assert sorted(r["value"] if "value" in r else r["min"] for r in consumer.records()) == list(
            range(10)
        )


def test_window_none_sends_readings(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[pipeline("raw", ["raw/#"], window="none")],
    )
    base = _now_base()
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg),
        Publisher(broker.port) as pub,
    ):
        pub.publish("raw/a", f'{{"ts": {base + 0.25}, "value": 1.5}}')
        pub.publish("raw/b", f'{{"ts": {base + 0.5}, "x": 2, "y": 3}}')
        consumer.wait_for(lambda c: len(c.records("readings")) >= 3, 10)
        got = sorted(
            (r["pipeline"], r["key"], r["ts"], r["value"]) for r in consumer.records("readings")
        )
        assert got == [
            ("raw", "raw/a", base + 0.25, 1.5),
            ("raw", "raw/b/x", base + 0.5, 2),
            ("raw", "raw/b/y", base + 0.5, 3),
        ]
        assert not consumer.records("windows")


# -- SPEC 5: the health endpoint of the live agent ----------------------------------------


def _check_healthz_shape(doc: dict[str, Any]) -> None:
    assert doc["status"] in ("ok", "degraded", "failing")
    assert isinstance(doc["reasons"], list) and all(isinstance(r, str) for r in doc["reasons"])
    assert isinstance(doc["agent"], str) and isinstance(doc["version"], str) and doc["version"]
    assert isinstance(doc["config"], str) and HEX12.fullmatch(doc["config"])
    assert isinstance(doc["uptime_s"], int | float) and doc["uptime_s"] >= 0
    assert isinstance(doc["local"]["connected"], bool)
    assert isinstance(doc["upstream"]["connected"], bool)
    age = doc["upstream"]["last_ack_age_s"]
    assert age is None or (isinstance(age, int | float) and age >= 0)
    buf = doc["buffer"]
    assert isinstance(buf["batches"], int) and isinstance(buf["bytes"], int)
    assert buf["oldest_age_s"] is None or isinstance(buf["oldest_age_s"], int | float)
    assert set(doc["counters"]) >= {
        "readings_in",
        "readings_rejected",
        "readings_late",
        "windows_emitted",
        "batches_sent",
        "batches_dropped",
    }
    assert all(isinstance(v, int) and v >= 0 for v in doc["counters"].values())
    sysd = doc["system"]
    assert 0 <= sysd["cpu_percent"] <= 100 and 0 <= sysd["mem_percent"] <= 100
    assert isinstance(sysd["disk_free_bytes"], int) and sysd["disk_free_bytes"] >= 0
    assert sysd["temperature_c"] is None or isinstance(sysd["temperature_c"], int | float)


def test_healthz_fields_readyz_metrics_and_errors(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        doc = poll(lambda: (d := agent.health())["status"] == "ok" and d, 10)
        _check_healthz_shape(doc)
        assert doc["reasons"] == []
        assert doc["agent"] == cfg.agent_id
        assert doc["local"]["connected"] is True and doc["upstream"]["connected"] is True
        assert doc["upstream"]["last_ack_age_s"] is None  # nothing sent yet
        assert doc["buffer"]["batches"] == 0 and doc["buffer"]["oldest_age_s"] is None
        assert all(v == 0 for v in doc["counters"].values())

        status, headers, _ = http(cfg.base_url + "/healthz")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert http(cfg.base_url + "/readyz")[0] == 200
        assert http(cfg.base_url + "/nope")[0] == 404
        assert http(cfg.base_url + "/healthz", method="POST")[0] == 405
        metrics = http(cfg.base_url + "/metrics")[2].decode()
        assert re.search(r"^edge_agent_buffer_oldest_age_seconds 0(\.0)?$", metrics, re.M), metrics
        assert re.search(r"^edge_agent_buffer_batches 0(\.0)?$", metrics, re.M), metrics

        pub.publish("s/a", '{"value": 1}')
        consumer.wait_for(lambda c: c.records(), 10)
        doc = poll(lambda: (d := agent.health())["upstream"]["last_ack_age_s"] is not None and d, 5)
        _check_healthz_shape(doc)
        assert doc["counters"]["readings_in"] == 1
        assert doc["counters"]["windows_emitted"] >= 1
        assert doc["counters"]["batches_sent"] >= 1
        assert doc["upstream"]["last_ack_age_s"] < 10

        metrics = http(cfg.base_url + "/metrics")[2].decode()
        for name in (
            "edge_agent_readings_in_total",
            "edge_agent_up",
            "edge_agent_uptime_seconds",
            "edge_agent_buffer_oldest_age_seconds",
            "edge_agent_batches_sent_total",
        ):
            assert re.search(rf"^{name}(\{{[^}}]*\}})? ", metrics, re.M), name
        assert re.search(r"^edge_agent_up 1(\.0)?$", metrics, re.M), metrics


def test_upstream_outage_buffers_then_drains_everything(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    base = _now_base() - 20
    n = 0
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        poll(lambda: agent.health()["status"] == "ok", 10)
        upstream_broker.stop()
        doc = poll(lambda: (d := agent.health())["status"] == "degraded" and d, 15, what="degraded")
        assert any("upstream" in r for r in doc["reasons"]), doc["reasons"]
        assert doc["upstream"]["connected"] is False
        assert re.search(r"^edge_agent_up 0\.5$", http(cfg.base_url + "/metrics")[2].decode(), re.M)

        for k in range(4):
            for j in range(5):  # five windows per key, four readings each
                for i in range(4):
                    pub.publish(f"s/k{k}", f'{{"ts": {base + j + 0.2 * i}, "value": {i}}}')
                    n += 1
        # Every reading counted and batches buffered: the first batch can be buffered
        # before the last readings are read (under arm64 emulation it was, at 76 of 80).
        doc = poll(
            lambda: (
                (d := agent.health())["buffer"]["batches"] > 0
                and d["counters"]["readings_in"] == n
                and d
            ),
            15,
            what=f"{n} readings in and batches buffered",
        )
        assert doc["buffer"]["oldest_age_s"] is not None and doc["buffer"]["bytes"] > 0

        upstream_broker.start()
        consumer.wait_for(lambda c: counted(c.records()) == n, 30, what=f"{n} readings upstream")
        doc = poll(lambda: (d := agent.health())["status"] == "ok" and d, 15, what="ok again")
        assert doc["reasons"] == []
        poll(lambda: agent.health()["buffer"]["batches"] == 0, 5)
        assert len(latest(consumer.records())) == 20
        for rec in latest(consumer.records()).values():
            _check_window(rec, [0, 1, 2, 3])
        _contiguous(consumer)
        seqs = [b.seq for b in consumer.batches]
        assert seqs == sorted(seqs)  # backlog drained oldest first


# -- SIGHUP -------------------------------------------------------------------------------


def test_sighup_reloads_a_good_file_and_refuses_a_bad_one(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    with AgentProcess(cfg) as agent:
        agent.wait_ready()
        h0 = agent.health()["config"]

        cfg.rewrite(pipelines=[pipeline(size="2s")])
        agent.send(signal.SIGHUP)
        h1 = poll(lambda: (h := agent.health()["config"]) != h0 and h, 10, what="new config hash")
        assert HEX12.fullmatch(h1)
        assert agent.alive()
        assert http(cfg.base_url + "/readyz")[0] == 200

        cfg.path.write_text(cfg.path.read_text().replace('size = "2s"', 'size = "soon"'))
        agent.send(signal.SIGHUP)
        poll(lambda: "refused" in agent.log(), 10, what="a log line saying refused")
        refusal = next(line for line in agent.log().splitlines() if "refused" in line)
        assert "pipeline[0].size" in refusal
        assert agent.alive()
        assert agent.health()["config"] == h1
        assert agent.stop() == 0


# -- more of SPEC 2 ------------------------------------------------------------------------


def test_timestamp_forms_and_oversized_payloads(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    base = _now_base()
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base))
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        pub.publish("s/us", f'{{"ts": {int((base + 0.1) * 1e6)}, "value": 1}}')
        pub.publish("s/ns", f'{{"ts": {int((base + 0.1) * 1e9)}, "value": 2}}')
        pub.publish("s/iso", f'{{"ts": "{iso}.5Z", "value": 3}}')
        pub.publish("s/iso", f'{{"ts": "{iso.replace("T", "t")}.25+00:00", "value": 4}}')
        big = '{"value": 1, "pad": "' + "x" * 65_600 + '"}'
        pub.publish("s/big", big)  # longer than 65,536 bytes: rejected whole
        pub.publish(
            "s/edge", '{"value": 5, "pad": "' + "x" * (65_536 - 27) + '"}'
        )  # exactly 65,536
        expected = {"s/us": 1, "s/ns": 1, "s/iso": 2, "s/edge": 1}
        consumer.wait_for(
            lambda c: all(counted(c.records(), k) == n for k, n in expected.items()), 10
        )
        windows = latest(consumer.records())
        assert {k[1] for k in windows} == set(expected)
        for (_, key, start, _), rec in windows.items():
            if key != "s/edge":
                assert start == base, (key, rec)
        c = agent.health()["counters"]
        assert c["readings_rejected"] == 1 and c["readings_in"] == 5


def test_every_matching_pipeline_takes_a_message_and_counts_it(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[
            pipeline("a", ["s/#"]),
            pipeline("b", ["s/#"], format="json", aggregates=["count", "sum"]),
        ],
    )
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        pub.publish("s/x", "21.5")
        pub.publish("s/x", "bogus")  # both reject it
        pub.publish("s/y", cbor2.dumps(1.0))  # a takes it; b (json only) rejects it
        consumer.wait_for(lambda c: counted(c.records()) == 3, 10)
        recs = sorted(latest(consumer.records()).values(), key=lambda r: (r["pipeline"], r["key"]))
        assert [(r["pipeline"], r["key"], r["count"]) for r in recs] == [
            ("a", "s/x", 1),
            ("a", "s/y", 1),
            ("b", "s/x", 1),
        ]
        assert set(recs[2]) >= {"count", "sum"} and "mean" not in recs[2]
        c = agent.health()["counters"]
        assert c["readings_in"] == 3 and c["readings_rejected"] == 3


def test_overlapping_filters_of_two_pipelines_take_a_message_once_each(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    """mosquitto sends one copy per matching subscription; each pipeline counts it once."""
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[
            pipeline("a", ["s/#"]),
            pipeline("b", ["s/+/temp"]),
        ],
    )
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        pub.publish("s/x/temp", "21.5")
        consumer.wait_for(lambda c: {r["pipeline"] for r in c.records()} == {"a", "b"}, 10)
        poll(lambda: agent.health()["counters"]["windows_emitted"] >= 2, 5)
        assert [r["count"] for r in latest(consumer.records()).values()] == [1, 1]
        assert agent.health()["counters"]["readings_in"] == 2


def test_overlapping_filters_of_one_pipeline_take_a_message_once(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path, broker.port, upstream_broker.port, pipelines=[pipeline("a", ["s/#", "s/dev1/#"])]
    )
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        pub.publish("s/dev1/temp", "21.5")
        consumer.wait_for(lambda c: c.records(), 10)
        poll(lambda: agent.health()["counters"]["windows_emitted"] >= 1, 5)
        assert agent.health()["counters"]["readings_in"] == 1
        assert counted(consumer.records()) == 1


# -- durability and reload semantics --------------------------------------------------------


def test_open_windows_survive_a_graceful_restart(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path, broker.port, upstream_broker.port, pipelines=[pipeline(idle_timeout="2s")]
    )
    base = _now_base()
    with Consumer(upstream_broker.port) as consumer, Publisher(broker.port) as pub:
        with running_agent(cfg) as agent:
            for i in range(3):
                pub.publish("s/a", f'{{"ts": {base + 0.1 * (i + 1)}, "value": {i}}}')
            poll(lambda: agent.health()["counters"]["readings_in"] == 3, 5)
            assert agent.stop() == 0
        assert not consumer.records()  # still open when it stopped
        with running_agent(cfg) as agent:
            pub.publish("s/a", f'{{"ts": {base + 0.9}, "value": 3}}')
            consumer.wait_for(lambda c: c.records(), 10)
            (rec,) = latest(consumer.records()).values()
            _check_window(rec, [0, 1, 2, 3])


def test_sighup_fires_a_changed_pipelines_open_windows_and_keeps_unchanged_ones(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    slow = {"idle_timeout": "30s"}
    cfg = write_config(
        tmp_path,
        broker.port,
        upstream_broker.port,
        pipelines=[
            pipeline("keep", ["k/#"], **slow),
            pipeline("change", ["c/#"], **slow),
        ],
    )
    base = _now_base()
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        h0 = agent.health()["config"]
        pub.publish("k/a", f'{{"ts": {base + 0.5}, "value": 1}}')
        pub.publish("c/a", f'{{"ts": {base + 0.5}, "value": 2}}')
        poll(lambda: agent.health()["counters"]["readings_in"] == 2, 5)
        cfg.rewrite(
            pipelines=[
                pipeline("keep", ["k/#"], **slow),
                pipeline("change", ["c/#"], size="2s", **slow),
            ]
        )
        agent.send(signal.SIGHUP)
        consumer.wait_for(lambda c: c.records(), 10, what="the changed pipeline's window")
        (batch,) = consumer.unique()
        (rec,) = batch.doc["windows"]
        assert (rec["pipeline"], rec["count"], rec["max"], rec["end"]) == ("change", 1, 2, base + 1)
        # The unchanged pipeline's window is still open: one more reading joins it.
        pub.publish("k/a", f'{{"ts": {base + 0.7}, "value": 5}}')
        pub.publish("k/a", f'{{"ts": {base + 1.5}, "value": 9}}')  # moves the watermark past it
        consumer.wait_for(lambda c: any(r["pipeline"] == "keep" for r in c.records()), 10)
        (kept,) = [r for r in consumer.records() if r["pipeline"] == "keep"]
        _check_window(kept, [1, 5])
        assert agent.health()["config"] != h0


def test_sighup_fired_windows_leave_under_the_old_config_hash(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path, broker.port, upstream_broker.port, pipelines=[pipeline(idle_timeout="30s")]
    )
    base = _now_base()
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        h0 = agent.health()["config"]
        pub.publish("s/a", f'{{"ts": {base + 0.5}, "value": 2}}')
        poll(lambda: agent.health()["counters"]["readings_in"] == 1, 5)
        cfg.rewrite(pipelines=[pipeline(size="2s", idle_timeout="30s")])
        agent.send(signal.SIGHUP)
        (batch,) = consumer.wait_for(lambda c: c.unique(), 10)
        assert batch.doc["windows"][0]["end"] == base + 1  # fired under the old 1 s size
        assert batch.doc["config"] == h0


def test_readyz_follows_the_local_broker(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    with running_agent(cfg) as agent:
        broker.stop()
        poll(lambda: http(cfg.base_url + "/readyz")[0] == 503, 10, what="/readyz 503")
        doc = agent.health()
        assert doc["local"]["connected"] is False
        assert doc["status"] == "degraded" and any("local" in r for r in doc["reasons"])
        broker.start()
        poll(lambda: http(cfg.base_url + "/readyz")[0] == 200, 20, what="/readyz 200 again")
        poll(lambda: agent.health()["status"] == "ok", 10)


def test_late_readings_go_to_late_topic(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(
        tmp_path, broker.port, upstream_broker.port, upstream={"late_topic": "edge/{agent}/late"}
    )
    base = _now_base()
    with (
        Consumer(upstream_broker.port) as consumer,
        running_agent(cfg) as agent,
        Publisher(broker.port) as pub,
    ):
        pub.publish("s/a", f'{{"ts": {base + 0.5}, "value": 1}}')
        pub.publish("s/a", f'{{"ts": {base + 1.5}, "value": 2}}')  # fires [base, base+1)
        pub.publish("s/a", f'{{"ts": {base + 0.6}, "value": 7}}')  # late past lateness 0s
        late = consumer.wait_for(lambda c: [b for b in c.unique() if b.topic.endswith("/late")], 10)
        (batch,) = late
        assert batch.topic == f"edge/{cfg.agent_id}/late"
        assert batch.content_type == "application/cbor"
        assert batch.doc["schema"] == "edge-agent/late/1"
        assert [(r["key"], r["ts"], r["value"]) for r in batch.doc["readings"]] == [
            ("s/a", base + 0.6, 7)
        ]
        poll(lambda: agent.health()["counters"]["readings_late"] == 1, 5)
        assert agent.health()["counters"]["readings_in"] == 3


def test_buffered_batches_survive_a_restart_and_drain_after_it(
    broker: Broker, upstream_broker: Broker, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, broker.port, upstream_broker.port)
    base = _now_base() - 20
    with Consumer(upstream_broker.port) as consumer, Publisher(broker.port) as pub:
        upstream_broker.stop()
        with running_agent(cfg) as agent:
            for j in range(6):
                for i in range(3):
                    pub.publish("s/a", f'{{"ts": {base + j + 0.1 * i}, "value": {i + j}}}')
            poll(lambda: agent.health()["buffer"]["batches"] > 0, 10, what="buffered")
            assert agent.stop() == 0
        upstream_broker.start()
        with running_agent(cfg) as agent:
            consumer.wait_for(lambda c: counted(c.records()) == 18, 20, what="all 18 readings")
            recs = latest(consumer.records())
            assert sorted(k[2] for k in recs) == [base + j for j in range(6)]
            for (_, _, start, _), rec in recs.items():
                j = int(start - base)
                _check_window(rec, [j, j + 1, j + 2])
            _contiguous(consumer)
            poll(lambda: agent.health()["buffer"]["batches"] == 0, 10)
            assert agent.health()["counters"]["readings_in"] == 0  # nothing new since the restart

"""`edge-agent consume` (SPEC 7): decoding, the storage rules on real SQLite and real
PostgreSQL, and the consumer as a process against real mosquitto (kill -9 and
restart, two consumers on a shared subscription)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.consume.decode import BadMessage, decode_message
from edge_agent.consume.storage import open_storage, sqlite_path
from tests.helpers.agent_harness import REPO, agent_env, poll
from tests.helpers.brokers import Broker
from tests.helpers.postgres import Postgres, postgres_unavailable

AGG = {"min": 1.0, "max": 2.0, "mean": 1.5}


def batch(
    seq: int,
    windows: list[dict[str, Any]] = (),
    readings: list[dict[str, Any]] = (),  # type: ignore[assignment]
    agent: str = "dev-1",
    schema: str = "edge-agent/batch/1",
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": schema,
        "agent": agent,
        "seq": seq,
        "sent": 1.7e9 + seq,
        "config": "0123456789ab",
    }
    if windows:
        doc["windows"] = list(windows)
    if readings:
        doc["readings"] = list(readings)
    return doc


def win(
    key: str, start: float, end: float, rev: int = 0, count: int = 3, **extra: Any
) -> dict[str, Any]:
    return {
        "pipeline": "p",
        "key": key,
        "start": start,
        "end": end,
        "rev": rev,
        "count": count,
        **AGG,
        **extra,
    }


def status(
    agent: str = "dev-1", state: str = "online", t: float = 1.7e9, health: str = "ok"
) -> dict[str, Any]:
    return {
        "schema": "edge-agent/status/1",
        "agent": agent,
        "state": state,
        "version": "0.1.0",
        "config": "0123456789ab",
        "health": health,
        "reasons": [],
        "time": t,
    }


# --------------------------------------------------------------------------- decode


def test_decode_batch_columns_and_aggregates_json() -> None:
    d = decode_message(
        cbor2.dumps(
            batch(
                7,
                [win("k", 10, 20, rev=1, p99=1.9)],
                [{"pipeline": "raw", "key": "r", "ts": 15, "value": 2}],
            )
        )
    )
    assert (d.schema, d.agent, d.seq) == ("edge-agent/batch/1", "dev-1", 7)
    (w,) = d.windows
    assert w[:7] == ("dev-1", "p", "k", 10.0, 20.0, 1, 3) and w[8] == 7
    assert json.loads(w[7]) == {**AGG, "p99": 1.9}
    assert d.readings == [("dev-1", "raw", "r", 15.0, 2.0, False, 7)]


def test_decode_aggregates_json_is_what_json_writes_for_any_values() -> None:
    # The fast path (a format per key layout, float reprs) and the general one agree;
    # NaN and infinity become null (JSON has neither), integers and strings pass.
    values: list[Any] = [1.5, -0.0, 1e-7, 1e300, 0.1 + 0.2, 2, 10**30, True, None, "x", 1e308]
    for i, v in enumerate(values):
        for w in (v, 1e308 if i % 2 else 2.5):
            d = decode_message(cbor2.dumps(batch(1, [win("k", 0, 1, **{'q%"é': v, "w": w})])))
            expect = {**AGG, 'q%"é': v, "w": w}
            assert d.windows[0][7] == json.dumps(expect, separators=(",", ":")), (v, w)
    nan = decode_message(cbor2.dumps(batch(1, [win("k", 0, 1, a=float("nan"), b=float("inf"))])))
    assert json.loads(nan.windows[0][7]) == {**AGG, "a": None, "b": None}
    assert nan.pipelines == {"p"}


def test_decode_late_batch_flags_readings_late() -> None:
    d = decode_message(
        cbor2.dumps(
            batch(
                0,
                readings=[{"pipeline": "p", "key": "k", "ts": 1.0, "value": 3.5}],
                schema="edge-agent/late/1",
            )
        )
    )
    assert d.readings == [("dev-1", "p", "k", 1.0, 3.5, True, 0)]


def test_decode_deflate_with_and_without_the_user_property() -> None:
    raw = cbor2.dumps(batch(3, [win("k", 0, 10)]))
    z = zlib.compress(raw)
    assert decode_message(z, "deflate") == decode_message(raw)
    assert decode_message(z) == decode_message(raw)  # a zlib header is never a CBOR map head
    with pytest.raises(BadMessage, match="not a zlib stream"):
        decode_message(raw, "deflate")
    with pytest.raises(BadMessage, match="content-encoding"):
        decode_message(raw, "br")


def test_decode_refuses_a_zlib_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_agent.consume.decode.MAX_INFLATED", 1024 * 1024)
    bomb = zlib.compress(b"\0" * (1024 * 1024 + 1), 9)
    with pytest.raises(BadMessage, match="inflates past"):
        decode_message(bomb, "deflate")


def test_decode_string_references() -> None:
    doc = batch(1, [win(f"key/{i % 2}", 0, 10) for i in range(4)])
    assert decode_message(cbor2.dumps(doc, string_referencing=True)) == decode_message(
        cbor2.dumps(doc)
    )


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xff\x00", "not CBOR"),
        (cbor2.dumps([1, 2]), "CBOR map"),
        (cbor2.dumps({"schema": "other/1", "agent": "a", "seq": 1}), "unknown schema"),
        (cbor2.dumps({**batch(1), "seq": -1}), "seq"),
        (
            cbor2.dumps(batch(1, [{"pipeline": "p", "key": "k", "start": 0, "end": 1, "rev": 0}])),
            "missing count",
        ),
        (cbor2.dumps(batch(1, [win("k", 0, float("nan"))])), "finite"),
        (cbor2.dumps(batch(1, [win("k", 0, 1, replaces=[[0]])])), "replaces"),
        (cbor2.dumps({**status(), "time": "x"}), "time"),
        (cbor2.dumps(batch(1, [win("k", 0, 1, p99=b"\x01")])), "JSON cannot hold"),
    ],
)
def test_decode_rejects_with_a_reason(payload: bytes, why: str) -> None:
    with pytest.raises(BadMessage, match=why):
        decode_message(payload)


def test_sqlite_urls() -> None:
    assert sqlite_path("/var/lib/x.db") == "/var/lib/x.db"
    assert sqlite_path("sqlite:///var/lib/x.db") == "/var/lib/x.db"
    assert sqlite_path("sqlite:////var/lib/x.db") == "/var/lib/x.db"
    assert sqlite_path("rel.db") == "rel.db"
    assert sqlite_path("postgresql://u@h:5432/db") is None


# --------------------------------------------------------------------------- storage rules


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    why = postgres_unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {why}")
        pytest.skip(why)
    with Postgres() as server:
        yield server


_db_counter = 0


def fresh_pg_db(server: Postgres) -> str:
    """A new, empty database on the module's server; its URL."""
    global _db_counter
    _db_counter += 1
    name = f"t{os.getpid()}_{_db_counter}"
    query(server.url, f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/consume.db"
    return fresh_pg_db(request.getfixturevalue("pg"))


run = asyncio.run


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    path = sqlite_path(url)
    if path is not None:
        with sqlite3.connect(path) as c:
            return [tuple(r) for r in c.execute(sql)]
    import asyncpg

    async def fetch() -> list[tuple[Any, ...]]:
        c = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await c.fetch(sql)]
        finally:
            await c.close()

    return asyncio.run(fetch())


async def store(url: str, *groups: list[dict[str, Any]]) -> list[Any]:
    s = open_storage(url)
    await s.open()
    try:
        return [await s.write([decode_message(cbor2.dumps(d)) for d in g]) for g in groups]
    finally:
        await s.close()


def test_sqlite_writers_take_turns_through_the_lock_file(tmp_path: Path) -> None:
    # A second consumer on the same file waits on the writer lock file (a blocking
    # flock, woken at the other's commit), not in SQLite's sleeping busy handler.
    import fcntl

    url = f"sqlite:///{tmp_path}/consume.db"

    async def go() -> None:
        s = open_storage(url)
        await s.open()
        try:
            with open(tmp_path / "consume.db-writer.lock", "ab") as other:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX)  # another consumer is writing
                item = decode_message(cbor2.dumps(batch(0, [win("k", 0, 10)])))
                w = asyncio.ensure_future(s.write([item]))
                await asyncio.sleep(0.3)
                assert not w.done()
                assert query(url, "SELECT count(*) FROM windows") == [(0,)]
                fcntl.flock(other.fileno(), fcntl.LOCK_UN)
                res = await asyncio.wait_for(w, 10)
            assert (res.batches, res.windows) == (1, 1)
        finally:
            await s.close()

    run(go())
    assert query(url, "SELECT key FROM windows") == [("k",)]


def test_highest_rev_wins_in_any_order_and_duplicates_change_nothing(db_url: str) -> None:
    b0 = batch(0, [win("k", 0, 10, rev=0, count=1), win("j", 0, 10)])
    b1 = batch(1, [win("k", 0, 10, rev=2, count=3)])
    b2 = batch(2, [win("k", 0, 10, rev=1, count=2)])
    res = run(store(db_url, [b1], [b0, b2], [b1, b0]))  # newest first, then a redelivery
    assert [(r.batches, r.duplicates) for r in res] == [(1, 0), (2, 0), (0, 2)]
    rows = query(db_url, "SELECT key, rev, count, seq FROM windows ORDER BY key")
    assert rows == [("j", 0, 3, 0), ("k", 2, 3, 1)]
    assert query(db_url, "SELECT count(*) FROM batches") == [(3,)]


def test_a_large_group_keeps_the_highest_rev(db_url: str) -> None:
    """Hundreds of rows in one group (PostgreSQL copies those in bulk): revisions of a
    window inside the group and against the table still end at the highest rev."""
    keys = [f"k{i}" for i in range(300)]
    first = batch(0, [win(k, 0, 10, rev=1, count=2) for k in keys])
    g = [
        batch(1, [win(k, 0, 10, rev=3, count=4) for k in keys]),
        batch(2, [win(k, 0, 10, rev=2, count=3) for k in keys] + [win("new", 0, 10)]),
        batch(3, [win(k, 0, 10, rev=0, count=1) for k in keys]),
    ]
    run(store(db_url, [first], g))
    assert query(
        db_url,
        "SELECT rev, count, seq, count(*) FROM windows WHERE key <> 'new' GROUP BY rev, count, seq",
    ) == [(3, 4, 1, 300)]
    assert query(db_url, "SELECT rev FROM windows WHERE key = 'new'") == [(0,)]


def test_same_batch_twice_in_one_group_is_stored_once(db_url: str) -> None:
    b = batch(5, readings=[{"pipeline": "raw", "key": "r", "ts": 1.0, "value": 1.0}])
    (res,) = run(store(db_url, [b, b]))
    assert (res.batches, res.duplicates) == (1, 1)
    assert query(db_url, "SELECT count(*) FROM readings") == [(1,)]


def test_session_replaces_removes_absorbed_windows_even_when_they_arrive_later(db_url: str) -> None:
    a, b = win("s", 0, 5, rev=0), win("s", 8, 13, rev=0)
    merged = win("s", 0, 13, rev=1, count=6, replaces=[[0, 5], [8, 13]])
    run(store(db_url, [batch(0, [a])], [batch(2, [merged])], [batch(1, [b])]))
    assert query(db_url, "SELECT window_start, window_end, rev FROM windows") == [(0.0, 13.0, 1)]
    # a later revision of the merged session with a wider end replaces it in turn
    wider = win("s", 0, 20, rev=2, count=7, replaces=[[0, 5], [8, 13], [0, 13]])
    run(store(db_url, [batch(3, [wider])]))
    assert query(db_url, "SELECT window_start, window_end, rev FROM windows") == [(0.0, 20.0, 2)]


def test_a_large_group_after_a_merge_keeps_absorbed_windows_out(db_url: str) -> None:
    """The tombstone guard on the bulk path (PostgreSQL: COPY, then one guarded upsert):
    a late copy of an absorbed session window in a group of hundreds stays out."""
    merged = win("s", 0, 13, rev=1, count=6, replaces=[[0, 5], [8, 13]])
    others = [win(f"k{i}", 0, 10) for i in range(300)]
    late = batch(1, [win("s", 0, 5, rev=0), *others, win("s", 8, 13, rev=3)])
    run(store(db_url, [batch(2, [merged])], [late]))
    assert query(db_url, "SELECT window_start, window_end, rev FROM windows WHERE key = 's'") == [
        (0.0, 13.0, 1)
    ]
    assert query(db_url, "SELECT count(*) FROM windows WHERE key <> 's'") == [(300,)]


def test_late_and_raw_readings_and_the_latest_windows_view(db_url: str) -> None:
    raw = batch(0, readings=[{"pipeline": "raw", "key": "r", "ts": 1.5, "value": 4.0}])
    late = batch(
        0,
        readings=[{"pipeline": "p", "key": "k", "ts": 0.5, "value": 9.0}],
        schema="edge-agent/late/1",
    )
    run(store(db_url, [raw, late, batch(1, [win("k", 1700000000, 1700000010)])]))
    rows = query(db_url, "SELECT pipeline, ts, value, late FROM readings ORDER BY ts")
    assert [(p, ts, v, bool(lt)) for p, ts, v, lt in rows] == [
        ("p", 0.5, 9.0, True),
        ("raw", 1.5, 4.0, False),
    ]
    ((mn, mx, mean, t),) = query(db_url, "SELECT min, max, mean, end_time FROM latest_windows")
    assert (mn, mx, mean) == (1.0, 2.0, 1.5)
    assert "2023-11-14" in str(t)


def test_devices_keep_the_newest_status_and_the_will(db_url: str) -> None:
    run(store(db_url, [status(t=100)], [status(t=160, health="degraded")], [status(t=130)]))
    assert query(db_url, "SELECT state, health, time FROM devices") == [
        ("online", "degraded", 160.0)
    ]
    # the MQTT will was fixed at connect (t=100) and still says the device went away
    run(store(db_url, [status(state="offline", t=100)]))
    assert query(db_url, "SELECT state, time FROM devices") == [("offline", 100.0)]
    run(store(db_url, [status(t=200)]))
    assert query(db_url, "SELECT state FROM devices") == [("online",)]


# --------------------------------------------------------------------------- the process


def start_consumer(port: int, db: str, *extra: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_agent",
                "consume",
                "--broker",
                f"127.0.0.1:{port}",
                "--db",
                db,
                *extra,
            ],
            cwd=REPO,
            env=agent_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if p.poll() is None:
        p.send_signal(sig)
    return p.wait(20)


class BatchPublisher:
    """Publishes synthetic batches at QoS 1, waiting for every PUBACK."""

    def __init__(self, port: int) -> None:
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.c.max_inflight_messages_set(1000)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.props = Properties(PacketTypes.PUBLISH)
        self.props.ContentType = "application/cbor"
        self.infos: list[paho.MQTTMessageInfo] = []

    def send(
        self, topic: str, doc: dict[str, Any], *, deflate: bool = False, retain: bool = False
    ) -> None:
        payload = cbor2.dumps(doc)
        props = self.props
        if deflate:
            payload = zlib.compress(payload)
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/cbor"
            props.UserProperty = ("content-encoding", "deflate")
        self.infos.append(self.c.publish(topic, payload, qos=1, retain=retain, properties=props))

    def flush(self, timeout: float = 30.0) -> None:
        for i in self.infos:
            i.wait_for_publish(timeout)
        self.infos.clear()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def stored(db: str) -> tuple[int, int, int]:
    """(batches, readings, windows) in the database; 0s while its tables do not exist yet."""
    try:
        ((b,),) = query(db, "SELECT count(*) FROM batches")
        ((r,),) = query(db, "SELECT count(*) FROM readings")
        ((w,),) = query(db, "SELECT count(*) FROM windows")
    except Exception:
        return (0, 0, 0)
    return (b, r, w)


def stream(n: int, agent: str = "dev-1") -> list[dict[str, Any]]:
    """n batches, each with 5 readings and 5 windows; a doubled batch shows in readings."""
    return [
        batch(
            s,
            [win(f"k{j}", s * 10, s * 10 + 10) for j in range(5)],
            [
                {"pipeline": "raw", "key": f"r{j}", "ts": s + j / 10, "value": float(j)}
                for j in range(5)
            ],
            agent=agent,
        )
        for s in range(n)
    ]


def check_exact(db: str, n: int, agents: int = 1) -> None:
    assert query(db, "SELECT count(*), count(DISTINCT agent || '/' || seq) FROM batches") == [
        (n * agents, n * agents)
    ]
    assert stored(db) == (n * agents, n * agents * 5, n * agents * 5)
    dup = query(
        db,
        "SELECT agent, seq, ts, count(*) FROM readings GROUP BY agent, seq, ts HAVING count(*) > 1",
    )
    assert dup == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_kill_9_mid_stream_then_restart_loses_and_doubles_nothing(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = f"sqlite:///{tmp_path}/c.db" if kind == "sqlite" else request.getfixturevalue("db_url_pg")
    n = 600
    with Broker(tmp_path / "broker") as broker:
        log = tmp_path / "consumer.log"
        c = start_consumer(broker.port, db, "--client-id", "kill-test", log=log)
        try:
            poll(lambda: "subscribed" in log.read_text(), 15, what="consumer subscribed")
            pub = BatchPublisher(broker.port)
            docs = stream(n)
            for d in docs[: n // 2]:
                pub.send("edge/dev-1/batches", d, deflate=d["seq"] % 2 == 1)
            pub.flush()
            poll(lambda: stored(db)[0] > 20, 20, what="some batches stored")
            c.send_signal(signal.SIGKILL)  # mid-stream: some stored, some in flight
            c.wait(10)
            for d in docs[n // 2 :]:
                pub.send("edge/dev-1/batches", d)
            pub.flush()
            pub.close()
            before = stored(db)[0]
            assert before < n
            c = start_consumer(broker.port, db, "--client-id", "kill-test", log=log)
            poll(lambda: stored(db)[0] == n, 30, what=f"all {n} batches stored (had {before})")
            time.sleep(0.5)  # anything doubled would land now
            check_exact(db, n)
            assert stop(c) == 0
        finally:
            if c.poll() is None:
                c.kill()
                c.wait()


@pytest.fixture
def db_url_pg(pg: Postgres) -> str:
    return fresh_pg_db(pg)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_consumers_on_a_shared_subscription_one_killed_and_restarted(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = f"sqlite:///{tmp_path}/c.db" if kind == "sqlite" else request.getfixturevalue("db_url_pg")
    n, agents = 400, 3
    with Broker(tmp_path / "broker") as broker:
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        share = ("--share", "g")
        # No --client-id: the two claim distinct ids themselves, and the restarted one takes its own back.
        a = start_consumer(broker.port, db, *share, log=logs[0])
        poll(lambda: "subscribed" in logs[0].read_text(), 15, what="consumer a subscribed")
        b = start_consumer(broker.port, db, *share, log=logs[1])
        try:
            poll(lambda: "subscribed" in logs[1].read_text(), 15, what="consumer b subscribed")
            ids = [
                next(
                    ln.split(" as ")[-1] for ln in p.read_text().splitlines() if "subscribed" in ln
                )
                for p in logs
            ]
            assert ids[0] != ids[1]
            pub = BatchPublisher(broker.port)
            docs = [(f"dev-{g}", d) for g in range(agents) for d in stream(n, f"dev-{g}")]
            docs.sort(key=lambda x: x[1]["seq"])
            half = len(docs) // 2
            for agent, d in docs[:half]:
                pub.send(f"edge/{agent}/batches", d)
            pub.flush()
            poll(lambda: stored(db)[0] > 30, 20, what="some batches stored")
            b.send_signal(signal.SIGKILL)
            b.wait(10)
            for agent, d in docs[half:]:
                pub.send(f"edge/{agent}/batches", d)
            pub.flush()
            pub.close()
            b = start_consumer(broker.port, db, *share, log=logs[1])
            poll(
                lambda: stored(db)[0] == n * agents,
                40,
                what=f"every batch stored (have {stored(db)[0]} of {n * agents})",
            )
            # the restarted consumer took back its own session (its unacked messages)
            assert [
                ln.split(" as ")[-1]
                for ln in logs[1].read_text().splitlines()
                if "subscribed" in ln
            ] == [ids[1], ids[1]]
            time.sleep(0.5)
            check_exact(db, n, agents)
        finally:
            for p in (a, b):
                if p.poll() is None:
                    stop(p)


@pytest.mark.slow
def test_bad_and_oversized_messages_are_rejected_with_a_reason_and_do_not_block(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    with Broker(tmp_path / "broker") as broker:
        log = tmp_path / "consumer.log"
        c = start_consumer(broker.port, db, "--client-id", "poison", log=log)
        try:
            poll(lambda: "subscribed" in log.read_text(), 15, what="consumer subscribed")
            pub = BatchPublisher(broker.port)
            pub.c.publish(
                "edge/x/batches", b"\xa1" + b"\x00" * (5 * 1024 * 1024), qos=1
            ).wait_for_publish(30)
            pub.c.publish("edge/x/batches", b"\xff\xfe", qos=1).wait_for_publish(30)
            pub.send("edge/dev-1/batches", stream(1)[0])
            pub.flush()
            pub.close()
            poll(
                lambda: stored(db) == (1, 5, 5), 20, what="the good batch stored after the bad ones"
            )
            text = log.read_text()
            assert "larger than 4194304 bytes" in text and "not CBOR" in text, text
            assert stop(c) == 0
        finally:
            if c.poll() is None:
                c.kill()
                c.wait()


@pytest.mark.slow
def test_agent_to_consumer_deflated_batches_and_device_status(tmp_path: Path) -> None:
    """The whole path: a real agent (deflate) -> upstream mosquitto -> `edge-agent consume`
    -> SQLite: windows with their aggregates, and the device's status, online then offline."""
    from tests.helpers.agent_harness import Publisher, running_agent, write_config

    db = f"sqlite:///{tmp_path}/fleet.db"
    with Broker(tmp_path / "local") as local, Broker(tmp_path / "up") as up:
        log = tmp_path / "consumer.log"
        c = start_consumer(
            up.port, db, "--topic", "edge/+/batches", "--topic", "edge/+/status", log=log
        )
        try:
            poll(lambda: "subscribed" in log.read_text(), 15, what="consumer subscribed")
            cfg = write_config(tmp_path, local.port, up.port, upstream={"compression": "deflate"})
            with running_agent(cfg) as agent, Publisher(local.port) as pub:
                for i in range(5):
                    pub.publish("s/a", json.dumps({"ts": 1.7e9 + i * 0.1, "value": float(i)}))
                poll(
                    lambda: query(db, "SELECT count(*) FROM windows") == [(1,)],
                    20,
                    what="the window",
                )
                ((agent_id, key, n, aggs),) = query(
                    db, "SELECT agent, key, count, aggregates FROM windows"
                )
                assert (agent_id, key, n) == (cfg.agent_id, "s/a", 5)
                assert json.loads(aggs) == {"min": 0.0, "max": 4.0, "mean": 2.0}
                poll(
                    lambda: query(db, "SELECT state FROM devices") == [("online",)],
                    10,
                    what="online",
                )
                assert agent.stop() == 0
            poll(
                lambda: query(db, "SELECT state FROM devices") == [("offline",)], 10, what="offline"
            )
            ((version, cfg_hash),) = query(db, "SELECT version, config FROM devices")
            assert version and len(cfg_hash) == 12
            assert "rejected" not in log.read_text()
        finally:
            stop(c)

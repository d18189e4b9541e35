"""The ingest session (edge_agent.ingest_session.IngestSession) on its own, against a
real mosquitto: built from its parts (store, batcher, delivery log, checkpointer),
without an Agent, uplink or health endpoint.

What the broker redelivers to a resumed session tells which QoS 1 messages were
acknowledged: a message is redelivered (DUP set) exactly when its PUBACK never left.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

import edge_agent.ingest_session as ingest_session
from edge_agent.ingest_session import IngestSession
from tests.helpers.agent_harness import Publisher, apoll
from tests.helpers.brokers import Broker
from tests.helpers.session import connect as _connect
from tests.helpers.session import disconnect as _disconnect
from tests.helpers.session import ingest_session as _session


def _reading(value: float) -> str:
    return json.dumps({"ts": time.time(), "value": value})


async def _resume_until_marker(
    session: IngestSession, pub: Publisher, n: int, commit: bool = False
) -> None:
    """Resume the session, publish a marker, wait until it was processed (whatever the
    broker redelivers comes before it); with `commit`, checkpoint before leaving."""
    task = await _connect(session)
    try:
        pub.publish("s/marker", _reading(0.0))
        p = session.pipelines[0]
        await apoll(lambda: p.readings_in >= n, 10, what=f"{n} readings processed")
        if commit:
            assert await session.commit()  # PUBACKs leave on this connection
    finally:
        await _disconnect(session, task)


async def test_qos1_is_acknowledged_only_after_the_checkpoint_commits(
    tmp_path: Path, broker: Broker
) -> None:
    async with _session(tmp_path, broker) as session:
        task = await _connect(session)
        p = session.pipelines[0]
        with Publisher(broker.port) as pub:
            pub.publish("s/a", _reading(1.0))
            await apoll(lambda: p.readings_in == 1, 10, what="the reading processed")
            await _disconnect(session, task)  # no checkpoint yet: no PUBACK left

            # The broker redelivers it; the session knows its effect (counted once).
            # This time a checkpoint commits before the session leaves.
            await _resume_until_marker(session, pub, 2, commit=True)
            assert session.messages_duplicate == 1
            assert p.readings_in == 2  # the reading and the marker, not the copy

            await _resume_until_marker(session, pub, 3)
            assert session.messages_duplicate == 1  # nothing came again
            assert p.readings_in == 3


async def test_over_the_budget_the_socket_waits_for_the_checkpoint(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_session, "_BUDGET_MESSAGES", 20)  # instead of Receive Maximum
    async with _session(tmp_path, broker) as session:
        task = await _connect(session)
        p = session.pipelines[0]
        with Publisher(broker.port) as pub:
            for i in range(30):
                pub.publish(f"s/{i % 3}", _reading(float(i)))
            local = session.local
            assert local is not None
            await apoll(lambda: local.reading_paused, 10, what="the socket paused")
            assert session.ingest_pauses == 1 and session.overloaded
            taken = p.readings_in
            assert taken >= 20

            # Paused: what is published now waits at the broker, not in our memory.
            for i in range(5):
                pub.publish("s/later", _reading(float(i)))
            await asyncio.sleep(0.3)
            assert p.readings_in == taken

            assert await session.commit()  # acknowledges what was processed, reads again
            assert not local.reading_paused
            await apoll(lambda: p.readings_in == 35, 10, what="the rest processed")
            assert session.ingest_pauses == 1
            assert await session.commit()
            await _disconnect(session, task)
            await _resume_until_marker(session, pub, 36)
            assert session.messages_duplicate == 0  # every one was acknowledged


async def test_messages_before_start_and_after_stop_are_left_to_the_broker(
    tmp_path: Path, broker: Broker
) -> None:
    async with _session(tmp_path, broker) as session:
        task = await _connect(session)
        p = session.pipelines[0]
        with Publisher(broker.port) as pub:
            pub.publish("s/a", _reading(1.0))
            await apoll(lambda: p.readings_in == 1, 10, what="the reading processed")
            session.stop_taking()  # processes what was read, then takes nothing more
            assert await session.commit()
            pub.publish("s/b", _reading(2.0))
            await asyncio.sleep(0.3)
            assert p.readings_in == 1  # s/b arrived but was not taken (nor acknowledged)
            await _disconnect(session, task)

            session.start()
            await _resume_until_marker(session, pub, 3)  # s/b comes again, then the marker
            assert session.messages_duplicate == 0

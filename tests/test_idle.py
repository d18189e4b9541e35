"""Idle firing (edge_agent.idle.IdleTimer) over a real ingest session on a real
mosquitto: a key gone quiet fires after idle_timeout of the ingest clock, and not
while the session cannot hear from it (the broker connection is down)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from edge_agent.idle import IdleTimer
from tests.helpers.agent_harness import Publisher, apoll
from tests.helpers.brokers import Broker
from tests.helpers.session import connect, disconnect, ingest_session

PIPELINE = 'idle_timeout = "1s"\nmax_out_of_orderness = "0s"'


async def test_a_quiet_key_fires_after_idle_timeout_of_the_ingest_clock(
    tmp_path: Path, broker: Broker
) -> None:
    async with ingest_session(tmp_path, broker, PIPELINE) as session:
        task = await connect(session)
        timer = asyncio.get_running_loop().create_task(IdleTimer(session, tick=0.05).run())
        try:
            engine = session.pipelines[0].engine
            with Publisher(broker.port) as pub:
                pub.publish("s/a", json.dumps({"ts": time.time(), "value": 1}))
            await apoll(lambda: session.pipelines[0].readings_in == 1, 10, what="the reading")
            t0 = time.monotonic()
            await apoll(lambda: engine.windows_emitted == 1, 10, what="the idle window")
            assert time.monotonic() - t0 >= 0.5  # not before the key was quiet for a while
            assert session.batcher.records_waiting() == 1  # handed to the batcher
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            await disconnect(session, task)


async def test_nothing_fires_while_the_session_cannot_hear_and_the_clock_stalls(
    tmp_path: Path, broker: Broker
) -> None:
    async with ingest_session(tmp_path, broker, PIPELINE) as session:
        task = await connect(session)
        engine = session.pipelines[0].engine
        with Publisher(broker.port) as pub:
            pub.publish("s/a", json.dumps({"ts": time.time(), "value": 1}))
        await apoll(lambda: session.pipelines[0].readings_in == 1, 10, what="the reading")
        await disconnect(session, task)  # the local broker is away from now on

        timer = asyncio.get_running_loop().create_task(IdleTimer(session, tick=0.05).run())
        try:
            stalled0 = session.ingest_clock.stalled
            await asyncio.sleep(1.5)  # longer than idle_timeout, all of it a stall
            assert engine.windows_emitted == 0
            assert session.ingest_clock.stalled - stalled0 >= 1.0

            task = await connect(session)  # heard again: the key's quiet time runs on
            await apoll(lambda: engine.windows_emitted == 1, 10, what="the idle window")
            await disconnect(session, task)
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

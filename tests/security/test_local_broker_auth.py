"""Issue 13, item 1: the local broker is authenticated, with scaffold's snippet, for real.

mosquitto runs with the scaffolded conf and ACL (paths moved into the test's tmp dir),
users made by mosquitto_passwd. The agent logs in with [local] username and
password_file; a client that reuses its client id without the password is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.cli.scaffold import MOSQUITTO_ACL, MOSQUITTO_SNIPPET
from tests.helpers.agent_harness import AgentProcess, Consumer, pipeline, poll, write_config
from tests.helpers.brokers import Broker, find_mosquitto

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_mosquitto() is None or MOSQUITTO_PASSWD is None,
        reason="mosquitto and mosquitto_passwd are needed",
    ),
]


def _scaffolded_broker(tmp_path: Path, users: dict[str, str]) -> Broker:
    work = tmp_path / "secured-broker"
    broker = Broker(work, persistence=False)
    passwd, acl = work / "edge-agent.passwd", work / "edge-agent.acl"
    for i, (user, password) in enumerate(users.items()):
        args = ["-c"] if i == 0 else []
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", *args, str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    acl.write_text(MOSQUITTO_ACL)
    snippet = MOSQUITTO_SNIPPET.replace("/etc/mosquitto/edge-agent.passwd", str(passwd)).replace(
        "/etc/mosquitto/edge-agent.acl", str(acl)
    )
    # our Broker's own lines (listener, user, log) stay; the snippet's persistence
    # location would be /var/lib/mosquitto, which is not ours to write
    snippet = re.sub(r"(?m)^persistence_location .*$", f"persistence_location {work}/", snippet)
    own = [
        ln
        for ln in broker.conf.read_text().splitlines()
        if not ln.startswith(("allow_anonymous", "persistence"))
    ]
    broker.conf.write_text("\n".join(own) + "\n" + snippet)
    return broker.start()


def _connect(
    port: int, client_id: str, username: str | None = None, password: str | None = None
) -> Any:
    """The CONNACK reason code of a fresh MQTT 5 connection attempt."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    if username is not None:
        client.username_pw_set(username, password)
    got: list[Any] = []
    done = threading.Event()

    def on_connect(_c: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        got.append(rc)
        done.set()

    def on_disconnect(_c: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        got.append(rc)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(5.0), "no CONNACK"
        return got[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_scaffolded_broker_refuses_the_agents_client_id_without_password(
    tmp_path: Path, upstream_broker: Broker
) -> None:
    users = {"edge-agent": "agent-pw-1234", "dev1": "dev1-pw-5678"}
    broker = _scaffolded_broker(tmp_path, users)
    try:
        (tmp_path / "local.password").write_text(users["edge-agent"] + "\n")
        os.chmod(tmp_path / "local.password", 0o600)
        cfg = write_config(
            tmp_path,
            broker.port,
            upstream_broker.port,
            pipelines=[pipeline(topics=["sensors/#"])],
            local={"username": "edge-agent", "password_file": str(tmp_path / "local.password")},
        )
        agent_client_id = f"edge-agent-{cfg.agent_id}"
        with Consumer(upstream_broker.port) as batches, AgentProcess(cfg) as agent:
            agent.wait_ready()
            # an intruder reusing the agent's client id: no password, a wrong one, a
            # sensor's user without the agent's password
            for creds in [(None, None), ("edge-agent", "guess"), ("dev1", "wrong")]:
                rc = _connect(broker.port, agent_client_id, *creds)
                assert rc.is_failure, (creds, rc)
                assert rc.value in (134, 135), rc  # bad user name or password / not authorized
            assert agent.health()["local"]["connected"], "the agent lost its session"
            # a sensor publishes below its own topic; the agent reads it
            sensor = paho.Client(
                CallbackAPIVersion.VERSION2, client_id="dev1", protocol=MQTTProtocolVersion.MQTTv5
            )
            sensor.username_pw_set("dev1", users["dev1"])
            sensor.connect("127.0.0.1", broker.port)
            sensor.loop_start()
            try:
                info = sensor.publish("sensors/dev1/temp", b"21.5", qos=1)
                info.wait_for_publish(5.0)
                batches.wait_for(
                    lambda c: [r for r in c.records() if r["key"] == "sensors/dev1/temp"],
                    timeout=20,
                    what="the sensor's reading upstream",
                )
                # anonymous publishers are refused outright
                assert _connect(broker.port, "anon").is_failure
            finally:
                sensor.disconnect()
                sensor.loop_stop()
    finally:
        broker.stop()


def test_acl_lets_sensors_publish_only_and_only_the_agent_read(tmp_path: Path) -> None:
    users = {"edge-agent": "agent-pw-1234", "dev1": "dev1-pw-5678", "dev2": "dev2-pw-9012"}
    broker = _scaffolded_broker(tmp_path, users)
    try:
        received: dict[str, list[str]] = {"edge-agent": [], "dev2": []}
        clients = []
        for user in received:
            c = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"r-{user}",
                protocol=MQTTProtocolVersion.MQTTv5,
            )
            c.username_pw_set(user, users[user])
            c.on_message = lambda _c, _u, m, who=user: received[who].append(m.topic)
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            c.subscribe("sensors/#", qos=1)
            clients.append(c)
        time.sleep(0.5)  # the subscriptions settle (no ack to wait on for a denied one)
        pub = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="p-dev1", protocol=MQTTProtocolVersion.MQTTv5
        )
        pub.username_pw_set("dev1", users["dev1"])
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("sensors/dev1/temp", b"1", qos=1).wait_for_publish(5.0)
        pub.publish("sensors/dev2/temp", b"2", qos=1).wait_for_publish(5.0)  # not its topic
        poll(lambda: received["edge-agent"], 5, what="the agent's copy")
        time.sleep(0.5)
        assert received["edge-agent"] == ["sensors/dev1/temp"]  # dev2's topic was denied
        assert received["dev2"] == []  # a sensor reads nothing
        pub.disconnect()
        pub.loop_stop()
        for c in clients:
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()


async def test_firmware_bridge_logs_in_to_the_scaffolded_broker(tmp_path: Path) -> None:
    import asyncio
    from dataclasses import replace

    from firmware_bridge.config import parse_config
    from firmware_bridge.publish import JSON, Publisher

    users = {"edge-agent": "agent-pw-1234", "firmware-bridge": "bridge-pw-5678"}
    broker = _scaffolded_broker(tmp_path, users)
    acl = Path(str(broker.conf.parent / "edge-agent.acl"))
    acl.write_text(
        MOSQUITTO_ACL.replace("#user firmware-bridge", "user firmware-bridge").replace(
            "#topic write sensors/#", "topic write sensors/#"
        )
    )
    broker.restart()
    received: list[str] = []
    reader = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="reader", protocol=MQTTProtocolVersion.MQTTv5
    )
    reader.username_pw_set("edge-agent", users["edge-agent"])
    reader.on_message = lambda _c, _u, m: received.append(m.topic)
    reader.connect("127.0.0.1", broker.port)
    reader.loop_start()
    reader.subscribe("sensors/#", qos=1)
    pw = tmp_path / "bridge.password"
    pw.write_text(users["firmware-bridge"] + "\n")
    os.chmod(pw, 0o600)
    base = parse_config("").publish
    try:
        for login, expect in (
            (dict(username="firmware-bridge", password_file=str(pw)), True),
            (dict(), False),
        ):
            pub = Publisher(replace(base, port=broker.port, reconnect_max=0.5, **login))
            await pub.start()
            try:
                pub.submit("sensors/board7", b'{"v": 1}', JSON)
                deadline = time.monotonic() + (10 if expect else 2)
                while pub.published == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert (pub.published == 1) == expect, (login, pub.published)
            finally:
                await pub.close()
        poll(lambda: received, 5, what="the bridge's message at the agent's user")
        assert received == ["sensors/board7"]
    finally:
        reader.disconnect()
        reader.loop_stop()
        broker.stop()


def test_local_password_file_is_reread_on_reload(tmp_path: Path, upstream_broker: Broker) -> None:
    import signal

    users = {"edge-agent": "first-pw-1234", "dev1": "dev1-pw-5678"}
    broker = _scaffolded_broker(tmp_path, users)
    passwd = broker.conf.parent / "edge-agent.passwd"
    try:
        secret = tmp_path / "local.password"
        secret.write_text(users["edge-agent"] + "\n")
        os.chmod(secret, 0o600)
        cfg = write_config(
            tmp_path,
            broker.port,
            upstream_broker.port,
            pipelines=[pipeline(topics=["sensors/#"])],
            local={"username": "edge-agent", "password_file": str(secret)},
        )
        with AgentProcess(cfg) as agent:
            agent.wait_ready()
            # rotate the password: broker first, then the agent's file, then SIGHUP
            subprocess.run(
                [MOSQUITTO_PASSWD, "-b", str(passwd), "edge-agent", "second-pw-5678"],
                check=True,
                capture_output=True,
            )
            broker.restart()  # drops the agent; the old password no longer works
            secret.write_text("second-pw-5678\n")
            agent.send(signal.SIGHUP)
            poll(
                lambda: agent.health()["local"]["connected"],
                30,
                what="the agent back on the broker with the reread password",
            )
    finally:
        broker.stop()

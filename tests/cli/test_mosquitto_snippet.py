"""The broker snippet `edge-agent scaffold` writes, loaded as the README installs it:
into the include_dir of Debian's stock /etc/mosquitto/mosquitto.conf (a copy of the
bookworm package's file is in tests/data, so the test does not depend on the host's),
with the password file and ACL the README makes beside it."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.cli.scaffold import scaffold
from tests.helpers.brokers import find_mosquitto, free_port

DEBIAN_CONF = Path(__file__).resolve().parents[1] / "data" / "debian-mosquitto.conf"
QUEUED = 1500  # more than a stock mosquitto queues for one client (max_queued_messages 1000)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
USERS = {"edge-agent": "agent-secret", "a": "sensor-secret"}  # the agent and sensor "a"


class StockBroker:
    """mosquitto -c <Debian's mosquitto.conf>, its paths moved into a temp dir."""

    def __init__(self, root: Path, scaffolded: Path) -> None:
        self.root, self.port = root, free_port()
        self.conf_d, self.lib = root / "etc/mosquitto/conf.d", root / "var/lib/mosquitto"
        for d in (self.conf_d, self.lib, root / "run/mosquitto", root / "var/log/mosquitto"):
            d.mkdir(parents=True, exist_ok=True)
        text = DEBIAN_CONF.read_text()
        for path in (
            "/run/mosquitto",
            "/var/lib/mosquitto",
            "/var/log/mosquitto",
            "/etc/mosquitto",
        ):
            assert path in text, path
            text = text.replace(path, f"{root}{path}")
        self.main = root / "etc/mosquitto/mosquitto.conf"
        self.main.write_text(text)
        self.log = root / "var/log/mosquitto/mosquitto.log"
        self.stderr = root / "stderr.txt"
        # The README's steps: the snippet into conf.d, users, the ACL (all below /etc/mosquitto).
        etc = root / "etc/mosquitto"
        snippet = (scaffolded / "mosquitto-edge-agent.conf").read_text()
        (self.conf_d / "edge-agent.conf").write_text(snippet.replace("/etc/mosquitto/", f"{etc}/"))
        if "password_file /etc/mosquitto/edge-agent.passwd" in snippet:
            assert MOSQUITTO_PASSWD is not None, "mosquitto_passwd is not installed"
            for i, (user, password) in enumerate(USERS.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run(
                    [
                        MOSQUITTO_PASSWD,
                        "-b",
                        *create,
                        str(etc / "edge-agent.passwd"),
                        user,
                        password,
                    ],
                    check=True,
                    capture_output=True,
                )
        if "acl_file /etc/mosquitto/edge-agent.acl" in snippet:
            shutil.copy(scaffolded / "mosquitto-edge-agent.acl", etc / "edge-agent.acl")
        # What this test needs beside them: a free port instead of 1883 (where the host's
        # own broker may listen) and, as root, no switch to a user "mosquitto".
        (self.conf_d / "zz-test.conf").write_text(
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\nlistener {self.port} 127.0.0.1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = find_mosquitto()
        assert binary is not None, "mosquitto is not installed"
        with open(self.stderr, "ab") as err:  # "Loading config file ..." goes here
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.main)],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.stderr.read_text()
                log = self.log.read_text() if self.log.exists() else ""
                pytest.fail(f"mosquitto exited {self.proc.returncode}:\n{err}{log}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a clean stop saves the persistence file
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def scaffolded(tmp_path: Path) -> Path:
    assert scaffold(str(tmp_path / "scaffold")) == 0
    return tmp_path / "scaffold"


@pytest.fixture
def stock_broker(tmp_path: Path, scaffolded: Path) -> Iterator[StockBroker]:
    b = StockBroker(tmp_path / "root", scaffolded)
    try:
        yield b
    finally:
        b.stop()


def _client(client_id: str, user: str) -> paho.Client:
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.username_pw_set(user, USERS[user])
    return client


def _connect(client: paho.Client, port: int, persistent: bool) -> None:
    props = Properties(PacketTypes.CONNECT)
    if persistent:
        props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 8192  # what edge-agent asks for
    client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)


def test_snippet_loads_beside_debians_stock_config_and_its_settings_hold(
    stock_broker: StockBroker,
) -> None:
    stock_broker.start()

    # The agent's persistent session subscribes, then goes away.
    received: list[bytes] = []
    subscribed, got_all = threading.Event(), threading.Event()

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        received.append(msg.payload)
        if len(received) >= QUEUED:
            got_all.set()

    agent = _client("edge-agent-test", "edge-agent")
    agent.on_subscribe = lambda *_a: subscribed.set()
    agent.on_message = on_message
    _connect(agent, stock_broker.port, persistent=True)
    agent.loop_start()
    agent.subscribe("sensors/#", qos=1)
    assert subscribed.wait(5), "no SUBACK"
    agent.disconnect()
    agent.loop_stop()

    # A sensor publishes more than a stock broker would queue for it.
    sensor = _client("sensor", "a")
    _connect(sensor, stock_broker.port, persistent=False)
    sensor.loop_start()
    infos = [sensor.publish("sensors/a/temp", str(i).encode(), qos=1) for i in range(QUEUED)]
    for info in infos:
        info.wait_for_publish(10)
    sensor.disconnect()
    sensor.loop_stop()

    # The broker restarts (an upgrade, a power cut's reboot): the session and its
    # queue come back from the persistence file where Debian's config puts it.
    stock_broker.stop()
    assert (stock_broker.lib / "mosquitto.db").stat().st_size > 0
    stock_broker.start()

    agent = _client("edge-agent-test", "edge-agent")
    agent.on_message = on_message
    _connect(agent, stock_broker.port, persistent=True)
    agent.loop_start()
    try:
        assert got_all.wait(20), f"{len(received)} of {QUEUED} queued messages delivered"
    finally:
        agent.disconnect()
        agent.loop_stop()
    assert sorted(int(p) for p in received) == list(range(QUEUED))
    assert "conf.d/edge-agent.conf" in stock_broker.stderr.read_text()  # loaded from include_dir
    errors = [line for line in stock_broker.log.read_text().splitlines() if "Error" in line]
    assert not errors, errors

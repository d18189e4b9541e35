"""The local broker over TLS, mutual TLS and a password (SPEC 1: [local] takes tls, ca_file,
cert_file, key_file, username and password_file with the same meaning as in [upstream]).

The local mosquitto has two listeners: the plain one the test's sensor publishes on, and a
TLS one (certificates from tests/helpers/certs.py) the agent subscribes through.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.agent_harness import (
    AgentProcess,
    Consumer,
    Publisher,
    counted,
    http,
    poll,
    running_agent,
    write_config,
)
from tests.helpers.brokers import Broker, free_port
from tests.helpers.certs import CLIENT_CN, Pki, make_pki, tls_listener_conf

pytestmark = pytest.mark.slow

MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


def _local_tls_broker(
    tmp_path: Path, *, require_certificate: bool, password: str = ""
) -> tuple[Broker, int, Pki]:
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    conf = tls_listener_conf(tls_port, pki, require_certificate=require_certificate)
    if password:
        pw = tmp_path / "mosquitto.passwd"
        subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(pw), "edge", password], check=True)
        conf += f"password_file {pw}\n"
    return Broker(tmp_path / "local-tls-broker", extra_conf=conf), tls_port, pki


def test_agent_reads_the_local_broker_over_mutual_tls(
    tmp_path: Path, upstream_broker: Broker
) -> None:
    broker, tls_port, pki = _local_tls_broker(tmp_path, require_certificate=True)
    ca = pki.ca
    with broker:
        cfg = write_config(
            tmp_path,
            tls_port,
            upstream_broker.port,
            local={
                "tls": True,
                "ca_file": str(ca),
                "cert_file": str(pki.client_cert),
                "key_file": str(pki.client_key),
            },
        )
        with Consumer(upstream_broker.port) as c, running_agent(cfg) as agent:
            assert agent.health()["local"]["connected"] is True
            with Publisher(broker.port) as pub:  # the sensor, on the plain listener
                for i in range(3):
                    pub.publish("s/a", str(20 + i))
            c.wait_for(lambda c: counted(c.records()) == 3, 20, what="3 readings upstream")
        # the broker saw the agent's certificate (use_identity_as_username)
        assert f"u'{CLIENT_CN}'" in broker.log.read_text()


def test_agent_logs_in_to_the_local_broker_over_tls_with_a_password_file(
    tmp_path: Path, upstream_broker: Broker
) -> None:
    password = "l0cal-Secret-9"
    broker, tls_port, pki = _local_tls_broker(
        tmp_path, require_certificate=False, password=password
    )
    pw = tmp_path / "local.password"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    with broker:
        cfg = write_config(
            tmp_path,
            tls_port,
            upstream_broker.port,
            local={
                "tls": True,
                "ca_file": str(pki.ca),
                "username": "edge",
                "password_file": str(pw),
            },
        )
        with Consumer(upstream_broker.port) as c, running_agent(cfg) as agent:
            with Publisher(broker.port) as pub:
                pub.publish("s/a", "21.5")
            c.wait_for(lambda c: counted(c.records()) == 1, 20, what="the reading upstream")
            assert password not in agent.log()
        assert "u'edge'" in broker.log.read_text()


def test_a_wrong_local_ca_is_failing_not_fatal_and_named(
    tmp_path: Path, upstream_broker: Broker
) -> None:
    broker, tls_port, _pki = _local_tls_broker(tmp_path, require_certificate=False)
    other = make_pki(tmp_path / "other-pki")
    with broker:
        cfg = write_config(
            tmp_path, tls_port, upstream_broker.port, local={"tls": True, "ca_file": str(other.ca)}
        )
        with AgentProcess(cfg) as agent:
            poll(
                lambda: "certificate verification failed" in agent.log(),
                15,
                what="the TLS failure in the log",
            )
            assert agent.alive()
            assert agent.health()["local"]["connected"] is False
            assert http(cfg.base_url + "/readyz")[0] == 503

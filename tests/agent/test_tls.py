"""Upstream over TLS (server verification, mutual TLS, password auth) against a real mosquitto.

The upstream mosquitto has two listeners: the plain one the test's consumer reads
batches from, and a TLS one (certificates from tests/helpers/certs.py) the agent sends to.
Failures (a wrong CA, an expired server certificate, a wrong password) must each
give one clear log line and a degraded /healthz while readings keep buffering, and
the buffer must drain once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.mqtt import MqttClient, MqttError, TlsSettings
from tests.helpers.agent_harness import (
    AgentConfig,
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

MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
USER = "greenhouse-7"
PASSWORD = "Tr0ub4dor-&-3-hunter2"  # distinctive, so a grep of the output cannot miss it


@dataclass(frozen=True, slots=True)
class TlsUpstream:
    broker: Broker  # broker.port: plain listener, for the consumer
    tls_port: int
    pki: Pki

    def attempts(self) -> int:
        """Connection attempts on the TLS listener the broker logged (failed handshakes included)."""
        text = self.broker.log.read_text(errors="replace") if self.broker.log.exists() else ""
        return len(re.findall(rf"on port {self.tls_port}\.|Client connection from .* failed", text))


@contextmanager
def tls_upstream(
    tmp_path: Path,
    *,
    server: str = "server",
    require_certificate: bool = False,
    password: str | None = None,
) -> Iterator[TlsUpstream]:
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    conf = tls_listener_conf(tls_port, pki, server=server, require_certificate=require_certificate)
    if password is not None:
        # Global, not per listener: anonymous clients (the consumer) are still let
        # in, but a client that gives a username must give its password.
        pw = tmp_path / "mosquitto.passwd"
        subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(pw), USER, password], check=True)
        conf += f"password_file {pw}\n"
    with Broker(tmp_path / "upstream-broker", extra_conf=conf) as broker:
        yield TlsUpstream(broker, tls_port, pki)


def _tls_config(
    tmp_path: Path, local: Broker, up: TlsUpstream, *, log_level: str = "info", **upstream: object
) -> AgentConfig:
    keys: dict[str, object] = {"tls": True, "ca_file": str(up.pki.ca), **upstream}
    cfg = write_config(tmp_path, local.port, up.tls_port, upstream=keys)
    _set_log_level(cfg, log_level)
    return cfg


def _set_log_level(cfg: AgentConfig, level: str) -> None:
    text = cfg.path.read_text()
    assert 'log_level = "info"' in text
    cfg.path.write_text(text.replace('log_level = "info"', f'log_level = "{level}"'))


def _password_file(tmp_path: Path, password: str) -> Path:
    f = tmp_path / "upstream.pass"
    f.write_text(password + "\n")
    f.chmod(0o600)
    return f


def _publish(port: int, n: int, topic: str = "s/a") -> None:
    with Publisher(port) as pub:
        for i in range(n):
            pub.publish(topic, f"{20 + i * 0.5}")


def _warnings(log: str) -> list[str]:
    """Log lines at WARNING or above (text format: `TIME LEVEL logger: message`)."""
    return [ln for ln in log.splitlines() if re.search(r"\s(WARNING|ERROR|CRITICAL)\s", ln)]


# -- what MqttClient says about each failure (the words the agent's log line carries) ---------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "wrong_ca",
            "TLS certificate verification failed: self-signed certificate in certificate chain"
            " (is ca_file the CA that signed the broker's certificate?)",
        ),
        ("expired", "TLS certificate verification failed: certificate has expired"),
        ("wronghost", "verification failed: IP address mismatch, certificate is not valid for"),
        ("no_client_cert", "closed the connection"),
        ("plain_port", "connection reset by peer"),
        ("missing_ca", "nope.pem: no such file"),
        ("key_mismatch", "is not the key of cert_file"),
        ("refused", "connection refused"),
    ],
)
async def test_connect_failures_are_described_in_words(
    tmp_path: Path, case: str, expected: str
) -> None:
    server = {"expired": "expired", "wronghost": "wronghost"}.get(case, "server")
    with tls_upstream(tmp_path, server=server, require_certificate=case == "no_client_cert") as up:
        pki = up.pki
        port, tls = up.tls_port, TlsSettings(str(pki.ca))
        if case == "wrong_ca":
            tls = TlsSettings(str(pki.other_ca))
        elif case == "plain_port":
            port = up.broker.port
        elif case == "missing_ca":
            tls = TlsSettings(str(tmp_path / "nope.pem"))
        elif case == "key_mismatch":
            tls = TlsSettings(str(pki.ca), str(pki.client_cert), str(pki.server_key))
        elif case == "refused":
            port = free_port()
        client = MqttClient(host="127.0.0.1", port=port, tls=tls)
        with pytest.raises(MqttError) as err:
            await client.connect(timeout=5.0)
            # TLS 1.3: a broker that wants a client certificate says so only after
            # the handshake, when the client first reads.
            await asyncio.wait_for(client.wait_disconnected(), 5.0)
            raise MqttError(f"closed the connection: {await client.wait_disconnected()}")
        client.close()
    message = str(err.value)
    assert expected in message, message
    assert "\n" not in message and "_ssl.c" not in message and "[SSL" not in message, message


async def test_mutual_tls_connects_as_the_certificate_identity(tmp_path: Path) -> None:
    with tls_upstream(tmp_path, require_certificate=True) as up:
        pki = up.pki
        client = MqttClient(
            host="127.0.0.1",
            port=up.tls_port,
            tls=TlsSettings(str(pki.ca), str(pki.client_cert), str(pki.client_key)),
        )
        await client.connect(timeout=5.0)
        try:
            assert client.connected
        finally:
            await client.disconnect()
        # use_identity_as_username: the broker saw the certificate's CN as the user.
        assert f"u'{CLIENT_CN}'" in up.broker.log.read_text()


# -- the agent: delivery over TLS and mTLS ---------------------------------------------------


def test_agent_delivers_over_tls_with_server_verification(broker: Broker, tmp_path: Path) -> None:
    with tls_upstream(tmp_path) as up:
        cfg = _tls_config(tmp_path, broker, up)
        with Consumer(up.broker.port) as consumer, running_agent(cfg) as agent:
            _publish(broker.port, 5)
            consumer.wait_for(lambda c: counted(c.records()) == 5, what="5 readings in windows")
            h = poll(lambda: (d := agent.health())["status"] == "ok" and d, what="status ok")
            assert h["upstream"]["connected"] is True
            assert h["counters"]["batches_sent"] >= 1
        assert not _warnings(agent.log()), agent.log()


def test_agent_delivers_over_mutual_tls(broker: Broker, tmp_path: Path) -> None:
    with tls_upstream(tmp_path, require_certificate=True) as up:
        pki = up.pki
        cfg = _tls_config(
            tmp_path, broker, up, cert_file=str(pki.client_cert), key_file=str(pki.client_key)
        )
        with Consumer(up.broker.port) as consumer, running_agent(cfg) as agent:
            _publish(broker.port, 4)
            consumer.wait_for(lambda c: counted(c.records()) == 4, what="4 readings in windows")
            assert {b.doc["agent"] for b in consumer.unique()} == {cfg.agent_id}
        assert f"u'{CLIENT_CN}'" in up.broker.log.read_text()
        assert not _warnings(agent.log()), agent.log()


def test_agent_delivers_with_username_and_password_file(broker: Broker, tmp_path: Path) -> None:
    with tls_upstream(tmp_path, password=PASSWORD) as up:
        pw = _password_file(tmp_path, PASSWORD)
        cfg = _tls_config(
            tmp_path, broker, up, log_level="debug", username=USER, password_file=str(pw)
        )
        with Consumer(up.broker.port) as consumer, running_agent(cfg) as agent:
            _publish(broker.port, 3)
            consumer.wait_for(lambda c: counted(c.records()) == 3, what="3 readings in windows")
            bodies = [
                http(cfg.base_url + p)[2].decode() for p in ("/healthz", "/metrics", "/readyz")
            ]
            agent.send(signal.SIGHUP)  # a reload logs the config it read: still no password
            poll(lambda: "config reloaded" in agent.log(), what="reload logged")
        out = agent.log()
        assert f"u'{USER}'" in up.broker.log.read_text()
        for text in (out, *bodies):
            assert PASSWORD not in text


# -- failures: one clear line, degraded, buffering goes on, drains once fixed ------------------

FAILURES = {
    # case: (what the broker does, the agent's upstream keys, words in the log line)
    "wrong_ca": ({}, "other_ca", "TLS certificate verification failed"),
    "expired": ({"server": "expired"}, "ca", "certificate has expired"),
    "wrong_password": ({"password": PASSWORD}, "ca", "Not authorized"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failure_logs_one_clear_line_degrades_buffers_and_drains_once_fixed(
    broker: Broker, tmp_path: Path, case: str
) -> None:
    broker_opts, ca, words = FAILURES[case]
    wrong_password = "not-" + PASSWORD + "-at-all"
    with tls_upstream(tmp_path, **broker_opts) as up:  # type: ignore[arg-type]
        keys: dict[str, object] = {"ca_file": str(getattr(up.pki, ca))}
        if case == "wrong_password":
            keys |= {
                "username": USER,
                "password_file": str(_password_file(tmp_path, wrong_password)),
            }
        cfg = _tls_config(tmp_path, broker, up, log_level="debug", **keys)
        with Consumer(up.broker.port) as consumer:
            with running_agent(cfg) as agent:
                _publish(broker.port, 6)
                h = poll(
                    lambda: (d := agent.health())["buffer"]["batches"] > 0 and d,
                    what="batches buffered",
                )
                assert h["status"] == "degraded"
                assert h["upstream"]["connected"] is False
                assert any(r.startswith("upstream unreachable") for r in h["reasons"]), h["reasons"]
                # Several attempts failed the same way, and said so once.
                poll(lambda: up.attempts() >= 3, what="3 connection attempts")
                buffered = agent.health()["buffer"]["batches"]
                assert buffered > 0
            out = agent.log()
            warnings = _warnings(out)
            assert len(warnings) == 1, "\n".join(warnings)
            line = warnings[0]
            assert f"upstream 127.0.0.1:{up.tls_port} unreachable" in line and words in line, line
            assert "Traceback" not in out
            assert wrong_password not in out and PASSWORD not in out
            assert consumer.unique() == []

            # Fixed (the right CA, a valid certificate, the right password) and restarted:
            # the backlog drains, in seq order, and nothing is missing.
            if case == "wrong_ca":
                cfg.path.write_text(
                    cfg.path.read_text().replace(str(up.pki.other_ca), str(up.pki.ca))
                )
            elif case == "expired":
                up.broker.stop()
                up.broker.conf.write_text(
                    up.broker.conf.read_text()
                    .replace(str(up.pki.expired_cert), str(up.pki.server_cert))
                    .replace(str(up.pki.expired_key), str(up.pki.server_key))
                )
                up.broker.start()
            else:
                _password_file(tmp_path, PASSWORD)
            with running_agent(cfg) as agent2:
                consumer.wait_for(
                    lambda c: counted(c.records()) == 6, what="all 6 readings delivered"
                )
                poll(lambda: agent2.health()["buffer"]["batches"] == 0, what="buffer drained")
                poll(lambda: agent2.health()["status"] == "ok", what="status ok")
            seqs = sorted(b.seq for b in consumer.unique())
            assert seqs == list(range(len(seqs))) and len(seqs) >= buffered
            assert PASSWORD not in agent2.log() and wrong_password not in agent2.log()


# -- what needs the lead's change: reload rebuilds the uplink -----------------------------------


def test_sighup_rereads_the_password_file(broker: Broker, tmp_path: Path) -> None:
    with tls_upstream(tmp_path, password=PASSWORD) as up:
        pw = _password_file(tmp_path, "wrong")
        cfg = _tls_config(tmp_path, broker, up, username=USER, password_file=str(pw))
        with Consumer(up.broker.port) as consumer, running_agent(cfg) as agent:
            _publish(broker.port, 2)
            poll(lambda: agent.health()["buffer"]["batches"] > 0, what="batches buffered")
            _password_file(tmp_path, PASSWORD)
            agent.send(signal.SIGHUP)
            consumer.wait_for(lambda c: counted(c.records()) == 2, timeout=4.0, what="delivery")
        assert PASSWORD not in agent.log()


def test_sighup_applies_a_fixed_ca_file(broker: Broker, tmp_path: Path) -> None:
    with tls_upstream(tmp_path) as up:
        cfg = _tls_config(tmp_path, broker, up, ca_file=str(up.pki.other_ca))
        with Consumer(up.broker.port) as consumer, running_agent(cfg) as agent:
            _publish(broker.port, 2)
            poll(lambda: agent.health()["buffer"]["batches"] > 0, what="batches buffered")
            cfg.path.write_text(cfg.path.read_text().replace(str(up.pki.other_ca), str(up.pki.ca)))
            agent.send(signal.SIGHUP)
            consumer.wait_for(lambda c: counted(c.records()) == 2, timeout=4.0, what="delivery")


def test_health_reason_says_why_upstream_is_unreachable(broker: Broker, tmp_path: Path) -> None:
    with tls_upstream(tmp_path, server="expired") as up:
        cfg = _tls_config(tmp_path, broker, up)
        with running_agent(cfg) as agent:
            poll(lambda: up.attempts() >= 1, what="a connection attempt")
            h = poll(
                lambda: (d := agent.health())["uplink"]["last_error"] and d,
                what="the upstream error in /healthz",
            )
            assert "certificate has expired" in h["uplink"]["last_error"], h["uplink"]
            assert any(re.fullmatch(r"upstream unreachable for \d+ s", r) for r in h["reasons"])

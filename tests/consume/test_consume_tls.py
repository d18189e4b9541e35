"""`edge-agent consume` against a broker that wants TLS, a client certificate or a password
(SPEC 7: `--tls`, `--ca-file`, `--cert-file`, `--key-file`, `--username`, `--password-file`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.consume.test_consume import BatchPublisher, start_consumer, stop, stored, stream
from tests.helpers.agent_harness import poll
from tests.helpers.brokers import Broker, free_port
from tests.helpers.certs import CLIENT_CN, make_pki, tls_listener_conf

pytestmark = pytest.mark.slow

MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


@pytest.mark.parametrize("auth", ["mutual_tls", "password"])
def test_consume_over_tls(tmp_path: Path, auth: str) -> None:
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    conf = tls_listener_conf(tls_port, pki, require_certificate=auth == "mutual_tls")
    flags = ["--tls", "--ca-file", str(pki.ca)]
    if auth == "mutual_tls":
        flags += ["--cert-file", str(pki.client_cert), "--key-file", str(pki.client_key)]
        user = CLIENT_CN
    else:
        password = "c0nsumer-Pass-7"
        pw = tmp_path / "mosquitto.passwd"
        subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(pw), "fleet", password], check=True)
        conf += f"password_file {pw}\n"
        secret = tmp_path / "consumer.password"
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        flags += ["--username", "fleet", "--password-file", str(secret)]
        user = "fleet"
    db = f"sqlite:///{tmp_path}/c.db"
    with Broker(tmp_path / "broker", extra_conf=conf) as broker:
        log = tmp_path / "consumer.log"
        c = start_consumer(tls_port, db, *flags, log=log)
        try:
            poll(lambda: "subscribed" in log.read_text(), 15, what="consumer subscribed")
            pub = BatchPublisher(broker.port)  # the agent's side, on the plain listener
            for doc in stream(2):
                pub.send("edge/dev-1/batches", doc)
            pub.flush()
            pub.close()
            poll(lambda: stored(db) == (2, 10, 10), 20, what="both batches stored")
            assert stop(c) == 0
        finally:
            if c.poll() is None:
                c.kill()
                c.wait()
        assert f"u'{user}'" in broker.log.read_text()
        if auth == "password":
            assert password not in log.read_text()

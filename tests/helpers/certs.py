"""A throwaway PKI for TLS tests, made with `cryptography` (a test-only dependency).

    pki = make_pki(tmp_path / "pki")
    pki.ca, pki.server_cert, pki.server_key      # the broker's chain, valid for 127.0.0.1 and localhost
    pki.client_cert, pki.client_key              # for mutual TLS, CN "edge-client"
    pki.expired_cert, pki.expired_key            # a server certificate that expired yesterday
    pki.wronghost_cert, pki.wronghost_key        # valid, but for broker.example.com only
    pki.other_ca                                 # a CA that signed none of these (the "wrong CA")

Keys are P-256: generating one takes well under a millisecond, so every test can
have its own PKI instead of sharing one across the session.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki", "tls_listener_conf"]

CLIENT_CN = "edge-client"


@dataclass(frozen=True, slots=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    expired_cert: Path
    expired_key: Path
    wronghost_cert: Path
    wronghost_key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(cn: str, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
    not_before: dt.datetime,
    not_after: dt.datetime,
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        # Python's ssl checks the host against the SAN only (the CN is ignored).
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in names]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_pki(directory: Path) -> Pki:
    """Write a CA, server, client and expired certificates (PEM) into `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca, ca_key = _ca("edge-agent test CA", now)
    other, _ = _ca("some other CA", now)
    server, server_key = _leaf(
        "127.0.0.1",
        ca,
        ca_key,
        server=True,
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=30),
    )
    client, client_key = _leaf(
        CLIENT_CN,
        ca,
        ca_key,
        server=False,
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=30),
    )
    expired, expired_key = _leaf(
        "127.0.0.1",
        ca,
        ca_key,
        server=True,
        not_before=now - dt.timedelta(days=3),
        not_after=now - dt.timedelta(days=1),
    )
    wronghost, wronghost_key = _leaf(
        "broker.example.com",
        ca,
        ca_key,
        server=True,
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=30),
        names=("broker.example.com",),
    )
    return Pki(
        dir=d,
        ca=_write_cert(d / "ca.pem", ca),
        server_cert=_write_cert(d / "server.pem", server),
        server_key=_write_key(d / "server.key", server_key),
        client_cert=_write_cert(d / "client.pem", client),
        client_key=_write_key(d / "client.key", client_key),
        expired_cert=_write_cert(d / "expired.pem", expired),
        expired_key=_write_key(d / "expired.key", expired_key),
        wronghost_cert=_write_cert(d / "wronghost.pem", wronghost),
        wronghost_key=_write_key(d / "wronghost.key", wronghost_key),
        other_ca=_write_cert(d / "other-ca.pem", other),
    )


def tls_listener_conf(
    port: int,
    pki: Pki,
    *,
    server: str = "server",
    require_certificate: bool = False,
) -> str:
    """mosquitto.conf lines for a second, TLS listener (appended after the plain one).

    certfile/keyfile/cafile/require_certificate are per-listener settings in
    mosquitto 2 whatever `per_listener_settings` says, so the plain listener the
    test's consumer uses stays as it is. `server` picks the broker's certificate:
    "server", "expired" or "wronghost".
    """
    cert, key = {
        "server": (pki.server_cert, pki.server_key),
        "expired": (pki.expired_cert, pki.expired_key),
        "wronghost": (pki.wronghost_cert, pki.wronghost_key),
    }[server]
    lines = [
        f"listener {port} 127.0.0.1",
        f"cafile {pki.ca}",
        f"certfile {cert}",
        f"keyfile {key}",
    ]
    if require_certificate:
        lines += ["require_certificate true", "use_identity_as_username true"]
    return "\n".join(lines) + "\n"

"""TLS settings for a connection, and the words for why a connect failed."""

from __future__ import annotations

import os
import re
import socket
import ssl
from dataclasses import dataclass

from edge_agent.mqtt.messages import MqttError


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Server verification against `ca_file` (or the system store), plus a client chain for mTLS."""

    ca_file: str = ""  # "" = the system's trust store
    cert_file: str = ""
    key_file: str = ""

    def context(self) -> ssl.SSLContext:
        """A fresh context, files read now (a certificate renewed on disk is used at the next connect).

        Raises MqttError naming the file and what is wrong with it.
        """
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file or None)
        except FileNotFoundError as exc:
            raise MqttError(f"ca_file {self.ca_file}: no such file") from exc
        except OSError as exc:  # SSLError included: not PEM, no certificate in it
            raise MqttError(
                f"ca_file {self.ca_file}: cannot load CA certificates: {_describe_ssl(exc)}"
            ) from exc
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file or None)
            except FileNotFoundError as exc:
                missing = exc.filename or (
                    self.cert_file if not self.key_file else f"{self.cert_file} or {self.key_file}"
                )
                raise MqttError(f"client certificate: {missing}: no such file") from exc
            except ssl.SSLError as exc:
                if "KEY_VALUES_MISMATCH" in str(exc):
                    why = f"key_file {self.key_file or self.cert_file} is not the key of cert_file {self.cert_file}"
                else:
                    why = f"cert_file {self.cert_file} / key_file {self.key_file or '(in cert_file)'}: {_describe_ssl(exc)}"
                raise MqttError(f"client certificate: {why}") from exc
            except OSError as exc:
                raise MqttError(
                    f"client certificate {self.cert_file}: {exc.strerror or exc}"
                ) from exc
        return ctx


# OpenSSL verify results that mean "ca_file is not the CA that signed the broker's certificate".
_WRONG_CA = (
    "unable to get local issuer certificate",
    "self-signed certificate",
    "self signed certificate",
    "unable to verify the first certificate",
)
_SSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\]\s*|\s*\(_ssl\.c:\d+\)$")


def _describe_ssl(exc: OSError) -> str:
    """An ssl.SSLError's words without the `[SSL: CODE]` prefix and the `(_ssl.c:NNN)` suffix."""
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    return _SSL_NOISE.sub("", text).strip() or type(exc).__name__


def describe_failure(exc: BaseException) -> str:
    """One clause saying why a connect failed, for a log line and for /healthz."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or _describe_ssl(exc)
        if any(w in why for w in _WRONG_CA):
            # The most common cause by far: the wrong or a missing ca_file.
            why += " (is ca_file the CA that signed the broker's certificate?)"
        return f"TLS certificate verification failed: {why}"
    if isinstance(exc, ssl.SSLError):
        why = _describe_ssl(exc)
        if "alert" in why:
            return f"TLS handshake failed: the broker refused it ({why})"
        if "wrong version number" in why or "record layer failure" in why:
            return f"TLS handshake failed: {why} (is the port a TLS listener?)"
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return f"TLS handshake failed: the broker closed the connection ({why})"
        return f"TLS handshake failed: {why}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, socket.gaierror):
        # "[Errno 111] Connection refused" -> "connection refused" (asyncio words it
        # "Connect call failed (addr)": the errno says the same, shorter).
        words = os.strerror(exc.errno)
        return words[:1].lower() + words[1:]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # DNS errors keep their words
    if isinstance(exc, OSError) and exc.errno is None and not str(exc):
        return type(exc).__name__
    return str(exc) or type(exc).__name__

"""Process-wide logging: one line per event, journald-aware, secrets never logged.

``setup_logging(level, fmt)`` installs one stderr handler on the root logger:

- ``"text"``: ``2024-05-01T12:00:00.123Z INFO edge_agent.uplink: connected host=broker``.
  Under systemd (stderr is the journal stream named by $JOURNAL_STREAM) the
  timestamp is left out, since journald stamps every entry itself, and the line
  starts with a ``<N>`` syslog priority so ``journalctl -p warning`` works
  (sd-daemon(3)).
- ``"json"``: one object per line: ``ts``, ``level``, ``logger``, ``msg``, any
  ``extra=`` fields, and ``exc`` for a traceback.

Newlines inside a message or traceback are escaped as ``\\n``: journald would
split them into separate entries, and a topic name or payload with a newline
could otherwise forge a log line.

Redaction: every handler on the root logger gets a filter that rewrites the
record before any formatter sees it: registered secrets (``register_secret``:
the upstream password, the health token) become ``***`` wherever they appear,
and so do the values in ``password=...``, ``token: ...``, ``Authorization:
Bearer ...`` and ``scheme://user:pass@host`` patterns. The formatters redact
their finished line once more, so nothing our handler writes can carry a
registered secret, tracebacks included.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "forget_secrets",
    "redact",
    "register_secret",
    "setup_logging",
]

MASK = "***"

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# syslog priorities journald reads from a "<N>" line prefix (SyslogLevelPrefix=yes).
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

# "key = value" where key names a secret. `password_file = "/etc/..."` does not
# match: the key must end right before the separator.
_KEYED = re.compile(
    r"""(?ix)
    \b((?:[a-z0-9]+[_-])*(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key))
    (["']?\s*[=:]\s*)
    (?!\*\*\*)("[^"]*"|'[^']*'|[^\s,;&"']+)
    """
)
# Authorization headers: the scheme may be absent ("Authorization: abc123"). The
# possessive "?+" keeps an already masked "Bearer ***" from being read as a
# scheme-less header whose value is "Bearer" (redact() must be idempotent: the
# filter and the formatter both run it).
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization[\"']?\s*[=:]\s*[\"']?)(?:(bearer|basic|digest|token)\s+)?+(?!\*\*\*)[^\s,;\"']+"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)(?!\*\*\*)[A-Za-z0-9\-._~+/]+=*")
# URL userinfo: mqtts://user:secret@host
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@")

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Redact ``value`` from every log line from now on (passwords, tokens)."""
    global _secret_pattern
    if not value:
        return
    forms = {value, value.strip()}
    # The JSON formatter escapes quotes, backslashes and control characters; the
    # escaped form of a secret must not slip past the final-line check either.
    forms |= {json.dumps(form)[1:-1] for form in list(forms)}
    forms |= {form.replace("\n", "\\n") for form in list(forms)}
    forms.discard("")
    with _lock:
        _secrets.update(forms)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(map(_secret_regex, ordered)))


# A secret shorter than this is masked only as a whole word: "pi" must not turn
# "pipeline" into "***peline" (which also tells a reader the password). Longer ones
# are masked wherever they appear, inside other text too (tests/test_logs.py holds
# that for every secret of 4 characters or more).
SHORT_SECRET = 4


def _secret_regex(secret: str) -> str:
    if len(secret) >= SHORT_SECRET:
        return re.escape(secret)
    return rf"(?<![A-Za-z0-9_]){re.escape(secret)}(?![A-Za-z0-9_])"


def forget_secrets() -> None:
    """Drop every registered secret (tests; a reload that changes the password)."""
    global _secret_pattern
    with _lock:
        _secrets.clear()
        _secret_pattern = None


def _redact_registered(text: str) -> str:
    pattern = _secret_pattern
    return text if pattern is None else pattern.sub(MASK, text)


def redact(text: str) -> str:
    """``text`` with registered secrets and credential patterns replaced by ``***``."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    # Cheap screen first: most lines mention none of these words.
    lowered = text.lower()
    if any(word in lowered for word in _TRIGGERS):
        text = _KEYED.sub(rf"\1\2{MASK}", text)
        text = _AUTH_HEADER.sub(_auth_repl, text)
        text = _BEARER.sub(rf"\1{MASK}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    return text


_TRIGGERS = ("pass", "pwd", "secret", "token", "key", "auth", "bearer")


def _auth_repl(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return f"{match.group(1)}{scheme + ' ' if scheme else ''}{MASK}"


# An ``extra`` field or map key named like this holds a secret whatever its value.
_SECRET_KEY = re.compile(
    r"(?i)(?:^|[_-])(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|authorization)$"
)


def _redact_value(value: Any) -> Any:
    """A JSON-ready copy of an ``extra`` value with every string redacted."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            redact(str(k)): MASK if _SECRET_KEY.search(str(k)) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return redact(str(value))


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so that no handler after it sees a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_edge_agent_redacted", False):
            return True  # already done by another handler's filter
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format must not lose the event
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                setattr(record, key, MASK if _SECRET_KEY.search(key) else _redact_value(value))
        record._edge_agent_redacted = True
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRS and not key.startswith("_")
    }


def _iso_utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _one_line(text: str) -> str:
    if "\n" in text or "\r" in text:
        return text.replace("\r", "\\r").replace("\n", "\\n")
    return text


class TextFormatter(logging.Formatter):
    """``[<N>]`` or ``TIMESTAMP``, then ``LEVEL logger: message key=value ...``."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        parts = [record.getMessage()]
        for key, value in _extras(record).items():
            if _SECRET_KEY.search(key):
                value = MASK
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            parts.append(f"{key}={json.dumps(text) if not text or ' ' in text else text}")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        body = _one_line(redact(" ".join(parts)))
        if self.journal:
            prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
            line = f"<{prio}>{record.levelname} {record.name}: {body}"
        else:
            line = f"{_iso_utc(record.created)} {record.levelname} {record.name}: {body}"
        # The logger name is not redacted above; a registered secret is nowhere.
        return _redact_registered(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _extras(record).items():
            if key not in event:
                event[key] = MASK if _SECRET_KEY.search(key) else _redact_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            event["exc"] = redact(record.exc_text)
        if record.stack_info:
            event["stack"] = redact(record.stack_info)
        # ensure_ascii keeps the line one line and 7-bit clean. The final pass
        # catches a registered secret that only appears after escaping; it masks
        # inside strings only, so the line stays valid JSON (the key=value
        # patterns already ran on each value, and would not keep it valid).
        return _redact_registered(json.dumps(event, default=str, ensure_ascii=True))


def _is_journal_stream(stream: TextIO) -> bool:
    """True when ``stream`` is the journald socket systemd named in $JOURNAL_STREAM.

    systemd.exec(5): compare device and inode, because a child that inherited the
    variable may have had its stderr redirected elsewhere.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


_NOISY = ("aiosqlite", "asyncio")


LOG_FILE_MAX_BYTES = 5 * 1024 * 1024  # a log file (`start`) rotates past this...
LOG_FILE_BACKUPS = 2  # ...keeping this many old ones: 15 MiB at most on the SD card


def setup_logging(
    level: str, fmt: str = "text", *, stream: TextIO | None = None, log_file: str | None = None
) -> None:
    """Configure the root logger for the whole process; safe to call again on reload.

    ``level`` is debug, info, warning or error; ``fmt`` is "text" or "json".
    ``log_file``: write there instead of stderr, rotated by size (LOG_FILE_MAX_BYTES,
    LOG_FILE_BACKUPS old files). Raises ValueError for anything else.
    """
    try:
        levelno = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)") from None
    out = sys.stderr if stream is None else stream
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter(journal=_is_journal_stream(out))
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r} (text or json)")

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_edge_agent", False)]:
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    if log_file is not None:
        from logging.handlers import RotatingFileHandler

        formatter = JsonFormatter() if fmt == "json" else TextFormatter(journal=False)
        handler = RotatingFileHandler(
            log_file,
            maxBytes=LOG_FILE_MAX_BYTES,
            backupCount=LOG_FILE_BACKUPS,
            encoding="utf-8",
        )
    else:
        handler = logging.StreamHandler(out)
    setattr(handler, "_edge_agent", True)  # noqa: B010  (marks the handler as ours)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(levelno)
    # Every handler, ours and any already there (a test harness, a library's),
    # gets the redaction filter: handler filters also see records that propagate
    # up from child loggers, logger filters do not.
    for h in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
    # aiosqlite logs every statement at debug; keep them out unless asked twice.
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(levelno, logging.INFO))


def add_redaction(handler: logging.Handler) -> Callable[[], None]:
    """Attach the redaction filter to a handler added later; returns an undo."""
    flt = RedactingFilter()
    handler.addFilter(flt)
    return lambda: handler.removeFilter(flt)

"""setup_logging formats and the redaction guarantee."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge_agent.logs import forget_secrets, redact, register_secret, setup_logging

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: .*$"
)


@pytest.fixture(autouse=True)
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    filters = {h: list(h.filters) for h in handlers}
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    forget_secrets()
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h, fs in filters.items():
        h.filters[:] = fs
    root.setLevel(level)
    forget_secrets()


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_format_with_timestamps_and_levels() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out)
    log = logging.getLogger("edge_agent.test")
    log.debug("hidden")
    log.info("connected to %s", "broker", extra={"port": 8883, "note": "two words"})
    log.warning("slow")
    lines = _lines(out)
    assert len(lines) == 2
    assert all(TEXT_LINE.match(line) for line in lines), lines
    assert lines[0].endswith('INFO edge_agent.test: connected to broker port=8883 note="two words"')
    assert lines[1].endswith("WARNING edge_agent.test: slow")


def test_reconfigure_replaces_handler_and_level() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", stream=first)
    setup_logging("debug", stream=second)
    logging.getLogger("x").debug("now visible")
    assert first.getvalue() == ""
    assert _lines(second)[0].endswith("DEBUG x: now visible")
    assert logging.getLogger("aiosqlite").getEffectiveLevel() == logging.INFO


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        setup_logging("loud")
    with pytest.raises(ValueError, match="log format"):
        setup_logging("info", "xml")


def test_one_line_per_event_even_with_traceback() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("t").exception("boom\nsecond line")
    lines = _lines(out)
    assert len(lines) == 1
    assert "boom\\nsecond line" in lines[0]
    assert "ZeroDivisionError" in lines[0] and "Traceback" in lines[0]


def test_journald_stream_gets_priority_prefix_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "journal", "w+") as journal:
        st_ = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st_.st_dev}:{st_.st_ino}")
        setup_logging("debug", stream=journal)
        log = logging.getLogger("edge_agent.j")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        journal.flush()
        journal.seek(0)
        lines = journal.read().splitlines()
    assert lines == [
        "<7>DEBUG edge_agent.j: d",
        "<6>INFO edge_agent.j: i",
        "<4>WARNING edge_agent.j: w",
        "<3>ERROR edge_agent.j: e",
        "<2>CRITICAL edge_agent.j: c",
    ]


def test_journal_stream_of_another_fd_keeps_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inherited $JOURNAL_STREAM, but our stderr was redirected (systemd.exec(5)).
    other = os.stat(tmp_path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{other.st_dev}:{other.st_ino}")
    with open(tmp_path / "log", "w+") as f:
        setup_logging("info", stream=f)
        logging.getLogger("t").info("x")
        f.flush()
        f.seek(0)
        assert TEXT_LINE.match(f.read().strip())


def test_json_format() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    before = time.time()
    logging.getLogger("edge_agent.uplink").info(
        "sent %d batches", 3, extra={"seq": 41, "topic": "edge/a/batches", "when": Path("/x")}
    )
    try:
        raise RuntimeError("bad\nthing")
    except RuntimeError:
        logging.getLogger("edge_agent.uplink").error("failed", exc_info=True)
    lines = _lines(out)
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert before - 1 <= first.pop("ts") <= time.time() + 1
    assert first == {
        "level": "info",
        "logger": "edge_agent.uplink",
        "msg": "sent 3 batches",
        "seq": 41,
        "topic": "edge/a/batches",
        "when": "/x",
    }
    assert second["level"] == "error" and second["msg"] == "failed"
    assert "RuntimeError: bad\nthing" in second["exc"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connect password=hunter2 host=x", "connect password=*** host=x"),
        ("upstream_password: 'a b c' ok", "upstream_password: *** ok"),
        ('{"password": "x y", "n": 1}', '{"password": ***, "n": 1}'),
        ("GET /?token=abc&x=1", "GET /?token=***&x=1"),
        ("Authorization: Bearer eyJhbGci.x-y_z", "Authorization: Bearer ***"),
        ("authorization=Basic dXNlcjpwYXNz", "authorization=Basic ***"),
        ("sent header bearer abc123==", "sent header bearer ***"),
        ("url mqtts://bob:pa55@broker:8883/x", "url mqtts://bob:***@broker:8883/x"),
        ('password_file = "/etc/edge-agent/pw"', 'password_file = "/etc/edge-agent/pw"'),
        ("api_key=K1 secret=S2", "api_key=*** secret=***"),
        ("sensors/dev1/temp key=x value=3", "sensors/dev1/temp key=x value=3"),
    ],
)
def test_redact_patterns(text: str, expected: str) -> None:
    assert redact(text) == expected
    # Idempotent: the handler filter and the formatter both redact.
    assert redact(expected) == expected


def _emit_everywhere(secret: str, fmt: str) -> str:
    out = io.StringIO()
    setup_logging("debug", fmt, stream=out)
    log = logging.getLogger("edge_agent.runtime")
    log.info("password is " + secret)
    log.info("args %s and %r", secret, secret)
    log.warning("extra", extra={"cred": secret, "nested": {"a": [secret]}, "token": "t0k"})
    try:
        raise ValueError(f"could not auth with {secret}")
    except ValueError:
        log.exception("failed")
    log.info("stack", stack_info=True, extra={"s": secret})
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_registered_secret_never_reaches_a_line(fmt: str) -> None:
    secret = 'hunter2-"quoted"\\slash-é'
    register_secret(secret + "\n")  # as read from password_file, trailing newline included
    output = _emit_everywhere(secret, fmt)
    assert secret not in output
    assert json.dumps(secret)[1:-1] not in output  # nor its escaped form
    assert "t0k" not in output  # an extra named "token"
    assert output.count("***") >= 6
    if fmt == "json":
        for line in output.splitlines():
            json.loads(line)  # still valid JSON after redaction


def test_other_root_handlers_are_redacted_too() -> None:
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    collector = Collect()
    logging.getLogger().addHandler(collector)
    register_secret("s3cr3t-value")
    setup_logging("info", stream=io.StringIO())
    logging.getLogger("edge_agent.deep.child").info("got %s", "s3cr3t-value")
    assert seen == ["got ***"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret=st.text(min_size=4, max_size=24).filter(lambda s: s.strip() == s),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    fmt=st.sampled_from(["text", "json"]),
)
def test_property_registered_secret_is_masked(
    secret: str, before: str, after: str, fmt: str
) -> None:
    # "*" is the mask's own character: a secret made of it could reappear
    # from adjacent masks, and no real password is "****".
    assume("*" not in secret)
    forget_secrets()
    register_secret(secret)
    out = io.StringIO()
    setup_logging("info", fmt, stream=out)
    logging.getLogger("p").info("%s%s%s", before, secret, after, extra={"v": secret})
    line = out.getvalue()
    assert line.count("\n") == 1
    assert secret not in line
    assert json.dumps(secret)[1:-1] not in line


def test_whole_process_under_a_real_stderr(tmp_path: Path) -> None:
    # The real process path: sys.stderr, no stream argument, a registered secret.
    code = (
        "import logging\n"
        "from edge_agent.logs import setup_logging, register_secret\n"
        "setup_logging('info')\n"
        "register_secret('pw-123456')\n"
        "logging.getLogger('edge_agent').info('using pw-123456')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert TEXT_LINE.match(proc.stderr.strip())
    assert proc.stderr.strip().endswith("INFO edge_agent: using ***")


def test_patterns_through_handler_are_masked_once() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out)
    logging.getLogger("h").info("sending Authorization: Bearer abc.def to %s", "x")
    assert _lines(out)[0].endswith("INFO h: sending Authorization: Bearer *** to x")

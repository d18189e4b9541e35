"""The health endpoint's HTTP/1.1 wire format (edge_agent.health.http) on its own: the
request head parsed strictly, responses built; no sockets."""

from __future__ import annotations

import json

import pytest

from edge_agent.health.http import (
    JSON,
    Reject,
    check_request_line,
    end_of_head,
    error_response,
    http_response,
    json_body,
    parse_head,
)


def _status(head: bytes) -> int:
    with pytest.raises(Reject) as exc:
        parse_head(head)
    return exc.value.status


def test_a_request_head_gives_method_path_and_credentials() -> None:
    req = parse_head(b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n")
    assert (req.method, req.path, req.authorization) == ("GET", "/healthz", "Bearer t")
    assert parse_head(b"HEAD http://pi:8080/metrics#f HTTP/1.0\n\n").path == "/metrics"
    assert parse_head(b"GET * HTTP/1.1\r\n\r\n").path == "*"  # no route matches it


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"GET /healthz\r\n\r\n", 400),
        (b"GET /a HTTP/1.1\r\nAuthorization: a\r\nauthorization: b\r\n\r\n", 400),
        (b"GET /a HTTP/1.1\r\nHost : a\r\n\r\n", 400),  # a space before the colon
        (b"GET /a HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),  # obsolete line folding
        (b"GET /a HTTP/1.1\r\n" + b"X: a\r\n" * 101 + b"\r\n", 431),
    ],
)
def test_a_bad_head_is_refused_with_its_status(head: bytes, status: int) -> None:
    assert _status(head) == status


def test_the_request_line_is_refused_at_its_first_impossible_byte() -> None:
    assert check_request_line(bytearray(b"GET /hea")) is False  # not complete yet
    assert check_request_line(bytearray(b"GET /healthz HTTP/1.1\r\nHo")) is True
    with pytest.raises(Reject):
        check_request_line(bytearray(b"\x16\x03\x01"))  # a TLS hello


def test_the_end_of_the_head_with_crlf_or_bare_lf() -> None:
    assert end_of_head(bytearray(b"GET / HTTP/1.1\r\n\r\nbody"), 0) == 18
    assert end_of_head(bytearray(b"GET / HTTP/1.1\n\nbody"), 0) == 16
    assert end_of_head(bytearray(b"GET / HTTP/1.1\r\nHost: a\r\n"), 0) == -1


def test_responses_close_the_connection_and_carry_no_nan() -> None:
    raw = http_response(200, b"{}", JSON, (("Allow", "GET"),))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: application/json",
        b"Content-Length: 2",
        b"Cache-Control: no-store",
        b"Allow: GET",
        b"Connection: close",
    ]
    assert body == b"{}"
    assert http_response(200, b"{}", JSON, head_only=True).endswith(b"\r\n\r\n")
    assert json.loads(json_body({"a": float("nan"), "b": [float("inf"), 1.5]})) == {
        "a": None,
        "b": [None, 1.5],
    }
    err = error_response(404)
    assert err.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert err.endswith(b'{"error":"Not Found"}')

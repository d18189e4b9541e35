"""A payload's bytes -> exactly one JSON value or one CBOR data item, for decode.py.

JSON goes to orjson, then to the C scanner that `json.loads` itself uses, so the
accepted language is exactly `json.loads`'s; CBOR goes through one reused cbor2
decoder that rejects non-string map keys, nests at most 64 levels and never
evaluates the tags readings do not need (NEUTRALIZED_TAGS). Both raise on anything
else, trailing data included; the payload decoder turns that into a reject reason.
"""

from __future__ import annotations

import io
import json
import json.scanner
from collections.abc import Callable
from typing import Any, Final

import cbor2

__all__ = ["NEUTRALIZED_TAGS", "UNSUPPORTED_TAG"]

_JSON_WS: Final = " \t\n\r"  # RFC 8259 whitespace, exactly what json.decoder.WHITESPACE allows
# The scanner json.loads runs underneath (the C one when available); calling it
# directly skips detect_encoding() and two regex matches: ~2.5x faster on small payloads.
_json_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_json_loads = json.loads


try:  # a hard dependency; the stdlib path alone still works without it
    import orjson

    _orjson_loads: Callable[[bytes], Any] | None = orjson.loads
    _OrjsonError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover
    _orjson_loads, _OrjsonError = None, ValueError


def _parse_json(payload: bytes) -> Any:
    """json.loads(payload), exactly, but faster; raises on anything json.loads refuses.

    orjson first (2-5x faster than the stdlib scanner on readings, bench/bench_json.py;
    wheels for aarch64 and armv7l). It is stricter than json.loads, never looser, so
    what it refuses goes to the stdlib path and the accepted language stays exactly
    json.loads's: NaN/Infinity tokens, lone surrogate escapes, a BOM, numbers beyond
    a double. One difference that does not change a reading: integers above 2**64
    come back as the float they convert to.
    """
    if _orjson_loads is not None:
        try:
            return _orjson_loads(payload)
        except _OrjsonError:
            pass
    return _parse_json_stdlib(payload)


def _parse_json_stdlib(payload: bytes) -> Any:
    b0 = payload[0]
    if b0 == 0 or b0 >= 0xEF or (len(payload) > 1 and payload[1] == 0):
        # A BOM or NUL bytes: json.detect_encoding may pick UTF-8-sig/16/32; let it.
        return _json_loads(payload)
    s = payload.decode("utf-8", "surrogatepass")  # json.loads(bytes) decodes so too
    idx = 0
    if s[0] in _JSON_WS:
        idx = len(s) - len(s.lstrip(_JSON_WS))
    obj, end = _json_scan(s, idx)  # StopIteration when nothing parses at idx
    if end != len(s) and len(s.rstrip(_JSON_WS)) != end:
        raise ValueError("extra data after the JSON value")
    return obj


class _UnsupportedTag:
    """What a CBOR tag readings never need decodes to: not a number, not a timestamp."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unsupported CBOR tag>"


UNSUPPORTED_TAG: Final = _UnsupportedTag()
# Tags cbor2 gives a meaning to, other than the ones readings use: 0/1 (date/time,
# for `ts`), 2/3 (bignums), 25/256 (string references) and 28/29 (shared values),
# 55799 (self-described CBOR). Their decoders can cost hundreds of milliseconds per
# 60 KB payload (a regular expression compiled, a MIME message parsed, a decimal or
# bigfloat with a huge exponent computed) and would stall the event loop; here they
# yield UNSUPPORTED_TAG without that work: the content is read as plain CBOR (linear
# in its size) and nothing is computed from it. Tags cbor2 does not know stay CBORTag
# objects (content read the same way). tests/ingest/test_decode.py checks this list against
# every tag cbor2 decodes itself, so a cbor2 release that adds one fails the test.
NEUTRALIZED_TAGS: Final = frozenset({4, 5, 30, 35, 36, 37, 52, 54, 100, 258, 260, 261, 1004})


def _unsupported_tag(_decoder: Any, _value: Any) -> _UnsupportedTag:
    return UNSUPPORTED_TAG


def _new_cbor_decoder() -> cbor2.CBORDecoder:
    if not hasattr(cbor2.CBORDecoder, "strict_hashable_types"):
        # cbor2 5 (armv7l, where PyPI has no cbor2 6 wheel): the same rules in Python.
        from edge_agent.ingest import _cbor5

        return _cbor5.new_decoder(64, UNSUPPORTED_TAG)  # type: ignore[no-any-return]
    # strict_hashable_types: integer/tuple map keys would allow hash-collision floods.
    return cbor2.CBORDecoder(
        io.BytesIO(b""),
        strict_hashable_types=True,
        max_depth=64,
        semantic_decoders=dict.fromkeys(NEUTRALIZED_TAGS, _unsupported_tag),
    )


def _parse_cbor(decoder: cbor2.CBORDecoder, payload: bytes) -> Any:
    """Exactly one CBOR data item; cbor2.loads would ignore trailing bytes.

    The decoder is reused (building one costs more than the decode): cbor2 resets
    its shared-value and string-reference tables on every decode(), also after an
    error, so nothing leaks from one message into the next (tested).
    """
    fp = io.BytesIO(payload)
    decoder.fp = fp
    obj = decoder.decode()
    if fp.tell() != len(payload):
        raise ValueError("extra data after the CBOR item")
    return obj

"""The ingest CBOR decoder on cbor2 5.x: 32-bit ARM (armv7l) without a cbor2 6 wheel.

cbor2 6 is a Rust extension: PyPI has no armv7l wheel of it and its source build
needs a Rust toolchain; cbor2 5.9 comes as a pure-Python wheel that installs
anywhere (README, "Raspberry Pi: arm64 and armhf"). cbor2 5 lacks the 6.2 decoder
options the ingest path relies on (`strict_hashable_types`, `semantic_decoders`),
so this subclass of 5.x's pure-Python decoder gives the same decisions:

- a map key that is not a text or byte string rejects the payload before it is
  inserted (no hash-collision floods through integer or tuple keys);
- every tag cbor2 5 gives a meaning to, other than the ones readings use, yields
  the caller's "unsupported" value after its content was read as plain CBOR (no
  regular expression compiled, no MIME parsed, no decimal computed);
- containers nest at most `max_depth` deep (5.x's own check).

Used only when the installed cbor2 lacks `strict_hashable_types`: `.ci/lowest`
(cbor2 5.9, the floor) runs the decoding tests against it on x86_64, and
`scripts/arm-check armhf` runs them on armv7l. It leans on
5.x's private attributes (`_decode_length`, `_immutable`, `_share_index`, ...),
which is why pyproject pins cbor2 5 to >= 5.9 and the class checks they exist.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable
from typing import Any

# Tags whose decoders readings need (date/time for ts, bignums, string references,
# shared values, self-described CBOR); cbor2 decodes these itself.
NEEDED_TAGS = frozenset({0, 1, 2, 3, 25, 28, 29, 256, 55799})


def new_decoder(max_depth: int, unsupported: object) -> Any:
    """A cbor2 5.x decoder with the ingest path's rules (see the module docstring)."""
    d5: Any = importlib.import_module("cbor2._decoder")  # 5.x's pure-Python decoder

    base: Any = d5.CBORDecoder
    major: dict[int, Callable[[Any, int], Any]] = dict(d5.major_decoders)
    semantic: dict[int, Callable[[Any], Any]] = {
        tag: fn for tag, fn in d5.semantic_decoders.items() if tag in NEEDED_TAGS
    }
    neutralized = frozenset(d5.semantic_decoders) - NEEDED_TAGS
    break_marker = d5.break_marker
    CBORTag = d5.CBORTag
    CBORDecodeError = d5.CBORDecodeError
    CBORDecodeValueError = d5.CBORDecodeValueError
    FrozenDict = d5.FrozenDict

    class StrictDecoder(base):  # type: ignore[misc]
        _decode_depth: int
        _max_depth: int
        _immutable: bool
        _share_index: int | None
        _shareables: list[Any]
        _stringref_namespace: list[Any] | None

        def decode(self, immutable: bool = False, unshared: bool = False) -> Any:
            # cbor2 5.9's CBORDecoder.decode, dispatching through this class's table.
            if self._decode_depth > self._max_depth:
                raise CBORDecodeError(
                    f"maximum container nesting depth ({self._max_depth}) exceeded"
                )
            if immutable:
                old_immutable = self._immutable
                self._immutable = True
            if unshared:
                old_index = self._share_index
                self._share_index = None
            self._decode_depth += 1
            try:
                initial_byte = self.read(1)[0]
                return major[initial_byte >> 5](self, initial_byte & 31)
            finally:
                if immutable:
                    self._immutable = old_immutable
                if unshared:
                    self._share_index = old_index
                self._decode_depth -= 1
                if self._decode_depth == 0:
                    # Nothing outlives a message, also after an error half-way through
                    # a namespace (5.9 leaves the string references of a failed one).
                    self._shareables.clear()
                    self._share_index = None
                    self._stringref_namespace = None

        def decode_map(self, subtype: int) -> Any:
            length = self._decode_length(subtype, allow_indefinite=True)
            dictionary: dict[Any, Any] = {}
            self.set_shareable(dictionary)
            i = 0
            while length is None or i < length:
                key = self.decode(immutable=True, unshared=True)
                if length is None and key is break_marker:
                    break
                if type(key) is not str and type(key) is not bytes:
                    raise CBORDecodeValueError(
                        f"map key of type {type(key).__name__} (only text and byte strings)"
                    )
                dictionary[key] = self.decode(unshared=True)
                i += 1
            if self._immutable:
                frozen = FrozenDict(dictionary)
                self.set_shareable(dictionary)
                return frozen
            return dictionary

        def decode_semantic(self, subtype: int) -> Any:
            tagnum = self._decode_length(subtype)
            if tagnum in neutralized:
                self.decode(unshared=True)  # read as plain CBOR, nothing computed from it
                return unsupported
            semantic_decoder = semantic.get(tagnum)
            if semantic_decoder is not None:
                return semantic_decoder(self)
            tag = CBORTag(tagnum, None)
            self.set_shareable(tag)
            tag.value = self.decode(unshared=True)
            return self.set_shareable(tag)

    major[5] = StrictDecoder.decode_map
    major[6] = StrictDecoder.decode_semantic
    dec = StrictDecoder(io.BytesIO(b""), max_depth=max_depth)
    private = ("_decode_depth", "_max_depth", "_immutable", "_share_index", "_shareables")
    for attr in (*private, "_stringref_namespace"):
        if not hasattr(dec, attr):
            raise ImportError(f"cbor2 {d5.__name__}: no {attr}; edge-agent needs cbor2 >= 5.9")
    return dec

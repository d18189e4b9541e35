"""Custom decoders: user code that a pipeline's `format` names, "package.module:function"
or an entry point in group `edge_agent.decoders` (README, "Custom decoders").

The config resolves the name when it is loaded, so a typo is refused with its line;
the pipeline's `PayloadDecoder` (ingest/decode.py) calls what it resolves to.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, Final

from edge_agent.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "CustomDecoder", "resolve_custom_decoder"]

ENTRY_POINT_GROUP: Final = "edge_agent.decoders"

CustomDecoder = Callable[[str, bytes], Iterable[Any]]


def resolve_custom_decoder(spec: str) -> CustomDecoder:
    """Load "package.module:function" or an entry point in group edge_agent.decoders."""
    try:
        if ":" in spec:
            module_name, _, attr = spec.partition(":")
            if not module_name or not attr:
                raise ValueError("expected 'package.module:function'")
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        else:
            # here, not at the top: importlib.metadata costs ~9 ms and ~4 MiB at start,
            # and only an entry-point decoder needs it
            from importlib.metadata import entry_points

            found = entry_points(group=ENTRY_POINT_GROUP, name=spec)
            if not found:
                raise LookupError(
                    f"not 'json', 'cbor', 'auto', 'module:function' or an entry point "
                    f"in group {ENTRY_POINT_GROUP!r}"
                )
            obj = next(iter(found)).load()
    except Exception as exc:  # an import runs arbitrary code; whatever it raises, say so
        raise ConfigError(
            f"cannot load custom decoder {spec!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(obj):
        raise ConfigError(f"custom decoder {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]

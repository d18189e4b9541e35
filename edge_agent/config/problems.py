"""How a config problem is said: `FILE:LINE: section.key: problem`, in file order.

`_Problems` collects the problems of one document: a key's line (from
`positions.KeyScanner`), an environment override named by its variable, the
pipeline a key belongs to, and of two keys that disagree, the one set later.
"""

from __future__ import annotations

import json
from typing import Any

from edge_agent.config.positions import dotted
from edge_agent.config.schema import _ENV_LINE


def _suggest(word: str, options: list[str]) -> str:
    import difflib  # only on the error path

    close = difflib.get_close_matches(word, options, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


class _Problems:
    """The problems found in one document (`doc`, read from `name`, its keys' lines in
    `locs`), each placed and worded; `env_origin` names the variable of a key set from
    the environment. `errors` holds (line, message) pairs, sorted by the caller."""

    def __init__(self, doc: dict[str, Any], name: str, locs: dict[tuple[Any, ...], int]) -> None:
        self.doc = doc
        self.name = name
        self.locs = locs
        self.env_origin: dict[tuple[str, str], str] = {}
        self.errors: list[tuple[int, str]] = []

    def order(self, path: tuple[Any, ...]) -> int:
        """Where a key was set: its line, after the file for overrides, -1 if defaulted."""
        if path[:2] in self.env_origin:
            return _ENV_LINE
        return self.locs.get(path, -1)

    def line(self, path: tuple[Any, ...]) -> int:
        """The key's line, else its nearest enclosing table's header line, else 1."""
        while path:
            if path in self.locs:
                return self.locs[path]
            path = path[:-1]
        return 1

    def error(self, path: tuple[Any, ...], problem: str, at: tuple[Any, ...] | None = None) -> None:
        """Report `problem` for key `path`; `at` is a more precise place (an array element)."""
        problem += self.pipeline_name(path)
        var = self.env_origin.get(path[:2]) if len(path) == 2 else None
        if var is not None:
            self.errors.append((_ENV_LINE, f"{self.name}: {var}: {dotted(path)}: {problem}"))
            return
        line = self.line(at or path)
        self.errors.append((line, f"{self.name}:{line}: {dotted(path)}: {problem}"))

    def pipeline_name(self, path: tuple[Any, ...]) -> str:
        """` (in pipeline "climate")` for a key of a named pipeline: `pipeline[3]` alone
        makes the reader count tables."""
        if len(path) < 3 or path[0] != "pipeline" or path[2] == "name":
            return ""
        tables = self.doc.get("pipeline")
        n = path[1]
        if not isinstance(tables, list) or not isinstance(n, int) or not 0 <= n < len(tables):
            return ""
        name = tables[n].get("name") if isinstance(tables[n], dict) else None
        return f" (in pipeline {json.dumps(name)})" if isinstance(name, str) and name else ""

    def conflict(self, a: tuple[Any, ...], b: tuple[Any, ...], problem: str) -> None:
        """Two keys disagree: name whichever was set later (SPEC 1)."""
        later, other = (a, b) if self.order(a) >= self.order(b) else (b, a)
        where = self.order(other)
        if where == _ENV_LINE:
            problem += f" (with {dotted(other)} from {self.env_origin[other[:2]]})"
        elif where >= 0:
            problem += f" (with {dotted(other)} on line {where})"
        else:
            problem += f" (with {dotted(other)})"
        self.error(later, problem)

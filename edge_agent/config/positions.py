"""Where keys sit in a TOML text, and tomllib's syntax errors as `FILE:LINE: problem`.

tomllib gives no positions; `KeyScanner` finds each key's line so every error can
name it. Shared by the agent's and the firmware bridge's config loaders."""

from __future__ import annotations

import json
import re
from typing import Any

# --------------------------------------------------------------------------- syntax errors

_TOML_AT = re.compile(r"^(.*?) \(at (?:line (\d+), column (\d+)|end of document)\)$", re.S)


def syntax_error(
    name: str, text: str, msg: str, dups: list[tuple[tuple[Any, ...], int, int]]
) -> str:
    """tomllib's message as `FILE:LINE: problem`; a duplicate key gets named."""
    m = _TOML_AT.match(msg)
    problem, line = msg, 0
    if m:
        problem = m.group(1)
        if m.group(2):
            line = int(m.group(2))
            problem = f"{problem} (column {m.group(3)})"
        else:
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
            problem = f"{problem} (at end of file)"
    if problem.startswith(("Cannot overwrite", "Cannot declare", "Cannot mutate")) and dups:
        # tomllib reports the line where it noticed; our scan knows which key it was.
        near = [d for d in dups if d[1] <= line] or dups
        path, at, first = near[-1]
        what = "section declared" if problem.startswith("Cannot declare") else "key defined"
        return f"{name}:{at}: {dotted(path)}: {what} twice (first on line {first})"
    problem = problem[:1].lower() + problem[1:]
    return f"{name}:{line}: {problem}" if line else f"{name}: {problem}"


# --------------------------------------------------------------------------- line scanner

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_KEY_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class KeyScanner:
    """Maps each key path to the line it is defined on, since tomllib gives no positions.

    Paths are tuples of keys, with an int for array-of-table and array elements:
    `("pipeline", 1, "size")`. A table's path maps to its header line (or, for a table
    made by a dotted key or inline table, to that line). Run it only on text tomllib
    accepts (or to name a duplicate); on anything odd it stops and keeps what it has.
    """

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.locs: dict[tuple[Any, ...], int] = {}
        self.values: set[tuple[Any, ...]] = set()
        self.headers: set[tuple[Any, ...]] = set()
        self.dups: list[tuple[tuple[Any, ...], int, int]] = []
        self.aot: dict[tuple[Any, ...], int] = {}

    def run(self) -> tuple[dict[tuple[Any, ...], int], list[tuple[tuple[Any, ...], int, int]]]:
        table: tuple[Any, ...] = ()
        try:
            while True:
                self._skip(newlines=True)
                if self.i >= len(self.s):
                    break
                if self.s[self.i] == "[":
                    table = self._header()
                else:
                    self._keyval(table)
        except (IndexError, ValueError, RecursionError):
            pass  # only ever on text tomllib rejects: keep the positions found so far
        return self.locs, self.dups

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _skip(self, newlines: bool) -> None:
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in " \t":
                self.i += 1
            elif c == "#":
                while self.i < len(s) and s[self.i] != "\n":
                    self.i += 1
            elif newlines and c in "\r\n":
                self.line += c == "\n"
                self.i += 1
            else:
                break

    def _header(self) -> tuple[Any, ...]:
        line = self.line
        self.i += 1
        is_array = self._peek() == "["
        if is_array:
            self.i += 1
        keys = self._keys()
        if self._peek() != "]":
            raise ValueError("bad header")
        self.i += 2 if is_array else 1
        path: tuple[Any, ...] = ()
        for j, k in enumerate(keys):
            path += (k,)
            if is_array and j == len(keys) - 1:
                self.locs.setdefault(path, line)
                idx = self.aot.get(path, -1) + 1
                self.aot[path] = idx
                path += (idx,)
            elif path in self.aot:
                path += (self.aot[path],)
        if is_array:
            self.locs[path] = line
        else:
            if path in self.headers or path in self.values:
                self.dups.append((path, line, self.locs.get(path, line)))
            else:
                # an explicit [a] is the best place to point at, even after [a.b] made it
                self.locs[path] = line
            self.headers.add(path)
        return path

    def _keys(self) -> list[str]:
        keys = []
        while True:
            self._skip(newlines=False)
            c = self._peek()
            if c == '"':
                keys.append(self._basic_string())
            elif c == "'":
                end = self.s.index("'", self.i + 1)
                keys.append(self.s[self.i + 1 : end])
                self.i = end + 1
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if m is None:
                    raise ValueError("bad key")
                keys.append(m.group())
                self.i = m.end()
            self._skip(newlines=False)
            if self._peek() != ".":
                return keys
            self.i += 1

    def _basic_string(self) -> str:
        out = []
        self.i += 1
        s = self.s
        while s[self.i] != '"':
            c = s[self.i]
            if c == "\\":
                e = s[self.i + 1]
                if e in "uU":
                    width = 4 if e == "u" else 8
                    out.append(chr(int(s[self.i + 2 : self.i + 2 + width], 16)))
                    self.i += 2 + width
                    continue
                out.append(_KEY_ESCAPES.get(e, e))
                self.i += 2
                continue
            out.append(c)
            self.i += 1
        self.i += 1
        return "".join(out)

    def _keyval(self, table: tuple[Any, ...]) -> None:
        line = self.line
        keys = self._keys()
        if self._peek() != "=":
            raise ValueError("expected =")
        self.i += 1
        self._skip(newlines=False)
        path = table
        for k in keys[:-1]:
            path += (k,)
            self.locs.setdefault(path, line)
        path += (keys[-1],)
        if path in self.values or path in self.headers:
            self.dups.append((path, line, self.locs.get(path, line)))
        else:
            self.locs[path] = line
        self.values.add(path)
        self._value(path)

    def _value(self, path: tuple[Any, ...]) -> None:
        s = self.s
        c = self._peek()
        if s.startswith('"""', self.i) or s.startswith("'''", self.i):
            self._multiline(s[self.i])
        elif c == '"':
            self._basic_string()
        elif c == "'":
            self.i = s.index("'", self.i + 1) + 1
        elif c == "[":
            self.i += 1
            k = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self.i += 1
                    return
                self.locs.setdefault((*path, k), self.line)
                self._value((*path, k))
                k += 1
                self._skip(newlines=True)
                if self._peek() == ",":
                    self.i += 1
        elif c == "{":
            self.i += 1
            while True:
                self._skip(newlines=True)
                if self._peek() == "}":
                    self.i += 1
                    return
                if self._peek() == ",":
                    self.i += 1
                    continue
                self._keyval(path)
        else:
            start = self.i
            while self.i < len(s) and s[self.i] not in ",]}#\r\n":
                self.i += 1
            if self.i == start:
                raise ValueError("empty value")

    def _multiline(self, quote: str) -> None:
        s = self.s
        delim = quote * 3
        self.i += 3
        while not s.startswith(delim, self.i):
            c = s[self.i]
            if c == "\\" and quote == '"':
                self.line += s[self.i + 1] == "\n"
                self.i += 2
                continue
            self.line += c == "\n"
            self.i += 1
        self.i += 3
        # up to two more quotes may end the content: """a"""" is 'a"'
        for _ in range(2):
            if self._peek() == quote:
                self.i += 1


def dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            k = p if _BARE_KEY.fullmatch(p) else json.dumps(p, ensure_ascii=False)
            out += f".{k}" if out else k
    return out

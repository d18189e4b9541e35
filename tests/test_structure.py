"""The shape of the code, checked: no import cycles, no paho in the package, and
edge_agent independent of firmware_bridge at run time (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_agent", "firmware_bridge")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in it, functions included)."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name in files and name != mod:
                    out.add(name)
        graph[mod] = out
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles() -> None:
    graph = _imports()
    # a package's __init__ re-exporting its submodules is not a cycle of the code
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not m.startswith(d + ".")}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_paho() -> None:
    # MQTT is edge_agent/mqtt/, our own client; paho-mqtt is a test/bench dependency.
    allowed: set[str] = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                mods = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(m == "paho" or m.startswith("paho.") for m in mods):
                    assert _module(path) in allowed, f"{path} imports paho"


def test_edge_agent_does_not_import_firmware_bridge() -> None:
    graph = _imports()
    for mod, deps in graph.items():
        if mod.startswith("edge_agent") and mod != "edge_agent.cli.demo":
            bad = sorted(d for d in deps if d.startswith("firmware_bridge"))
            assert not bad, f"{mod} imports {bad} (only the demo may)"


# Issue #18: no module over about 400 lines, so each keeps one job a newcomer can name.
# The generated window kernels are the exception (their generator and a test that the
# two agree live beside them).
MAX_MODULE_LINES = 420
GENERATED = {"edge_agent/windows/_kernels.py"}


def test_no_hand_written_module_over_about_400_lines() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
    }
    assert sizes and sizes.keys() >= GENERATED
    big = {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES and m not in GENERATED}
    assert not big, f"split these along a real seam (docs/architecture.md): {big}"


def test_no_asyncio_wait_for() -> None:
    """On Python 3.11 (our floor: Raspberry Pi OS bookworm), `asyncio.wait_for` swallows
    the caller's cancellation when the awaited thing finishes in the same loop turn; the
    bridge's Publisher kept running after close() that way. `async with asyncio.timeout()`
    has no inner task and lets the CancelledError through
    (tests/mqtt/test_cancellation.py shows the race)."""
    found = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr == "wait_for":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"use `async with asyncio.timeout(...)`: {found}"

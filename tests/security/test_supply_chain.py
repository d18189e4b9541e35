"""Issue 13, item 8: what the image ships is pinned: base by digest, dependencies by hash."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile.arm64").read_text()
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)\s*\\?\s*$")
HASH = re.compile(r"^\s*--hash=sha256:([0-9a-f]{64})\s*\\?\s*$")


def _pins(name: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) from a hash-checked requirements file."""
    out: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (ROOT / name).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if m := PIN.match(line):
            current = canonicalize_name(m.group(1))
            out[current] = (m.group(2), [])
        elif (h := HASH.match(line)) and current is not None:
            out[current][1].append(h.group(1))
        else:
            raise AssertionError(f"{name}: not a pinned, hashed line: {line!r}")
    return out


def test_every_base_image_is_pinned_by_digest() -> None:
    args = dict(re.findall(r"(?m)^ARG (\w+)=(\S+)$", DOCKERFILE))
    froms = re.findall(r"(?m)^FROM (.+)$", DOCKERFILE)
    assert froms
    for line in froms:
        image = next(w for w in line.split() if not w.startswith("--"))
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"not pinned by digest: {line}"


def test_image_dependencies_are_pinned_hashed_and_within_pyproject() -> None:
    pins = _pins("requirements-image.txt")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        assert name in pins, f"{dep.name} is a dependency but not pinned for the image"
        version, hashes = pins[name]
        assert hashes, f"{name} has no hash"
        assert dep.specifier.contains(version), f"{name}=={version} is outside {dep}"
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    build_pins = _pins("requirements-build.txt")
    for req in map(Requirement, build):
        name = canonicalize_name(req.name)
        assert name in build_pins and build_pins[name][1], f"build requirement {name} unpinned"
        assert req.specifier.contains(build_pins[name][0])


def test_the_image_installs_only_hash_checked_files() -> None:
    runs = " ".join(re.findall(r"(?ms)^RUN (.+?)(?<!\\)$", DOCKERFILE)).replace("\\\n", " ")
    for name in ("requirements-image.txt", "requirements-build.txt"):
        assert re.search(rf"--require-hashes[^&]*-r {name}", runs), name
    # our own wheel is built without an isolated (unchecked) build environment and
    # installed without an index
    assert "--no-build-isolation" in runs
    for m in re.finditer(r"pip install ([^&]+)", runs):
        assert "--require-hashes" in m.group(1) or "--no-index" in m.group(1), m.group(0)

"""The README's install recipe, run as written: wheel from a checkout, pipx, then the
first commands of a new user (`--version`, `scaffold`, `check`) from the installed copy.

Offline after the first run: the build requirements and the dependencies are kept
as wheels in a wheelhouse (`$TEST_WHEELHOUSE`, else ~/.cache/edge-agent-tests/
wheelhouse) and every pip call runs with `--no-index --find-links` on it. The first
run fills it from PyPI.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
DIST = PYPROJECT["project"]["name"]
WHEEL_PREFIX = re.sub(r"[-_.]+", "_", DIST).lower()

# What a checkout holds that a wheel build reads (tests, bench and the venv stay behind).
_SKIP = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    "tests",
    "bench",
)


def readme_install_block() -> list[str]:
    """The command lines of the README's install recipe, comments stripped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Install on a device", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def the_line(lines: list[str], needle: str) -> str:
    (line,) = [line for line in lines if needle in line]
    return line


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    house = Path(
        os.environ.get("TEST_WHEELHOUSE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "edge-agent-tests"
        / "wheelhouse"
    )
    house.mkdir(parents=True, exist_ok=True)
    # Build requirements, the dependencies, and what pipx puts in its shared venv.
    reqs = [
        *PYPROJECT["build-system"]["requires"],
        *PYPROJECT["project"]["dependencies"],
        "pip",
        "setuptools",
        "wheel",
    ]
    pip = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "-d",
        str(house),
    ]
    offline = subprocess.run(
        [*pip, "--no-index", "--find-links", str(house), *reqs],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if offline.returncode != 0:
        online = subprocess.run([*pip, *reqs], capture_output=True, text=True, timeout=600)
        if online.returncode != 0:
            pytest.fail(
                f"cannot fill the wheelhouse {house} (needs PyPI once):\n{online.stderr[-2000:]}"
            )
    return house


def offline_env(house: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "PIPX_", "VIRTUAL_ENV", "PYTHON", "EDGE_AGENT_"))
    }
    env.update(
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(house),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
        **extra,
    )
    return env


def sh(line: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", line],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"{line}\nexit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def built_wheel(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The README's `pip wheel` line, run in a copy of the checkout."""
    checkout = tmp_path_factory.mktemp("checkout") / "edge-agent"
    shutil.copytree(ROOT, checkout, ignore=_SKIP)
    line = the_line(readme_install_block(), "pip wheel")
    assert "python3 -m pip wheel" in line, line
    (checkout / "dist").mkdir()
    (checkout / "dist" / "edge_agent_mqtt-0.0.1-py3-none-any.whl").touch()  # an older build
    # -v shows the build backend's own output, where setuptools prints its warnings.
    line = line.replace("python3 -m pip", f"{shlex.quote(sys.executable)} -m pip", 1) + " -v"
    out = sh(line, checkout, offline_env(wheelhouse))
    assert "Deprecat" not in out and "deprecat" not in out, out[-4000:]
    wheels = [p.name for p in (checkout / "dist").iterdir()]
    assert wheels == [f"{WHEEL_PREFIX}-{VERSION}-py3-none-any.whl"], wheels
    yield checkout


def first_commands(bin_dir: Path, home: Path, env: dict[str, str]) -> None:
    """`edge-agent --version`, `scaffold`, `check` as the README has them, /etc moved to home."""
    etc = home / "etc" / "edge-agent"
    env = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}  # not the test venv's edge-agent
    ran = []
    for line in readme_install_block():
        words = line.removeprefix("sudo ").split()
        if words[0] != "edge-agent" or words[1] not in ("--version", "scaffold", "check"):
            continue
        out = sh(line.removeprefix("sudo ").replace("/etc/edge-agent", str(etc)), home, env)
        ran.append(words[1])
        if words[1] == "--version":
            assert out.strip() == f"edge-agent {VERSION}"
    assert ran == ["--version", "scaffold", "check"]
    # The unit scaffold wrote starts the installed edge-agent, not this checkout's.
    unit = (etc / "edge-agent.service").read_text()
    ((program_path, config_path),) = re.findall(r"^ExecStart=(\S+) run -c (\S+)$", unit, re.M)
    assert config_path == str(etc / "agent.toml")
    program = Path(program_path)
    assert program.is_file() and os.access(program, os.X_OK), program
    assert str(ROOT) not in unit
    where = subprocess.run(
        [program.parent / "python", "-c", "import edge_agent; print(edge_agent.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(program.parent.parent)), where.stdout  # the installed copy


def test_readme_recipe_installs_the_wheel_with_pipx_and_runs(
    built_wheel: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    if shutil.which("pipx") is None:
        pytest.fail("pipx is not installed: run .ci/setup or apt-get install pipx")
    line = the_line(readme_install_block(), "pipx install")
    assert line.startswith("sudo env PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx install")
    pipx_home, bin_dir = tmp_path / "opt" / "pipx", tmp_path / "usr" / "local" / "bin"
    line = (
        line.removeprefix("sudo ")
        .replace("/opt/pipx", str(pipx_home))
        .replace("/usr/local/bin", str(bin_dir))
    )
    env = offline_env(wheelhouse, HOME=str(tmp_path))
    sh(line, built_wheel, env)
    assert (bin_dir / "edge-agent").exists() and (bin_dir / "firmware-bridge").exists()
    first_commands(bin_dir, tmp_path, offline_env(wheelhouse, HOME=str(tmp_path)))
    assert str(pipx_home / "venvs") in (tmp_path / "etc/edge-agent/edge-agent.service").read_text()


def test_readme_venv_alternative_installs_the_wheel_and_runs(
    built_wheel: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    text = (ROOT / "README.md").read_text()
    steps = re.findall(
        r"`(sudo [^`]*(?:venv|/opt/edge-agent/bin/pip|ln -s)[^`]*)`", text.replace("\n", " ")
    )
    assert len(steps) == 3, steps
    opt, bin_dir = tmp_path / "opt" / "edge-agent", tmp_path / "usr" / "local" / "bin"
    bin_dir.mkdir(parents=True)
    env = offline_env(wheelhouse, HOME=str(tmp_path))
    for step in steps:
        # python3: the interpreter this test venv was made from (it has venv and ensurepip).
        base = getattr(sys, "_base_executable", sys.executable)
        step = (
            step.removeprefix("sudo ")
            .replace("python3", shlex.quote(base), 1)
            .replace("/opt/edge-agent", str(opt))
            .replace("/usr/local/bin", str(bin_dir))
        )
        sh(step, built_wheel, env)
    first_commands(bin_dir, tmp_path, env)

"""Packaging: the systemd units (systemd-analyze verify/security) and Dockerfile.arm64."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
TEMPLATE = ROOT / "edge_agent" / "cli" / "templates" / "edge-agent.service"
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)

# The units name the README's install (pipx links the commands into /usr/local/bin);
# `verify` needs an ExecStart that exists here.
SHIPPED_BINARIES = {
    "/usr/local/bin/edge-agent": f"{sys.executable} -m edge_agent",
    "/usr/local/bin/firmware-bridge": f"{sys.executable} -m firmware_bridge",
}

# (shipped file, name to verify it under: a template unit loads as an instance)
UNITS = [
    ("edge-agent.service", "edge-agent.service"),
    ("firmware-bridge.service", "firmware-bridge.service"),
    ("firmware-bridge@.service", "firmware-bridge@ttyACM0.service"),
]


def parse_unit(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in order; comments and blank lines dropped."""
    directives: dict[tuple[str, str], list[str]] = defaultdict(list)
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        directives[(section, key.strip())].append(value.strip())
    return dict(directives)


def render_template(exec_: str, config_path: str, state_dir: str) -> str:
    """What `edge-agent scaffold` does: plain placeholder replacement, no str.format."""
    text = TEMPLATE.read_text()
    for name, value in (("exec", exec_), ("config_path", config_path), ("state_dir", state_dir)):
        text = text.replace("{{" + name + "}}", value)
    return text


def runnable(text: str) -> str:
    for shipped, here in SHIPPED_BINARIES.items():
        text = text.replace(shipped, here)
    return text


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0", "PATH": "/usr/bin:/bin"},
    )


def check_verify(unit: Path) -> None:
    proc = analyze("verify", str(unit))
    # verify exits 0 even for unknown keys and unparsable values: it only warns.
    # Any message about our unit is a defect.
    complaints = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if unit.name in line or str(unit.parent) in line
    ]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


def exposure(unit: Path) -> float:
    # --threshold is on the 0..100 scale behind the printed 0.0..10.0 score.
    proc = analyze("security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    score = float(match.group(1))
    assert proc.returncode == 0, f"{unit.name}: exposure {score} > {MAX_EXPOSURE}\n{proc.stdout}"
    return score


@needs_analyze
@pytest.mark.parametrize(("shipped", "as_name"), UNITS)
def test_shipped_unit_verifies_and_is_hardened(shipped: str, as_name: str, tmp_path: Path) -> None:
    unit = tmp_path / as_name
    unit.write_text(runnable((SYSTEMD / shipped).read_text()))
    check_verify(unit)
    assert exposure(unit) <= MAX_EXPOSURE


@needs_analyze
def test_scaffold_template_renders_verifies_and_is_hardened(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    text = render_template(f"{sys.executable} -m edge_agent", str(config), "/var/lib/edge-agent")
    assert "{{" not in text and "}}" not in text
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text)
    check_verify(unit)
    assert exposure(unit) <= MAX_EXPOSURE
    assert parse_unit(text)[("Service", "ExecStart")] == [
        f"{sys.executable} -m edge_agent run -c {config}"
    ]


def test_template_matches_shipped_unit() -> None:
    # Two files, one unit: rendered with the shipped paths they must not drift.
    rendered = render_template(
        "/usr/local/bin/edge-agent", "/etc/edge-agent/agent.toml", "/var/lib/edge-agent"
    )
    assert parse_unit(rendered) == parse_unit((SYSTEMD / "edge-agent.service").read_text())


def test_edge_agent_unit_contract() -> None:
    d = parse_unit((SYSTEMD / "edge-agent.service").read_text())

    def one(section: str, key: str) -> str:
        values = d[(section, key)]
        assert len(values) == 1, (key, values)
        return values[0]

    # The runtime speaks sd_notify (edge_agent.sdnotify): READY, WATCHDOG, RELOADING.
    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    assert one("Service", "WatchdogSec") == "30"
    assert one("Service", "ExecStart").endswith(" run -c /etc/edge-agent/agent.toml")
    assert one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Service", "Restart") == "on-failure"
    assert one("Service", "DynamicUser") == "yes"
    assert one("Service", "StateDirectory") == "edge-agent"  # = agent.state_dir default
    assert one("Service", "UMask") == "0077"
    # psutil reads /proc/stat and /proc/meminfo for /healthz "system": ProcSubset=pid
    # would hide them, and PrivateNetwork would cut MQTT.
    assert d.get(("Service", "ProcSubset"), ["all"]) == ["all"]
    assert ("Service", "PrivateNetwork") not in d
    assert set(one("Service", "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    assert int(one("Unit", "StartLimitBurst")) > 1
    # The graceful stop must fit between SIGTERM and SIGKILL.
    assert int(one("Service", "TimeoutStopSec")) >= 30


def test_bridge_instance_unit_reaches_only_its_device() -> None:
    d = parse_unit((SYSTEMD / "firmware-bridge@.service").read_text())
    assert d[("Service", "DeviceAllow")] == ["/dev/%I rw"]
    assert d[("Service", "DevicePolicy")] == ["closed"]
    assert d[("Service", "SupplementaryGroups")] == ["dialout"]
    assert d[("Unit", "BindsTo")] == ["dev-%i.device"]
    assert (
        "firmware-bridge run -c /etc/edge-agent/firmware-bridge-%i.toml"
        in (d[("Service", "ExecStart")][0])
    )


@needs_analyze
def test_checks_catch_a_weakened_or_broken_unit(tmp_path: Path) -> None:
    # The two checks above must be able to fail: a typo and a stripped sandbox.
    text = runnable((SYSTEMD / "edge-agent.service").read_text())
    typo = tmp_path / "typo.service"
    typo.write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    with pytest.raises(AssertionError, match="restart specifier"):
        check_verify(typo)
    weak = tmp_path / "weak.service"
    weak.write_text(
        "\n".join(
            line
            for line in text.splitlines()
            if not line.startswith(("Protect", "Private", "SystemCall", "Restrict", "Capab"))
        )
    )
    with pytest.raises(AssertionError, match="exposure"):
        exposure(weak)


# ---- Dockerfile.arm64 (no docker engine here: structure and the health mapping) ----

DOCKERFILE = ROOT / "Dockerfile.arm64"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions (NAME, args) grouped by stage, continuations joined, ARGs resolved."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "dangling line continuation"
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        name, _, rest = line.partition(" ")
        name = name.upper()
        if name == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
            continue
        if name == "FROM":
            for key, value in args.items():
                rest = rest.replace("${" + key + "}", value).replace("$" + key, value)
            stages.append([])
        assert stages, f"{name} before the first FROM"
        stages[-1].append((name, rest.strip()))
    return stages


def test_dockerfile_is_multistage_arm64_python311_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        name, args = stage[0]
        assert name == "FROM"
        assert "--platform=linux/arm64" in args.split()
        assert re.search(r"\bpython:3\.11-slim-bookworm\b", args), args
    assert re.search(r"\bAS build\b", stages[0][0][1], re.IGNORECASE)
    build_runs = " ".join(a for n, a in stages[0] if n == "RUN")
    assert "pip wheel" in build_runs and "venv" in build_runs
    final = stages[-1]
    assert any(n == "COPY" and a.startswith("--from=build ") for n, a in final)
    # The compiler stays in the build stage.
    assert not any(n == "RUN" and "gcc" in a for n, a in final)


def test_dockerfile_runtime_contract() -> None:
    final = dockerfile_stages()[-1]
    by_name: dict[str, list[str]] = defaultdict(list)
    for name, args in final:
        by_name[name].append(args)
    users = by_name["USER"]
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert re.search(rf"useradd .*--uid {re.escape(user)}\b", " ".join(by_name["RUN"])), user
    assert by_name["VOLUME"] == ["/var/lib/edge-agent"]
    assert any("/etc/edge-agent/agent.toml" in a for a in by_name["COPY"])
    assert len(by_name["HEALTHCHECK"]) == 1
    assert "edge-agent health -c /etc/edge-agent/agent.toml" in by_name["HEALTHCHECK"][0]
    assert json.loads(by_name["ENTRYPOINT"][-1]) == [
        "edge-agent",
        "run",
        "-c",
        "/etc/edge-agent/agent.toml",
    ]


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rule, simplified: patterns in order, the last that matches wins."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/")):
            excluded = not negate
    return excluded


def test_dockerfile_copies_only_what_the_context_holds() -> None:
    for stage in dockerfile_stages():
        for name, args in stage:
            if name != "COPY" or args.startswith("--from="):
                continue
            *sources, _dest = args.split()
            for source in sources:
                top = source.rstrip("/").split("/")[0]
                assert not _dockerignore_excludes(top), f"{source} is excluded by .dockerignore"
                # README.md is the lead's; everything else must already be here.
                if top != "README.md":
                    assert (ROOT / top).exists(), source
    assert _dockerignore_excludes(".git") and _dockerignore_excludes("tests")


def test_healthcheck_maps_degraded_to_healthy_and_failing_to_unhealthy(tmp_path: Path) -> None:
    (healthcheck,) = [a for n, a in dockerfile_stages()[-1] if n == "HEALTHCHECK"]
    command = healthcheck.split(" CMD ", 1)[1]
    fake = tmp_path / "edge-agent"
    fake.write_text('#!/bin/sh\necho \'{"status": "x"}\'\nexit "$FAKE_RC"\n')
    fake.chmod(0o755)
    docker_status = {}
    for rc in (0, 1, 2):
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            env={"PATH": f"{tmp_path}:/usr/bin:/bin", "FAKE_RC": str(rc)},
            capture_output=True,
            timeout=10,
        )
        docker_status[rc] = proc.returncode
    # edge-agent health: 0 ok, 1 degraded, 2 failing -> docker: 0 healthy, 1 unhealthy.
    assert docker_status == {0: 0, 1: 0, 2: 1}

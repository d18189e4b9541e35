"""The README's "Install on a device" recipe, run line by line inside the emulated
arm64 Debian root. `ARM_CHECK_STAGE=install scripts/arm-check arm64` runs it
there with the root's own python3; never run it on a real machine.

Every command line of the recipe runs as written, except what the root forces
(each printed where it happens):
- we are root, so a leading `sudo` is dropped;
- `cd edge-agent` is the copy of the checkout in /src;
- prompts (mosquitto_passwd, the agent's password file) get a test password on stdin;
- `sudoedit agent.toml` becomes the edits the README asks for: local.username and
  local.password_file, and the upstream broker, here a second mosquitto on a free
  port standing in for the one a real device sends to;
- systemd does not run in the root: `systemctl restart mosquitto` runs the
  ExecStartPre= and ExecStart= lines of Debian's mosquitto.service, and `systemctl
  enable --now edge-agent` becomes `systemd-analyze verify` of the installed unit
  plus its ExecStart= in the background. systemd's package cannot be configured
  under proot 5.1.0 (its maintainer scripts make proot abort), so its files are
  unpacked without them, enough for systemd-analyze, which runs nothing.
`edge-agent health` must then exit 0. Exit status 0 only if every step worked.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

SRC = Path("/src")
PASSWORD = "arm-check-secret"
started: list[subprocess.Popen[bytes]] = []


def recipe() -> list[str]:
    text = (SRC / "README.md").read_text()
    block = text.split("## Install on a device", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, what: str) -> None:
    deadline = time.monotonic() + 60
    while not port_open(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"arm-pi-install: {what} did not listen on {port}")
        time.sleep(0.5)


def run(cmd: str, note: str = "", stdin: str | None = None) -> None:
    print(f"\n$ {cmd}" + (f"    # {note}" if note else ""), flush=True)
    proc = subprocess.run(["/bin/bash", "-c", cmd], input=stdin.encode() if stdin else None)
    if proc.returncode != 0:
        raise SystemExit(f"arm-pi-install: FAILED (exit {proc.returncode}): {cmd}")


def background(cmd: str, note: str) -> None:
    print(f"\n$ {cmd} &    # {note}", flush=True)
    started.append(subprocess.Popen(shlex.split(cmd)))


def set_keys(path: Path, edits: dict[str, dict[str, str]]) -> None:
    """Set `key = value` in [section]s of a TOML file, keeping its comments."""
    lines = path.read_text().splitlines()
    section, done = "", set()
    for i, line in enumerate(lines):
        m = re.match(r"\s*\[([^\]]+)\]", line)
        if m:
            section = m.group(1).strip()
            continue
        m = re.match(r"(\s*)([A-Za-z_]+)(\s*=\s*)(\"[^\"]*\"|[^#\s]+)(.*)$", line)
        if m and m.group(2) in edits.get(section, {}):
            lines[i] = (
                f"{m.group(1)}{m.group(2)}{m.group(3)}{edits[section][m.group(2)]}{m.group(5)}"
            )
            done.add((section, m.group(2)))
    missing = {(s, k) for s, kv in edits.items() for k in kv} - done
    if missing:
        raise SystemExit(f"arm-pi-install: keys not in the scaffolded config: {sorted(missing)}")
    path.write_text("\n".join(lines) + "\n")


def steps() -> int:
    lines = recipe()
    print("README recipe:\n  " + "\n  ".join(lines), flush=True)
    os.chdir("/root")
    if port_open(1883):
        raise SystemExit(
            "arm-pi-install: 127.0.0.1:1883 is taken on this host (proot shares its network)"
        )
    run("apt-get update -qq", "the root's package lists are not cached")
    upstream_port = free_port()
    for line in lines:
        cmd = re.sub(r"^sudo\s+", "", line)
        if cmd.startswith("cd "):
            os.chdir(SRC)
            print(f"\n$ {line}    # the checkout is /src here", flush=True)
        elif cmd.startswith("sudoedit") or cmd.startswith("editor "):
            path = Path(cmd.split()[-1])
            Path("/tmp/upstream").mkdir(exist_ok=True)
            Path("/tmp/upstream/mosquitto.conf").write_text(
                f"listener {upstream_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            )
            background(
                "mosquitto -c /tmp/upstream/mosquitto.conf",
                "stands in for the upstream broker a real device sends to",
            )
            wait_port(upstream_port, "the upstream mosquitto")
            edits = {
                "local": {
                    "username": '"edge-agent"',
                    "password_file": '"/etc/edge-agent/local.password"',
                },
                "upstream": {"port": str(upstream_port)},
            }
            print(f"\n# {line}: set {edits}", flush=True)
            set_keys(path, edits)
        elif cmd.startswith("mosquitto_passwd"):
            run(cmd, "password typed twice", stdin=f"{PASSWORD}\n{PASSWORD}\n")
        elif "local.password" in cmd and "cat >" in cmd:
            run(cmd, "password typed, then Ctrl-D", stdin=f"{PASSWORD}\n")
        elif cmd == "systemctl restart mosquitto":
            unit = Path("/lib/systemd/system/mosquitto.service").read_text()
            for pre in re.findall(r"^ExecStartPre=(.+)$", unit, re.M):
                run(pre, "mosquitto.service ExecStartPre (no systemd in the root)")
            (start,) = re.findall(r"^ExecStart=(.+)$", unit, re.M)
            background(start, "mosquitto.service ExecStart")
            wait_port(1883, "mosquitto")
        elif "systemctl" in cmd and "enable" in cmd:
            units = sorted(Path("/etc/systemd/system").glob("edge-agent*.service"))
            if not units:
                raise SystemExit("arm-pi-install: no edge-agent unit in /etc/systemd/system")
            unit = units[0]
            if not Path("/usr/bin/systemd-analyze").exists():
                # --keep-directory-symlink: /lib is a symlink to usr/lib (merged /usr);
                # a plain extract would replace it with a directory and break the root.
                run(
                    "mkdir -p /tmp/sd-debs/partial && "
                    "apt-get install -y -qq --download-only -o Dir::Cache::Archives=/tmp/sd-debs "
                    "systemd procps >/dev/null && for deb in /tmp/sd-debs/*.deb; do "
                    'dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C /; done',
                    "systemd's files without its maintainer scripts (see the docstring)",
                )
            run(
                f"systemd-analyze verify {unit}",
                "instead of enable --now: systemd does not run here",
            )
            text = unit.read_text()
            (execstart,) = re.findall(r"^ExecStart=(.+)$", text, re.M)
            state = re.search(r"^StateDirectory=(\S+)", text, re.M)
            if state:
                Path("/var/lib", state.group(1)).mkdir(mode=0o700, parents=True, exist_ok=True)
            background(execstart, "the unit's ExecStart, without systemd's sandbox")
        elif cmd.startswith("edge-agent health"):
            print(f"\n$ {cmd}", flush=True)
            deadline = time.monotonic() + 180
            while True:
                proc = subprocess.run(["/bin/bash", "-c", cmd], capture_output=True, text=True)
                if proc.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(2)
            print(proc.stdout + proc.stderr, flush=True)
            if proc.returncode != 0:
                raise SystemExit(f"arm-pi-install: FAILED: health exit {proc.returncode}")
        else:
            run(cmd)
    print("\narm-pi-install: the README recipe ran end to end; edge-agent health ok", flush=True)
    return 0


def main() -> int:
    try:
        return steps()
    finally:  # proot returns only once every process inside has ended
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())

"""The README's "Install on a device" recipe, run line by line inside the emulated
arm64 Debian root (scripts/arm-check ARCH with EDGE_AGENT_ARM_STAGE=install runs it
there with the root's own python3; never run it on a real machine).

As a Pi owner would, with four differences the root forces, each printed:
- we are root, so `sudo` is dropped (`sudo env X=Y cmd` becomes `env X=Y cmd`);
- `sudoedit` is skipped: the scaffolded defaults (local and upstream broker on
  127.0.0.1:1883) are what the check then runs with;
- systemd does not run inside the root: `systemctl restart mosquitto` starts
  mosquitto as its unit would (`mosquitto -c /etc/mosquitto/mosquitto.conf`),
  and `systemctl enable --now edge-agent` becomes `systemd-analyze verify` of the
  installed unit plus its ExecStart= run in the background (no sandboxing).
  systemd's package cannot be configured under proot 5.1.0 (its postinst makes
  proot abort), so its files are unpacked without maintainer scripts for that;
- `cd edge-agent` is the copy of the checkout in /src.
`edge-agent health` must then exit 0. Exit status 0 only if every line worked.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

SRC = Path("/src")


def recipe() -> list[str]:
    text = (SRC / "README.md").read_text()
    block = text.split("## Install on a device", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run(cmd: str, note: str = "") -> None:
    print(f"\n$ {cmd}" + (f"    # {note}" if note else ""), flush=True)
    rc = subprocess.run(["/bin/bash", "-c", cmd], cwd=Path.cwd()).returncode
    if rc != 0:
        raise SystemExit(f"arm-pi-install: FAILED (exit {rc}): {cmd}")


started: list[subprocess.Popen[bytes]] = []


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


def steps() -> int:
    import os

    lines = recipe()
    print("README recipe:\n  " + "\n  ".join(lines), flush=True)
    os.chdir("/root")
    if any("apt-get install" in line for line in lines):
        run("apt-get update -qq", "the root's package lists are not cached")
    if port_open(1883):
        raise SystemExit("arm-pi-install: 127.0.0.1:1883 is taken on this host (proot shares its network)")
    for line in lines:
        cmd = re.sub(r"^sudo\s+", "", line)
        if cmd.startswith("sudoedit"):
            print(f"\n# skipped: {line}  (the scaffolded defaults are checked as they are)", flush=True)
            continue
        if cmd.startswith("cd "):
            os.chdir(SRC)
            print(f"\n$ {line}    # the checkout is /src here", flush=True)
            continue
        if cmd == "systemctl restart mosquitto":
            cmd = "mosquitto -c /etc/mosquitto/mosquitto.conf"
            print(f"\n$ {cmd} &    # no systemd in the root: as mosquitto.service would", flush=True)
            started.append(subprocess.Popen(shlex.split(cmd)))
            deadline = time.monotonic() + 60
            while not port_open(1883):
                if time.monotonic() > deadline:
                    raise SystemExit("arm-pi-install: mosquitto did not listen on 1883")
                time.sleep(0.5)
            continue
        if "systemctl" in cmd and "enable" in cmd:
            units = list(Path("/etc/systemd/system").glob("edge-agent*.service"))
            if not units:
                raise SystemExit("arm-pi-install: no edge-agent unit in /etc/systemd/system")
            unit = units[0]
            if not Path("/usr/bin/systemd-analyze").exists():
                # systemd's maintainer scripts make proot 5.1.0 abort, so its files
                # (and /bin/kill, which the unit's ExecReload names) are unpacked
                # without them: enough for systemd-analyze, which runs nothing.
                run("apt-get install -y -qq --download-only systemd procps >/dev/null && "
                    "for deb in /var/cache/apt/archives/*.deb; do dpkg-deb -x \"$deb\" /; done",
                    "systemd's files without its maintainer scripts (see the docstring)")
            run(f"SYSTEMD_LOG_LEVEL=notice systemd-analyze verify {unit}",
                "instead of enable --now: systemd does not run here")
            text = unit.read_text()
            (execstart,) = re.findall(r"^ExecStart=(.+)$", text, re.M)
            state = re.search(r"^StateDirectory=(\S+)", text, re.M)
            if state:
                Path("/var/lib", state.group(1)).mkdir(mode=0o700, parents=True, exist_ok=True)
            print(f"\n$ {execstart} &    # the unit's ExecStart, without systemd", flush=True)
            started.append(subprocess.Popen(shlex.split(execstart)))
            continue
        if cmd.startswith("edge-agent health"):
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
            continue
        run(cmd)
    print("\narm-pi-install: the README recipe ran end to end; edge-agent health ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

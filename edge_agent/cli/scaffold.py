"""`edge-agent scaffold DIR`: a commented config, a systemd unit and a broker snippet."""

from __future__ import annotations

import shlex
import sys
from importlib import resources
from pathlib import Path

__all__ = ["scaffold"]

MOSQUITTO_SNIPPET = (
    """\
# mosquitto settings edge-agent relies on for "nothing lost" (written by edge-agent scaffold).
# Install: sudo cp mosquitto-edge-agent.conf /etc/mosquitto/conf.d/edge-agent.conf
#          sudo systemctl restart mosquitto
#
# The agent keeps a persistent session (clean start off, session expiry 7 days)
# and acknowledges a reading only once it is on disk. While it restarts, the broker
# must hold what sensors publish; mosquitto's defaults would drop it.
#
# This file is loaded beside the main /etc/mosquitto/mosquitto.conf (its include_dir),
# so it sets nothing that file already sets once: mosquitto refuses to start on a
# second persistence_location or pid_file. Debian's and Raspberry Pi OS's main file
# sets persistence_location /var/lib/mosquitto/; with another main file, set it there.

# Keep sessions and queued messages across a broker restart or power cut, saved
# every 60 s (and on a clean stop).
persistence true
autosave_interval 60

# Messages held for the agent while it is away or busy. The stock value (1000)
# silently drops QoS 1 messages beyond it, even for a connected subscriber. Size
# it for the longest agent outage you plan for: readings/s x seconds. 0 = no limit.
max_queued_messages 1000000
max_queued_bytes 0

# Let the client's Receive Maximum (edge-agent asks for 8192) set the in-flight
# window: acknowledgements come in groups, after each checkpoint.
max_inflight_messages 0
"""
    + """
# No anonymous clients. Without this, anyone who reaches the broker can read every
# reading, inject fake ones, and take over edge-agent's persistent session by
# connecting with its client id. Create the users BEFORE restarting mosquitto (it
# does not start without its password file):
#   sudo mosquitto_passwd -c /etc/mosquitto/edge-agent.passwd edge-agent
#   sudo mosquitto_passwd /etc/mosquitto/edge-agent.passwd <sensor>   # one per sensor
#   sudo cp mosquitto-edge-agent.acl /etc/mosquitto/edge-agent.acl
#   sudo chown root:mosquitto /etc/mosquitto/edge-agent.passwd /etc/mosquitto/edge-agent.acl
#   sudo chmod 640 /etc/mosquitto/edge-agent.passwd /etc/mosquitto/edge-agent.acl
# then put edge-agent's password in a file only the agent reads, and in agent.toml:
#   [local]
#   username = "edge-agent"
#   password_file = "/etc/edge-agent/local.password"
# (with the systemd unit: LoadCredential=, see the comments in edge-agent.service).
# A sensor with valid credentials could still reuse edge-agent's client id; if every
# sensor has its own user, `use_username_as_clientid true` closes that too.
allow_anonymous false
password_file /etc/mosquitto/edge-agent.passwd
# Who may do what: sensors publish to their own topics, only edge-agent reads them.
acl_file /etc/mosquitto/edge-agent.acl
"""
)

MOSQUITTO_ACL = """\
# mosquitto ACL for edge-agent (written by edge-agent scaffold), for acl_file in
# mosquitto-edge-agent.conf. Anything not granted here is denied.

# edge-agent reads what sensors publish: one line per topic filter of its pipelines.
user edge-agent
topic read sensors/#

# A firmware-bridge publishes for many boards (sensors/<board id>): give it a user
# of its own ([publish] username and password_file in its config) and uncomment:
#user firmware-bridge
#topic write sensors/#

# Every other user (a sensor) may publish below sensors/<its username>/ only, and
# read nothing.
pattern write sensors/%u/#
"""


def _exec_command() -> str:
    venv_bin = Path(sys.executable).parent / "edge-agent"
    if venv_bin.exists():
        return str(venv_bin)
    return f"{shlex.quote(sys.executable)} -m edge_agent"


def scaffold(dir_arg: str) -> int:
    target = Path(dir_arg)
    files = {
        "agent.toml": "agent.toml",
        "edge-agent.service": "edge-agent.service",
        "mosquitto-edge-agent.conf": None,
        "mosquitto-edge-agent.acl": None,
    }
    existing = [str(target / name) for name in files if (target / name).exists()]
    if existing:
        found = (
            f"{existing[0]} exists"
            if len(existing) == 1
            else f"{', '.join(existing[:-1])} and {existing[-1]} exist"
        )
        print(
            f"edge-agent: {found}; wrote none of {', '.join(files)} (move "
            f"{'it' if len(existing) == 1 else 'them'} away, or scaffold into another directory)",
            file=sys.stderr,
        )
        return 1
    templates = resources.files("edge_agent.cli") / "templates"
    config_text = (templates / "agent.toml").read_text(encoding="utf-8")
    config_path = (target / "agent.toml").resolve()
    unit = (templates / "edge-agent.service").read_text(encoding="utf-8")
    unit = (
        unit.replace("{{exec}}", _exec_command())
        .replace("{{config_path}}", str(config_path))
        .replace("{{state_dir}}", "/var/lib/edge-agent")
    )
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / "agent.toml").write_text(config_text, encoding="utf-8")
        (target / "edge-agent.service").write_text(unit, encoding="utf-8")
        (target / "mosquitto-edge-agent.conf").write_text(MOSQUITTO_SNIPPET, encoding="utf-8")
        (target / "mosquitto-edge-agent.acl").write_text(MOSQUITTO_ACL, encoding="utf-8")
    except OSError as exc:
        print(f"edge-agent: cannot write into {target}: {exc.strerror}", file=sys.stderr)
        return 1
    print(
        f"wrote {target / 'agent.toml'}, {target / 'edge-agent.service'}, "
        f"{target / 'mosquitto-edge-agent.conf'} and {target / 'mosquitto-edge-agent.acl'}"
    )
    print(f"next: edge-agent check -c {target / 'agent.toml'}")
    return 0

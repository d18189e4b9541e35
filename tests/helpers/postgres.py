"""A throwaway PostgreSQL cluster on a free loopback port, for tests and benchmarks.

`initdb` + `pg_ctl` from the Debian package `postgresql` (.ci/setup installs it) on a
temp dir. PostgreSQL refuses to run as root, so as root every server command runs
as the `postgres` user (`runuser -u postgres --`), which then owns the directory.
Authentication is `trust` on 127.0.0.1 only: the cluster lives as long as a test.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from edge_agent.cli.mosquitto import free_port

__all__ = ["Postgres", "find_pg_bin", "postgres_unavailable"]


def find_pg_bin() -> Path | None:
    """The directory holding initdb/pg_ctl (Debian keeps them off PATH), newest version first."""

    def version(p: str) -> int:
        v = Path(p).parent.parent.name
        return int(v) if v.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    if found:
        return Path(found[-1]).parent
    # Debian's /usr/bin wrappers (pg_ctlcluster & co.) are not the server tools; elsewhere
    # (a source build, other distributions) initdb and pg_ctl sit together on PATH.
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and Path(on_path).with_name("initdb").exists() else None


def postgres_unavailable() -> str:
    """Why no cluster can be made here ("" = it can): the reason a skip must give."""
    if find_pg_bin() is None:
        return (
            "PostgreSQL server binaries not found (apt-get install postgresql; .ci/setup does it)"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as another user"
    return ""


class Postgres:
    """One PostgreSQL server: `with Postgres(tmp) as pg: pg.url`."""

    def __init__(self, workdir: Path | None = None, settings: dict[str, str] | None = None) -> None:
        why = postgres_unavailable()
        if why:
            raise RuntimeError(why)
        self.bin = find_pg_bin()
        assert self.bin is not None
        # Under root the server user must be able to reach the directory: a fresh
        # mode-0755 dir in /tmp, not a pytest tmp_path (0700 parents).
        self._own_tmp = workdir is None
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="edge-pg-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.data = self.workdir / "data"
        self.log = self.workdir / "server.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # Server settings (-c NAME=VALUE) over the small ones below (benchmarks)
        self.settings = dict(settings or {})

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C.UTF-8",
            )
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.workdir} -c fsync=on "
            f"-c max_connections=50 -c shared_buffers=64MB"
        ) + "".join(f" -c {k}={v}" for k, v in self.settings.items())
        r = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if r.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()}\n{log[-2000:]}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (
                self._run(
                    "pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False
                ).returncode
                == 0
            ):
                return self
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not become ready within 30 s")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def close(self) -> None:
        self.stop()
        if self._own_tmp:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

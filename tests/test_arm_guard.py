"""scripts/arm-guard: the seccomp filter every proot of scripts/arm-check runs under.

proot does not stop mount calls; as root (CI is root) a process inside the ARM
root could unmount the host's /proc or /dev/pts through proot's binds. These
tests prove, without any ARM root, that under the guard such calls fail with
EPERM before the kernel looks at their arguments (a path that does not exist
gives ENOENT without the guard), that the calls proot 5.1.0 does not translate
fail with ENOSYS, and that the filter reaches processes run through proot.

Every probe uses arguments that do nothing even if the guard were broken:
paths that do not exist, bad file descriptors, invalid flags.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / "scripts" / "arm-guard"
SYSTEM_PYTHON = "/usr/bin/python3"
MISSING = "/nonexistent-arm-guard-test"


def _has_seccomp() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    return (
        subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True).returncode == 0
    )


pytestmark = pytest.mark.skipif(
    not _has_seccomp(), reason="python3-seccomp is not installed (apt-get install python3-seccomp)"
)

# name -> arguments (harmless whatever happens), as the probe below builds them
PROBES: dict[str, list] = {
    "mount": ["s:none", f"s:{MISSING}", "s:tmpfs", 0, None],
    "umount2": [f"s:{MISSING}", 0],
    "pivot_root": [f"s:{MISSING}", f"s:{MISSING}"],
    "fsopen": ["s:nonexistentfs", 0],
    "fsconfig": [-1, 0, None, None, 0],
    "fsmount": [-1, 0, 0],
    "fspick": [-1, f"s:{MISSING}", 0],
    "move_mount": [-1, f"s:{MISSING}", -1, f"s:{MISSING}", 0],
    "open_tree": [-1, f"s:{MISSING}", 0],
    "mount_setattr": [-1, f"s:{MISSING}", 0, None, 0],
    "swapon": [f"s:{MISSING}", 0],
    "swapoff": [f"s:{MISSING}"],
    "reboot": [0, 0, 0, None],  # bad magic: EINVAL without the guard
    "kexec_load": [0, 0, None, 0xDEAD0000],  # bad flags: EINVAL
    "kexec_file_load": [-1, -1, 0, None, 0xDEAD0000],
    "sethostname": [None, 100000],  # too long: EINVAL
    "faccessat2": [-100, "s:/", 0, 0],
    "statx": [-100, "s:/", 0, 0xFFF, "buf:512"],
    "openat2": [-100, f"s:{MISSING}", None, 0],
    "clone3": [None, 0],
}
EPERM_CALLS = [n for n in PROBES if n not in ("faccessat2", "statx", "openat2", "clone3")]
ENOSYS_CALLS = ["faccessat2", "statx", "openat2", "clone3"]

PROBE = r"""
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
numbers, probes = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
for name, args in probes.items():
    conv = []
    for a in args:
        if isinstance(a, str) and a.startswith("s:"):
            conv.append(ctypes.c_char_p(a[2:].encode()))
        elif isinstance(a, str) and a.startswith("buf:"):
            conv.append(ctypes.create_string_buffer(int(a[4:])))
        elif a is None:
            conv.append(ctypes.c_void_p(0))
        else:
            conv.append(ctypes.c_long(a))
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(numbers[name]), *conv)
    out[name] = "ok" if ret >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
print(json.dumps(out))
"""


def syscall_numbers() -> dict[str, int]:
    code = (
        "import json, seccomp, sys\n"
        "names = json.loads(sys.argv[1])\n"
        "print(json.dumps({n: seccomp.resolve_syscall(seccomp.Arch.NATIVE, n) for n in names}))"
    )
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", code, json.dumps(list(PROBES))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {n: nr for n, nr in json.loads(out).items() if nr >= 0}


def probe(prefix: list[str], cwd: Path) -> dict[str, str]:
    numbers = syscall_numbers()
    probes = {n: a for n, a in PROBES.items() if n in numbers}
    proc = subprocess.run(
        [*prefix, SYSTEM_PYTHON, "-c", PROBE, json.dumps(numbers), json.dumps(probes)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_guard_denies_mount_calls_and_hides_untranslated_ones(tmp_path: Path) -> None:
    results = probe([str(GUARD)], tmp_path)
    assert {"mount", "umount2", "faccessat2", "statx"} <= results.keys()
    for name in EPERM_CALLS:
        if name in results:
            assert results[name] == "EPERM", (name, results)
    for name in ENOSYS_CALLS:
        if name in results:
            assert results[name] == "ENOSYS", (name, results)


def test_without_the_guard_the_probe_sees_the_kernels_answers(tmp_path: Path) -> None:
    # The control: the same probe tells a denied call from one the kernel ran.
    results = probe([], tmp_path)
    assert results["faccessat2"] == "ok"
    assert results["statx"] == "ok"
    if os.geteuid() == 0:  # as root the kernel gets to the (missing) path
        assert results["umount2"] == "ENOENT"
        assert results["mount"] == "ENOENT"


@pytest.mark.skipif(shutil.which("proot") is None, reason="proot is not installed")
def test_the_filter_reaches_processes_inside_proot(tmp_path: Path) -> None:
    # proot traces with ptrace and rewrites calls; the filter runs after any rewrite
    # (kernel >= 4.8) and is inherited, so the tracee is held as tightly. This also
    # proves proot's cancelled calls (syscall -2, an x32 number) are not killed.
    results = probe([str(GUARD), "proot", "-r", "/", "-b", "/proc", "-w", str(tmp_path)], tmp_path)
    assert results["umount2"] == "EPERM", results
    assert results["mount"] == "EPERM", results
    assert results["faccessat2"] == "ENOSYS", results


def test_guard_runs_the_command_with_its_arguments_and_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(GUARD),
            sys.executable,
            "-c",
            "import sys; print(sys.argv[1:]); sys.exit(7)",
            "a b",
            "c",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 7
    assert proc.stdout.strip() == "['a b', 'c']"


def test_guard_refuses_without_a_command() -> None:
    proc = subprocess.run([str(GUARD)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "seccomp" in proc.stdout

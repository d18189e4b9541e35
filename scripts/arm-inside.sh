#!/bin/bash
# Run by scripts/arm-check INSIDE the emulated Debian root (never on the host):
#   arm-inside.sh ARCH DEMO_SECONDS PYTEST_ARGS...
# /src is a copy of the checkout, /check the tests and data files without the
# source packages (so the tests exercise the installed wheel), /out the results.
set -uo pipefail
ARCH=$1; DEMO_SECONDS=$2; shift 2
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 PYTHONDONTWRITEBYTECODE=1
mkdir -p /out
log() { printf '%s inside %s: %s\n' "$(date -u +%H:%M:%S)" "$ARCH" "$*" >&2; }
fail() { log "FAILED: $*"; echo "$*" > /out/failed; exit 1; }
t() { local s=$SECONDS; "$@"; local rc=$?; echo "$((SECONDS - s))" > /out/last-seconds; return $rc; }

log "$(python3 -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])')"

# ---- the wheel: pip wheel of the checkout, as the README's install does ---------
s=$SECONDS
python3 -m venv /opt/build || fail "python3 -m venv"
rm -rf /wheels; /opt/build/bin/python -m pip wheel --no-deps -w /wheels /src > /out/build.log 2>&1 \
    || { tail -20 /out/build.log >&2; fail "pip wheel of the checkout"; }
WHEEL=$(ls /wheels/edge_agent*.whl) || fail "no wheel"
log "built $(basename "$WHEEL") in $((SECONDS - s)) s"

# ---- a venv with the wheel and its dependencies from PyPI ------------------------
PIP_ARGS=()
if [ "$(uname -m)" = armv7l ]; then
    # PyPI has no armv7 wheel of cbor2 6 and its sdist needs a Rust toolchain (and
    # crates.io); --only-binary cbor2 makes pip take the newest cbor2 with a wheel
    # (5.9, pure Python; edge_agent/ingest/_cbor5.py), as the README's armhf line does.
    PIP_ARGS=(--only-binary cbor2)
    # The test extra's cryptography needs cffi, which has no armv7 wheel either and
    # builds only with libffi's headers (the agent itself does not need them).
    if [ ! -e /usr/include/ffi.h ] && [ ! -e /usr/include/arm-linux-gnueabihf/ffi.h ]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libffi-dev; } > /out/apt.log 2>&1 \
            || { tail -5 /out/apt.log >&2; fail "apt-get install libffi-dev"; }
    fi
fi
s=$SECONDS
rm -rf /opt/edge-agent; python3 -m venv /opt/edge-agent
/opt/edge-agent/bin/pip install -q "${PIP_ARGS[@]}" --report /out/install-report.json "$WHEEL" > /out/pip.log 2>&1 \
    || { tail -30 /out/pip.log >&2; fail "pip install of the wheel and its dependencies"; }
# The test extra (pytest, hypothesis, cryptography for test certificates, ...);
# cryptography only as a wheel (from source it needs a Rust toolchain).
/opt/edge-agent/bin/pip install -q "${PIP_ARGS[@]}" --only-binary cryptography --report /out/test-report.json "$WHEEL[test]" >> /out/pip.log 2>&1 \
    || { tail -30 /out/pip.log >&2; fail "pip install of the test extra"; }
/opt/edge-agent/bin/python - <<'PY' > /out/wheels.txt
import json
for name in ("install-report", "test-report"):
    for item in json.load(open(f"/out/{name}.json"))["install"]:
        url = item["download_info"]["url"]
        meta = item["metadata"]
        kind = "wheel" if url.endswith(".whl") else "built from source"
        if url.startswith("file:"):
            kind = "this checkout"
        print(f"{meta['name']} {meta['version']}: {kind} ({url.rsplit('/', 1)[-1]})")
PY
log "installed in $((SECONDS - s)) s:"; sed 's/^/    /' /out/wheels.txt >&2
export PATH=/opt/edge-agent/bin:$PATH
for dir in /tmp /check; do
    (cd $dir && /opt/edge-agent/bin/python -c 'import edge_agent, firmware_bridge as f
for m in (edge_agent, f):
    assert (m.__file__ or "").startswith("/opt/edge-agent/"), (m.__name__, m.__file__)') \
        || fail "edge_agent does not come from the installed wheel (in $dir)"
done
edge-agent --version > /out/version.txt 2>&1 || fail "edge-agent --version"
log "$(cat /out/version.txt)"

# ---- or a benchmark instead of the demo and tests (ARM_CHECK_STAGE=bench) -----
if [ -n "${ARM_CHECK_BENCH:-}" ]; then
    cd /check
    read -r -a bench <<< "$ARM_CHECK_BENCH"
    log "bench: ${bench[*]}"
    /opt/edge-agent/bin/python "${bench[@]}" > /out/bench.log 2>&1
    echo "$?" > /out/bench.rc
    cat /out/bench.log >&2
    exit 0
fi

# ---- the demo --------------------------------------------------------------------
s=$SECONDS
cd /tmp
timeout -k 10 $((DEMO_SECONDS + 120)) edge-agent demo --duration "$DEMO_SECONDS" > /out/demo.log 2>&1
rc=$?
echo "$rc" > /out/demo.rc
echo "$((SECONDS - s))" > /out/demo.seconds
tail -3 /out/demo.log >&2
log "demo exit $rc in $((SECONDS - s)) s"

# ---- memory: RSS after start and after 1,000 keys -------------------------------
/opt/edge-agent/bin/python /src/scripts/arm-rss.py > /out/rss.json 2> /out/rss.log \
    || { tail -20 /out/rss.log >&2; log "RSS probe failed"; }

# ---- the tests, against the installed wheel -------------------------------------
# The tests' waits are for events, never speeds (tests/helpers/agent_harness.py):
# under emulation everything runs several times slower, so they wait longer.
export EDGE_TEST_TIME_SCALE=${EDGE_TEST_TIME_SCALE:-4}
s=$SECONDS
cd /check
PYTEST=(/opt/edge-agent/bin/python -m pytest -p no:cacheprovider -q)
"${PYTEST[@]}" --junitxml=/out/junit.xml "$@" > /out/pytest.log 2>&1
rc=$?
echo "$rc" > /out/pytest.rc
tail -15 /out/pytest.log >&2
# A test that fails here is run once more, alone (at most 3 of them): one that then
# passes is a flake of the emulated machine, reported as such (with its first
# failure printed in full) rather than failing the tier; one that fails again, or
# more than 3 failures, fails it. The failed node ids come from the junit report.
: > /out/flaky
if [ "$rc" != 0 ]; then
    sed -n '/= FAILURES =/,/short test summary/p' /out/pytest.log | tail -120 >&2
    mapfile -t FAILED < <(/opt/edge-agent/bin/python - /out/junit.xml <<'PY'
import os, sys, xml.etree.ElementTree as ET
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    if case.find("failure") is None and case.find("error") is None:
        continue
    parts = case.get("classname", "").split(".")  # module path, then any classes
    for i in range(len(parts), 0, -1):
        if os.path.isfile("/".join(parts[:i]) + ".py"):
            print("::".join(["/".join(parts[:i]) + ".py", *parts[i:], case.get("name", "")]))
            break
PY
    )
    if [ "${#FAILED[@]}" -ge 1 ] && [ "${#FAILED[@]}" -le 3 ]; then
        log "rerunning ${#FAILED[@]} failed test(s) alone: ${FAILED[*]}"
        "${PYTEST[@]}" --junitxml=/out/junit-rerun.xml "${FAILED[@]}" > /out/pytest-rerun.log 2>&1
        rrc=$?
        tail -3 /out/pytest-rerun.log >&2
        if [ "$rrc" = 0 ]; then
            printf '%s\n' "${FAILED[@]}" > /out/flaky
            echo 0 > /out/pytest.rc
        fi
    fi
fi
echo "$((SECONDS - s))" > /out/pytest.seconds
log "tests done in $((SECONDS - s)) s"
exit 0

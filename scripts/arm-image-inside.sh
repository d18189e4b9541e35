#!/bin/bash
# Run by `ARM_CHECK_STAGE=image scripts/arm-check arm64` INSIDE a fresh copy of
# the emulated Debian root (never on the host): turns it into the image's root
# file system, doing what Dockerfile.arm64's RUN steps do, on Debian's python3
# instead of the python:3.11-slim base (no registry needed). scripts/arm-image
# then commits it with buildah (no RUN step, so no binfmt_misc either).
set -euo pipefail
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 PYTHONDONTWRITEBYTECODE=1
log() { printf '%s image inside: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
log "$(python3 -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])')"

# ---- the build stage: our wheel, built with the hash-checked setuptools -----------
python3 -m venv /opt/build
/opt/build/bin/pip install -q --require-hashes --no-deps --only-binary=:all: -r /src/requirements-build.txt
rm -rf /wheels
/opt/build/bin/python -m pip wheel -q --no-deps --no-build-isolation --wheel-dir /wheels /src
# ---- the venv: hash-checked aarch64 wheels, then our wheel without an index -------
python3 -m venv /opt/edge-agent
/opt/edge-agent/bin/pip install -q --require-hashes --no-deps --only-binary=:all: \
    -r /src/requirements-image.txt
/opt/edge-agent/bin/pip install -q --no-index --no-deps /wheels/edge_agent_mqtt-*.whl
/opt/edge-agent/bin/pip check
/opt/edge-agent/bin/edge-agent --help > /dev/null
log "venv: $(/opt/edge-agent/bin/pip list --format freeze 2>/dev/null | tr '\n' ' ')"

# ---- runtime: the user, directories and default config of Dockerfile.arm64 --------
groupadd --system --gid 10001 edge
useradd --system --uid 10001 --gid edge --no-create-home --home-dir /var/lib/edge-agent \
    --shell /usr/sbin/nologin edge
install -d -o edge -g edge -m 0700 /var/lib/edge-agent
install -d -m 0755 /etc/edge-agent
install -m 0644 /src/config/agent.toml /etc/edge-agent/agent.toml

# ---- what only the checks and the build needed goes ------------------------------
rm -rf /opt/build /wheels  # not /root/.cache: pip's cache there is bound from the host
# debootstrap marks every package it installed as manual, so autoremove alone keeps
# the compiler: everything but the Essential and Priority-required packages becomes
# automatic, python3 and ca-certificates stay manual, and the rest goes (suggested
# and recommended packages too: python3.11 suggests binutils and python3.11-venv).
dpkg-query -W -f '${Package}\t${Essential}\t${Priority}\n' \
    | awk -F'\t' '$2 != "yes" && $3 != "required" {print $1}' | xargs apt-mark auto > /dev/null
apt-mark manual python3 ca-certificates > /dev/null
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove \
    -o APT::AutoRemove::SuggestsImportant=false -o APT::AutoRemove::RecommendsImportant=false \
    > /tmp/purge.log 2>&1 \
    || { tail -20 /tmp/purge.log >&2; exit 1; }
apt-get clean
# what Debian's slim images leave out too
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt/* /var/log/dpkg.log \
    /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* /tmp/purge.log
log "$(dpkg-query -W | wc -l) Debian packages: $(dpkg-query -W -f '${Package} ' | head -c 2000)"
/opt/edge-agent/bin/edge-agent --version
log "done"

#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian 12 machine: the real broker,
# the real RTSP server and ffmpeg (Debian packages), and a virtualenv with edgewatch.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mosquitto ffmpeg gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi
              gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
              openssl)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "bootstrap: creating .venv"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import daemon, pytest, mypy, ruff" 2>/dev/null \
   || [[ pyproject.toml -nt .venv/.edgewatch-installed ]]; then
    echo "bootstrap: installing edgewatch[dev] into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    # tensorrt-stubs depends on TensorRT itself (not installable here): --no-deps, then patch
    # its known defects so mypy can check engines/ against the real API.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps tensorrt-stubs==10.13.0.35.1
    .venv/bin/python scripts/patch_tensorrt_stubs.py
    touch .venv/.edgewatch-installed
fi
# The tracker's compiled code (numba), cached beside its module (or in NUMBA_CACHE_DIR when
# set): compiled here once, not by whichever daemon or test tracks first (about 20 s on a
# 2-core machine; a second far less).
.venv/bin/python -c "from daemon.track.bytetrack import warm_up; warm_up()"

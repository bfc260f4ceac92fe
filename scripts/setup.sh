#!/usr/bin/env bash
# Installs everything VAP needs on a fresh Debian/Ubuntu machine with Python 3.11+:
# the system packages in scripts/apt-packages.txt (GStreamer RTSP server for tests and demos),
# a virtual environment in .venv with VAP and its dev/bench extras. Safe to run again: it only does
# what is missing. Set VAP_SKIP_APT=1 to skip the system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

install_system_packages() {
  [ "${VAP_SKIP_APT:-0}" = "1" ] && return 0
  [ -f scripts/apt-packages.txt ] || return 0
  mapfile -t wanted < <(grep -vE '^\s*(#|$)' scripts/apt-packages.txt)
  [ ${#wanted[@]} -gt 0 ] || return 0
  missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    log "apt-get not found: install these packages yourself: ${missing[*]}"
    return 0
  fi
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo_cmd=(sudo); else
      log "not root and no sudo: install these packages yourself: ${missing[*]}"; return 0; fi
  fi
  log "installing system packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null &&
       "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  log "Python 3.11 or newer with the venv module is needed (Debian/Ubuntu: apt-get install python3.11-venv)"
  return 1
}

install_python_env() {
  local python stamp
  python=$(find_python)
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $python"
    "$python" -m venv .venv
  fi
  # Reinstall only when the dependency list changed since the last successful install.
  stamp=".venv/.vap-installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "installing VAP and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev,bench]'
    rm -f .venv/.vap-installed-*
    touch "$stamp"
  fi
}

install_system_packages
install_python_env

# --- bench-only peers (owner: services/tracker, bench suite `tracker`) ------------------------------------
# ByteTrack from the `trackers` package is the reference the tracker bench compares against. Its wheel
# requires opencv-python (the GUI build), which would shadow opencv-python-headless's cv2, so it is
# installed without dependencies and its real run-time needs are installed by hand. supervision (for
# sv.Detections, the type trackers' update() takes) declares no OpenCV dependency of its own and uses the
# headless cv2. Skipped when the pinned versions are already there.
install_bench_peers() {
  if .venv/bin/python - <<'PY' 2>/dev/null
import importlib.metadata as md, sys
want = {"trackers": "2.6.1", "supervision": "0.31.2"}
sys.exit(0 if all(md.version(n) == v for n, v in want.items()) else 1)
PY
  then return 0; fi
  log "installing bench-only peers: trackers (without opencv-python), supervision"
  .venv/bin/python -m pip install -q --no-deps 'trackers==2.6.1'
  .venv/bin/python -m pip install -q 'supervision==0.31.2' 'pydeprecate>=0.9,<0.14' 'rich>=13' 'requests>=2.28'
  if .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then
    log "opencv-python got installed and would clash with opencv-python-headless: removing it"
    .venv/bin/python -m pip uninstall -q -y opencv-python
    .venv/bin/python -m pip install -q --force-reinstall --no-deps opencv-python-headless
  fi
  .venv/bin/python -c 'import cv2, trackers; cv2.setNumThreads(1)' ||
    { log "bench peers installed but cv2/trackers do not import"; return 1; }
}
install_bench_peers
# --- end of bench-only peers -------------------------------------------------------------------------------

log "ready: .venv/bin/python"

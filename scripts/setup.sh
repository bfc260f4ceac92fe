#!/usr/bin/env bash
# Installs everything VAP needs on a fresh Debian/Ubuntu machine with Python 3.11+:
# the system packages in scripts/apt-packages.txt (GStreamer RTSP server for tests and demos),
# a virtual environment in .venv with exactly the versions in requirements.lock (VAP's dependencies, its
# dev/bench extras and the bench peers; refresh with scripts/lock.sh) and VAP itself. Safe to run again: it
# only does what is missing. Set VAP_SKIP_APT=1 to skip the system packages.
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
  # Exactly the lock (versions and hashes; --no-deps: nothing arrives that the lock does not name), then
  # VAP itself, editable, built with the lock's setuptools. Reinstalled only when the lock or the package
  # list changed since the last successful install.
  stamp=".venv/.vap-installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "installing the locked dependencies (requirements.lock) and VAP into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps \
      -r requirements.lock
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    .venv/bin/python -c 'import cv2, trackers, supervision, av, onnxruntime, vap_stack' ||
      { log "the locked environment does not import"; return 1; }
    rm -f .venv/.vap-installed-*
    touch "$stamp"
  fi
}

# Debian versions differ between releases and point updates: say which differ from the tested ones
# (scripts/apt-tested.txt, written by scripts/lock.sh) so a failure can be traced to them.
report_system_versions() {
  [ -f scripts/apt-tested.txt ] || return 0
  command -v dpkg-query >/dev/null || return 0
  local pkg want have
  while read -r pkg want; do
    have=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
    if [ -n "$have" ] && [ "$have" != "$want" ]; then log "note: $pkg $have installed, tested with $want"; fi
  done < <(grep -vE '^\s*(#|$)' scripts/apt-tested.txt)
  return 0
}

install_system_packages
report_system_versions
install_python_env

log "ready: .venv/bin/python"

#!/usr/bin/env bash
# One-command set-up: system libraries for Qt/napari under Xvfb, a virtual environment in .venv
# with napari-ddrnet and its test extras, then the demo on the built-in synthetic smear.
#   usage: bash scripts/setup.sh [--no-demo]
set -euo pipefail
cd "$(dirname "$0")/.."

SYS_PKGS="xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0
  libxcb-xkb1 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libfontconfig1
  libdbus-1-3"
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $SYS_PKGS >/dev/null
else
  echo "apt-get not found: install Xvfb and the Qt xcb libraries yourself to run the GUI tests"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 -e ".[testing]"

if [ "${1:-}" != "--no-demo" ]; then
  .venv/bin/napari-ddrnet demo --out napari-ddrnet-demo
fi

#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh machine: system libraries for headless rendering and a
# headless browser for the page test, a virtual environment in .venv, and the package with its
# pinned dependencies. A second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-stamp

# 1. system packages: OSMesa for headless OpenGL rendering (pyrender), libGL; Chromium and its
#    driver for the browser test of the HTML pages' viewer (driven by the playwright package,
#    which uses this browser and never downloads one)
need_apt=()
ldconfig -p 2>/dev/null | grep -q libOSMesa || need_apt+=(libosmesa6)
ldconfig -p 2>/dev/null | grep -q 'libGL.so.1' || need_apt+=(libgl1)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# 2. virtual environment + package (torch pinned in the same pip call as everything that needs it)
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/cyclecorr" ]; then
  echo "[setup] environment up to date ($VENV)"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0" -e ".[dev]"
echo "$want" > "$STAMP"
echo "[setup] ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"

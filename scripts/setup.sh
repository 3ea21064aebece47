#!/usr/bin/env bash
# Create .venv (if missing) and install ptcli with its dev tools, pinned to the CPU build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# constraints.txt pins torch to the CPU build: without it pip would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,hf,loggers,bench,sweep]"

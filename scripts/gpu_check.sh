#!/usr/bin/env bash
# GPU readiness: a short pretrain on CUDA (bf16, TF32, torch.compile), printing tokens/s and MFU.
# Run on a machine with a CUDA GPU and a CUDA build of torch; see scripts/gpu_check.py for options.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec "$PY" scripts/gpu_check.py "$@"

#!/usr/bin/env bash
# Set up, then pre-train a transformer with MLM on the embedded corpus (Python's docstrings).
# Extra arguments are Hydra overrides, e.g. scripts/quickstart.sh debug=smoke
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ptcli pretrain "$@"

#!/usr/bin/env bash
# Create .venv-peers: the interpreter of the peer side of scripts/bench_simclr.py (lightly's SimCLR transforms on a
# torchvision DataLoader). It is a venv of its own because PyPI's torchvision does not import beside the CPU build
# of torch that .venv pins ("operator torchvision::nms does not exist"); a torch/torchvision pair built together
# does. On x86_64 that pair is torch 2.14.1 + torchvision 0.29.1 (a CUDA build, ~5.5 GB, which runs on the CPU);
# on aarch64 torch 2.9.1 + torchvision 0.24.1 (a CPU build). ptcli itself is not installed there: the benchmark
# imports ptcli's convnet and NT-Xent loss from this checkout, which need torch alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
case "$(uname -m)" in
  x86_64) PAIR=(torch==2.14.1 torchvision==0.29.1) ;;
  aarch64) PAIR=(torch==2.9.1 torchvision==0.24.1) ;;
  *) echo "setup_peers.sh: no torch/torchvision pair known for $(uname -m)" >&2; exit 1 ;;
esac
if [ ! -x .venv-peers/bin/python ]; then
  "$PYTHON" -m venv .venv-peers
fi
.venv-peers/bin/python -m pip install --quiet --upgrade pip
.venv-peers/bin/python -m pip install --quiet "${PAIR[@]}"
# The pair again in the same command, so lightly's own torch requirement cannot move it.
.venv-peers/bin/python -m pip install --quiet "lightly==1.6.0" "${PAIR[@]}"
.venv-peers/bin/python -c "import torch, torchvision, lightly; print('peers:', 'torch', torch.__version__, \
'torchvision', torchvision.__version__, 'lightly', lightly.__version__)"

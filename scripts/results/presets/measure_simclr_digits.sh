#!/usr/bin/env bash
# How the figures in conf/experiment/pretrain_simclr_digits.yaml were measured (2 shared CPU cores).
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-/tmp/presets}
OUT=scripts/results/presets/simclr_digits
mkdir -p "$OUT" "$RUNS"
uptime | tee "$OUT/load_before.txt"
/usr/bin/time -v .venv/bin/ptcli pretrain experiment=pretrain_simclr_digits trainer.progress=log \
  hydra.run.dir="$RUNS/simclr_digits" --json > "$OUT/pretrain.json" 2> "$OUT/pretrain.log"
cp "$RUNS/simclr_digits/run.json" "$OUT/run.json"
cp "$RUNS/simclr_digits/metrics.jsonl" "$OUT/metrics.jsonl"
uptime | tee "$OUT/load_after.txt"

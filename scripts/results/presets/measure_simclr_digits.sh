#!/usr/bin/env bash
# How the figures in conf/experiment/pretrain_simclr_digits.yaml were measured (2 shared CPU cores).
# trainer.num_threads=1 (THREADS): on the shared machine two threads waiting on each other at every op cost
# far more than the second core gave (2 threads: 4.9 s per step at step 40, 72x the idle machine's 0.068 s).
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-/tmp/presets}
OUT=scripts/results/presets/simclr_digits
mkdir -p "$OUT" "$RUNS"
uptime | tee "$OUT/load_before.txt"
/usr/bin/time -v .venv/bin/ptcli pretrain experiment=pretrain_simclr_digits trainer.progress=log trainer.num_threads=${THREADS:-1} \
  hydra.run.dir="$RUNS/simclr_digits" --json > "$OUT/pretrain.json" 2> "$OUT/pretrain.log"
cp "$RUNS/simclr_digits/run.json" "$OUT/run.json"
cp "$RUNS/simclr_digits/metrics.jsonl" "$OUT/metrics.jsonl"
uptime | tee "$OUT/load_after.txt"

#!/usr/bin/env bash
# Cost per step of conf/experiment/pretrain_simclr_32px.yaml on this machine's 2 shared CPU cores: 12 steps on
# the digits upscaled to 32x32 RGB (digits_folder.py; a stand-in with no download), steps 3-12 timed from the
# log. The preset's own run (10,000 steps) is for a GPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-/tmp/presets}
OUT=scripts/results/presets/simclr_32px
mkdir -p "$OUT" "$RUNS"
[ -d "$RUNS/digits32" ] || .venv/bin/python scripts/results/presets/digits_folder.py "$RUNS/digits32" 32
uptime | tee "$OUT/load_before.txt"
/usr/bin/time -v .venv/bin/ptcli pretrain experiment=pretrain_simclr_32px data.path="$RUNS/digits32" \
  trainer.max_steps=12 trainer.log_every=1 schedule.warmup_steps=2 trainer.progress=log \
  hydra.run.dir="$RUNS/simclr_32px" --json > "$OUT/pretrain.json" 2> "$OUT/pretrain.log"
cp "$RUNS/simclr_32px/run.json" "$OUT/run.json"
cp "$RUNS/simclr_32px/metrics.jsonl" "$OUT/metrics.jsonl"
uptime | tee "$OUT/load_after.txt"

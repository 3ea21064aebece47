#!/usr/bin/env bash
# How the figures in conf/experiment/pretrain_mlm_long.yaml were measured (2 shared CPU cores): the preset's
# pre-training, then fine-tuning at 16 labels per class, seeds 0,1,2, init=pretrained (the README's
# default-pretrain row is 0.528 +- 0.022; random init 0.385, the same architecture and tokenizer).
# Run dirs go to $RUNS (default /tmp/presets); their run.json/metrics.jsonl are copied here.
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-/tmp/presets}
OUT=scripts/results/presets/mlm_long
mkdir -p "$OUT" "$RUNS"
uptime | tee "$OUT/load_before.txt"
/usr/bin/time -v .venv/bin/ptcli pretrain experiment=pretrain_mlm_long trainer.progress=log \
  hydra.run.dir="$RUNS/mlm_long_pretrain" --json > "$OUT/pretrain.json" 2> "$OUT/pretrain.log"
cp "$RUNS/mlm_long_pretrain/run.json" "$OUT/pretrain_run.json"
cp "$RUNS/mlm_long_pretrain/metrics.jsonl" "$OUT/pretrain_metrics.jsonl"
uptime | tee "$OUT/load_mid.txt"
/usr/bin/time -v .venv/bin/ptcli finetune -m pretrained="$RUNS/mlm_long_pretrain" init=pretrained \
  data.labels_per_class=16 seed=0,1,2 hydra.sweep.dir="$RUNS/mlm_long_finetune" --json \
  > "$OUT/finetune.json" 2> "$OUT/finetune.log"
cp "$RUNS/mlm_long_finetune/summary.json" "$OUT/finetune_summary.json"
uptime | tee "$OUT/load_after.txt"

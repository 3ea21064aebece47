#!/usr/bin/env bash
# The control for conf/experiment/pretrain_mlm_long.yaml's head start: the same fine-tunes (16 labels per class,
# seeds 0,1,2) at init=random, with the code of this measurement. The architecture and tokenizer are the default
# pretrain's, so the README's random-init figure (0.385 +- 0.017) should come back if fine-tuning is unchanged.
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-/tmp/presets}
OUT=scripts/results/presets/mlm_long
uptime | tee -a "$OUT/load.txt"
/usr/bin/time -v .venv/bin/ptcli finetune -m pretrained="$RUNS/mlm_long_pretrain" init=random \
  trainer.num_threads=${THREADS:-1} data.labels_per_class=16 seed=0,1,2 \
  hydra.sweep.dir="$RUNS/mlm_long_finetune_random" --json > "$OUT/finetune_random.json" 2> "$OUT/finetune_random.log"
cp "$RUNS/mlm_long_finetune_random/summary.json" "$OUT/finetune_random_summary.json"
uptime | tee -a "$OUT/load.txt"

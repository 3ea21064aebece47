#!/usr/bin/env bash
# How the figures in conf/experiment/pretrain_mlm_long.yaml were measured (2 shared CPU cores): the preset's
# pre-training, then fine-tuning at 16 labels per class, seeds 0,1,2, init=pretrained (the README's
# default-pretrain row is 0.528 +- 0.022; random init 0.385, the same architecture and tokenizer).
# Run dirs go to $RUNS (default /tmp/presets); their run.json/metrics.jsonl are copied here. Run it again after
# an interruption: an interrupted pre-training resumes from its checkpoint (resume=RUN_DIR; exact).
# The first 201 steps ran with torch's 2 threads (6.8 s per step under the shared load), then were
# interrupted (SIGTERM: checkpoint) and resumed with trainer.num_threads=1 (THREADS), as for the SimCLR digits
# run: on the shared machine two threads waiting on each other at every op cost far more than the second core.
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-/tmp/presets}
OUT=scripts/results/presets/mlm_long
PRE="$RUNS/mlm_long_pretrain"
mkdir -p "$OUT" "$RUNS"
uptime | tee -a "$OUT/load.txt"
status=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['status'])" "$PRE/run.json" 2>/dev/null || echo none)
if [ "$status" = none ]; then
  /usr/bin/time -v .venv/bin/ptcli pretrain experiment=pretrain_mlm_long trainer.progress=log \
    hydra.run.dir="$PRE" --json > "$OUT/pretrain.json" 2> "$OUT/pretrain.log"
elif [ "$status" != completed ]; then
  n=$(ls "$OUT" | grep -c '^pretrain_resumed' || true)
  /usr/bin/time -v .venv/bin/ptcli pretrain resume="$PRE" trainer.num_threads=${THREADS:-1} --json > "$OUT/pretrain.json" \
    2> "$OUT/pretrain_resumed_$((n + 1)).log"
fi
cp "$PRE/run.json" "$OUT/pretrain_run.json"
cp "$PRE/metrics.jsonl" "$OUT/pretrain_metrics.jsonl"
uptime | tee -a "$OUT/load.txt"
/usr/bin/time -v .venv/bin/ptcli finetune -m pretrained="$PRE" init=pretrained trainer.num_threads=${THREADS:-1} \
  data.labels_per_class=16 seed=0,1,2 hydra.sweep.dir="$RUNS/mlm_long_finetune" --json \
  > "$OUT/finetune.json" 2> "$OUT/finetune.log"
cp "$RUNS/mlm_long_finetune/summary.json" "$OUT/finetune_summary.json"
uptime | tee -a "$OUT/load.txt"

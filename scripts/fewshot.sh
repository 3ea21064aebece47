#!/usr/bin/env bash
# The few-sample fine-tuning options, measured: each variant (a set of overrides) x task x head, from one pretrain
# run, 16 labels per class, seeds 0,1,2, as one `ptcli finetune -m` sweep each. Tasks: pydocs package (lexical),
# pydocs kind, or BShift (TASKS=bshift: data=text files from scripts/make_bshift.py, word order only).
# Table: scripts/sweep_table.py. Pre-trained vs random init per task and head: scripts/cloze.sh.
#
#   bash scripts/fewshot.sh PRETRAIN_RUN [OUT]           # OUT defaults to scripts/results/fewshot
#   FT_ARGS="trainer.num_threads=1" ...                   # extra overrides for every fine-tune
#   TASKS="package kind bshift" HEADS="classifier cloze" VARIANTS="base reinit1 ..." (default: base reinit1
#   warmup30 steps600 decay08 for the classification head, base reinit1 names patterns2 for cloze)
#
# A sweep whose summary.json exists is not run again.
set -euo pipefail
PRE=${1:?usage: bash scripts/fewshot.sh PRETRAIN_RUN [OUT]}
OUT=${2:-scripts/results/fewshot}
PTCLI=${PTCLI:-ptcli}
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the data=text paths are read from each job
[ -s "$OUT/bshift/test.csv" ] || $PY "$(dirname "$0")/make_bshift.py" "$OUT/bshift" > "$OUT/bshift.txt"

task_args() {
  case $1 in
    package|kind) echo "data=pydocs data.label=$1" ;;
    bshift) echo "data=text data.train=$OUT/bshift/train.csv data.validation=$OUT/bshift/validation.csv data.test=$OUT/bshift/test.csv" ;;
  esac
}

# Sets VARGS (an array: a pattern holds spaces).
variant_args() {
  case $1 in
    base) VARGS=() ;;
    reinit1) VARGS=("finetune.reinit_layers=1") ;;         # Zhang et al. 2021: re-initialise the top block
    warmup30) VARGS=("schedule.warmup_steps=30") ;;        # 10% warmup (the default is 100 of 300 steps)
    steps600) VARGS=("trainer.max_steps=600") ;;           # Mosbach et al. 2021: train longer on few samples
    decay08) VARGS=("optim.layer_decay=0.8") ;;            # layer-wise lr decay
    names) VARGS=("finetune.cloze.verbalizer=names") ;;    # head=cloze: the labels' own names as words
    patterns2) VARGS=("finetune.cloze.patterns=['[MASK] : {text}','{text} this [MASK] .']") ;;  # PET's ensemble
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

for task in ${TASKS:-package kind}; do
  for head in ${HEADS:-classifier cloze}; do
    if [ "$head" = classifier ]; then variants=${VARIANTS:-base reinit1 warmup30 steps600 decay08}
    else variants=${VARIANTS:-base reinit1 names patterns2}; fi
    for variant in $variants; do
      name="${task}_${head}_${variant}"
      [ -s "$OUT/runs/$name/summary.json" ] && continue
      echo "== $name" >&2
      variant_args "$variant"
      # shellcheck disable=SC2046,SC2086
      $PTCLI finetune -m pretrained="$PRE" $(task_args "$task") head=$head data.labels_per_class=16 seed=0,1,2 \
        "${VARGS[@]}" ${FT_ARGS:-} hydra.sweep.dir="$OUT/runs/$name" > "$OUT/$name.log" 2>&1
    done
  done
done
$PY "$(dirname "$0")/sweep_table.py" "$OUT"/runs/*_*_*/ --metrics best/val/accuracy,test/accuracy > "$OUT/fewshot.md"
cat "$OUT/fewshot.md"

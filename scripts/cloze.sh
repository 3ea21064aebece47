#!/usr/bin/env bash
# Classification head vs cloze (head=cloze), pre-trained vs random init, on both pydocs tasks (data.label=package,
# data.label=kind) and BShift (data=text files written by scripts/make_bshift.py: word order only): one
# `ptcli headstart` per (task, head), seeds 0,1,2. Table: scripts/cloze_table.py.
#
#   bash scripts/cloze.sh PRETRAIN_RUN [OUT]          # OUT defaults to scripts/results/cloze
#   BUDGETS=4,16,64 bash scripts/cloze.sh RUN          # labels per class (default 16)
#   TASKS="package kind bshift" HEADS="classifier cloze"   # (defaults: package kind; both heads)
#   FT_ARGS="trainer.num_threads=1" ...                # extra overrides for every fine-tune
#
# A (task, head) whose headstart.json exists is not run again; headstart itself resumes an interrupted sweep.
set -euo pipefail
PRE=${1:?usage: bash scripts/cloze.sh PRETRAIN_RUN [OUT]}
OUT=${2:-scripts/results/cloze}
PTCLI=${PTCLI:-ptcli}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the data=text paths are read from each job

task_args() {
  case $1 in
    package|kind) echo "data=pydocs data.label=$1" ;;
    bshift)
      [ -s "$OUT/bshift/test.csv" ] || ${PYTHON:-python} "$(dirname "$0")/make_bshift.py" "$OUT/bshift" > "$OUT/bshift.txt"
      echo "data=text data.train=$OUT/bshift/train.csv data.validation=$OUT/bshift/validation.csv data.test=$OUT/bshift/test.csv" ;;
    *) echo "unknown task $1 (package, kind or bshift)" >&2; exit 2 ;;
  esac
}

for task in ${TASKS:-package kind}; do
  for head in ${HEADS:-classifier cloze}; do
    name="${task}_${head}"
    [ -s "$OUT/$name.headstart.json" ] && continue
    echo "== $name" >&2
    args=$(task_args "$task")
    # shellcheck disable=SC2086
    $PTCLI headstart pretrained="$PRE" $args head=$head --budgets "${BUDGETS:-16}" \
      --seeds 0,1,2 --json hydra.sweep.dir="$OUT/runs/$name" ${FT_ARGS:-} > "$OUT/$name.headstart.json.tmp" \
      2> "$OUT/$name.headstart.log"
    mv "$OUT/$name.headstart.json.tmp" "$OUT/$name.headstart.json"
  done
done
${PYTHON:-python} "$(dirname "$0")/cloze_table.py" "$OUT"

#!/usr/bin/env bash
# Classification head vs cloze (head=cloze), pre-trained vs random init, on both pydocs tasks (data.label=package,
# data.label=kind): one `ptcli headstart` per (task, head), seeds 0,1,2. Table: scripts/cloze_table.py.
#
#   bash scripts/cloze.sh PRETRAIN_RUN [OUT]          # OUT defaults to scripts/results/cloze
#   BUDGETS=4,16,64 bash scripts/cloze.sh RUN          # labels per class (default 16)
#   FT_ARGS="trainer.num_threads=1" ...                # extra overrides for every fine-tune
#
# A (task, head) whose headstart.json exists is not run again; headstart itself resumes an interrupted sweep.
set -euo pipefail
PRE=${1:?usage: bash scripts/cloze.sh PRETRAIN_RUN [OUT]}
OUT=${2:-scripts/results/cloze}
PTCLI=${PTCLI:-ptcli}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"
for task in ${TASKS:-package kind}; do
  for head in ${HEADS:-classifier cloze}; do
    name="${task}_${head}"
    [ -s "$OUT/$name.headstart.json" ] && continue
    echo "== $name" >&2
    # shellcheck disable=SC2086
    $PTCLI headstart pretrained="$PRE" data=pydocs data.label=$task head=$head --budgets "${BUDGETS:-16}" \
      --seeds 0,1,2 --json hydra.sweep.dir="$OUT/runs/$name" ${FT_ARGS:-} > "$OUT/$name.headstart.json.tmp" \
      2> "$OUT/$name.headstart.log"
    mv "$OUT/$name.headstart.json.tmp" "$OUT/$name.headstart.json"
  done
done
${PYTHON:-python} "$(dirname "$0")/cloze_table.py" "$OUT"

#!/usr/bin/env bash
# The pre-training zoo on data=digits: every image objective x encoder at its defaults, then the same fine-tune
# sweep on each (pretrained vs random init, 5 labels per class, seeds 0,1,2, via `ptcli headstart`) and the
# probes (`ptcli evaluate`: kNN and linear on the test split). One table: scripts/zoo_table.py.
#
#   bash scripts/zoo.sh [OUT]            # OUT defaults to scripts/results/zoo
#   ZOO="convnet:simclr vit:mae" bash scripts/zoo.sh /tmp/zoo    # a subset
#   ZOO_ARGS="trainer.num_threads=1" ...  # extra overrides for every pre-training (e.g. a shared machine)
#
# A pair whose pretrain run already completed is not run again (delete its folder to re-measure it).
set -euo pipefail
OUT=${1:-scripts/results/zoo}
ZOO=${ZOO:-"convnet:simclr convnet:byol convnet:vicreg convnet:barlow_twins vit:simclr vit:byol vit:vicreg vit:barlow_twins vit:mae"}
PTCLI=${PTCLI:-ptcli}  # PTCLI=.venv/bin/ptcli PYTHON=.venv/bin/python: a venv not on PATH
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"
for pair in $ZOO; do
  model=${pair%%:*}; objective=${pair##*:}; name="${model}_${objective}"; run="$OUT/runs/$name"
  if ! grep -qs '"status": "completed"' "$run/run.json"; then
    rm -rf "$run"
    echo "== $name: pretrain" >&2
    # shellcheck disable=SC2086
    $PTCLI pretrain model="$model" objective="$objective" data=digits hydra.run.dir="$run" ${ZOO_ARGS:-} \
      > "$OUT/$name.pretrain.json" 2> "$OUT/$name.pretrain.log" --json
  fi
  echo "== $name: evaluate" >&2
  $PTCLI evaluate "$run" --json hydra.run.dir="$OUT/runs/$name.eval" > "$OUT/$name.evaluate.json" \
    2> "$OUT/$name.evaluate.log"
  echo "== $name: headstart" >&2
  $PTCLI headstart pretrained="$run" data=digits --budgets 5 --seeds 0,1,2 --json \
    hydra.sweep.dir="$OUT/runs/$name.headstart" > "$OUT/$name.headstart.json" 2> "$OUT/$name.headstart.log"
done
${PYTHON:-python} "$(dirname "$0")/zoo_table.py" "$OUT"

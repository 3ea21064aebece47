#!/usr/bin/env bash
# The pre-training zoo: every image objective x encoder on data=digits and MLM vs ELECTRA on data=pydocs, each at
# its defaults, then the same fine-tune sweep on each (pretrained vs random init via `ptcli headstart`, seeds
# 0,1,2; 5 labels per class on digits, 16 on pydocs) and, for images, the probes (`ptcli evaluate`: kNN and linear
# on the test split). One table: scripts/zoo_table.py.
#
#   bash scripts/zoo.sh [OUT]            # OUT defaults to scripts/results/zoo
#   ZOO="convnet:simclr vit:mae" bash scripts/zoo.sh /tmp/zoo    # a subset
#   ZOO_STAGE=pretrain bash scripts/zoo.sh   # only the pre-trainings (the timed part: run it on an idle machine),
#   ZOO_STAGE=finetune ZOO_FT_ARGS="trainer.num_threads=1" bash scripts/zoo.sh   # then probes and fine-tunes
#   ZOO_ARGS="trainer.num_threads=1" ...  # extra overrides for every pre-training (e.g. a shared machine)
#
# ELECTRA runs at the default MLM run's wall-clock budget: ZOO_ELECTRA_STEPS (1,050) steps; with one thread each,
# side by side, an ELECTRA step took 0.40 s and an MLM step 0.42 s. The table shows both runs' wall times.
# A pair whose pretrain run already completed is not run again (delete its folder to re-measure it).
set -euo pipefail
OUT=${1:-scripts/results/zoo}
ZOO=${ZOO:-"convnet:simclr convnet:byol convnet:vicreg convnet:barlow_twins vit:simclr vit:byol vit:vicreg vit:barlow_twins vit:mae transformer:mlm transformer:electra"}
STAGE=${ZOO_STAGE:-all}
PTCLI=${PTCLI:-ptcli}  # PTCLI=.venv/bin/ptcli PYTHON=.venv/bin/python: a venv not on PATH
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"
for pair in $ZOO; do
  model=${pair%%:*}; objective=${pair##*:}; name="${model}_${objective}"; run="$OUT/runs/$name"
  if [ "$model" = transformer ]; then data=pydocs; budget=16; else data=digits; budget=5; fi
  extra=""
  if [ "$objective" = electra ]; then extra="trainer.max_steps=${ZOO_ELECTRA_STEPS:-1050}"; fi
  if [ "$STAGE" != finetune ] && ! grep -qs '"status": "completed"' "$run/run.json"; then
    rm -rf "$run"
    echo "== $name: pretrain" >&2
    # shellcheck disable=SC2086
    $PTCLI pretrain model="$model" objective="$objective" data=$data hydra.run.dir="$run" $extra ${ZOO_ARGS:-} \
      > "$OUT/$name.pretrain.json" 2> "$OUT/$name.pretrain.log" --json
  fi
  [ "$STAGE" = pretrain ] && continue
  if [ "$data" = digits ]; then
    echo "== $name: evaluate" >&2
    # shellcheck disable=SC2086
    $PTCLI evaluate "$run" --json hydra.run.dir="$OUT/runs/$name.eval" ${ZOO_FT_ARGS:-} > "$OUT/$name.evaluate.json" \
      2> "$OUT/$name.evaluate.log"
  fi
  echo "== $name: headstart" >&2
  # shellcheck disable=SC2086
  $PTCLI headstart pretrained="$run" data=$data --budgets $budget --seeds 0,1,2 --json ${ZOO_FT_ARGS:-} \
    hydra.sweep.dir="$OUT/runs/$name.headstart" > "$OUT/$name.headstart.json" 2> "$OUT/$name.headstart.log"
done
[ "$STAGE" = pretrain ] || ${PYTHON:-python} "$(dirname "$0")/zoo_table.py" "$OUT"

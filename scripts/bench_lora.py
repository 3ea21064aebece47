"""LoRA against full fine-tuning on the same budget: pydocs, the same labels per class, seeds and steps (the
finetune defaults: at most 300 steps, early stopping on validation accuracy), from one pretrain run.

    .venv/bin/python scripts/bench_lora.py PRETRAIN_RUN OUT_DIR [--labels 16] [--seeds 0,1,2] [OVERRIDE ...]

Arms: full fine-tuning (``finetune.lora.r=0``, lr 3e-4, the default), LoRA r=8 alpha=16 at the same lr, and
LoRA at lr 1e-3 (adapters start at zero and usually want larger steps). Each run is a real ``ptcli finetune``
process; its ``run.json`` is copied to OUT_DIR/<arm>_seed<S>.json and a table (mean +- std of test accuracy
and macro-F1, trainable parameters, wall time) is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = {
    "full": [],
    "lora_r8": ["finetune.lora.r=8", "finetune.lora.alpha=16"],
    "lora_r8_lr1e-3": ["finetune.lora.r=8", "finetune.lora.alpha=16", "optim.lr=1e-3"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pretrain_run")
    ap.add_argument("out", type=Path)
    ap.add_argument("--labels", type=int, default=16)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("overrides", nargs="*", help="more overrides for every run (e.g. trainer.max_steps=5)")
    args = ap.parse_intermixed_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("ptcli") or f"{sys.prefix}/bin/ptcli"
    rows: dict[str, list[dict]] = {}
    for arm in args.arms.split(","):
        for seed in args.seeds.split(","):
            run_dir = args.out / "runs" / f"{arm}_seed{seed}"
            cmd = [exe, "finetune", f"pretrained={args.pretrain_run}", "data=pydocs",
                   f"data.labels_per_class={args.labels}", f"seed={seed}", *ARMS[arm], *args.overrides,
                   f"hydra.run.dir={run_dir}"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            manifest = json.loads((run_dir / "run.json").read_text())
            (args.out / f"{arm}_seed{seed}.json").write_text(json.dumps(manifest, indent=2) + "\n")
            row = {"arm": arm, "seed": int(seed), "wall_s": round(wall, 1), "step": manifest["step"],
                   **manifest["parameters"], **{k: manifest["metrics"][k] for k in ("test/accuracy", "test/macro_f1")}}
            print(json.dumps({"cmd": " ".join(cmd[1:]), **row}), flush=True)
            rows.setdefault(arm, []).append(row)
    print()
    print(f"{'arm':<16} {'test accuracy':>16} {'test macro-F1':>16} {'trainable':>10} {'of total':>9} "
          f"{'steps':>12} {'wall s':>7}")
    for arm, rs in rows.items():
        acc = [r["test/accuracy"] for r in rs]
        f1 = [r["test/macro_f1"] for r in rs]
        sd = statistics.stdev if len(rs) > 1 else (lambda _: 0.0)
        print(f"{arm:<16} {statistics.mean(acc):>9.4f} ± {sd(acc):.4f} {statistics.mean(f1):>9.4f} ± {sd(f1):.4f} "
              f"{rs[0]['trainable']:>10,} {rs[0]['trainable'] / rs[0]['total']:>8.1%} "
              f"{','.join(str(r['step']) for r in rs):>12} {statistics.mean(r['wall_s'] for r in rs):>7.0f}")


if __name__ == "__main__":
    main()

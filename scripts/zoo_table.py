"""The zoo's tables (and plot) from the files scripts/zoo.sh wrote: python scripts/zoo_table.py OUT.

Images (data=digits), per (encoder, objective): pre-training wall time and the kNN accuracy of the encoder before
and after (validation, from the run's run.json), kNN and linear-probe accuracy on the test split (`ptcli
evaluate`), and the fine-tune at 5 labels per class from the pre-trained encoder vs random init (test accuracy,
mean +- std over seeds 0,1,2, `ptcli headstart`). Text (data=pydocs), per objective: wall time, steps, the
objective's own validation metric, and the same fine-tune comparison at 16 labels per class. Writes OUT/zoo.md,
OUT/zoo.json and OUT/zoo.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def collect(out: Path) -> list[dict]:
    rows = []
    for run in sorted((out / "runs").iterdir()) if (out / "runs").is_dir() else []:
        if "." in run.name or not (run / "run.json").is_file():
            continue
        manifest = _load(run / "run.json")
        if manifest.get("status") != "completed":
            manifest = {"status": manifest.get("status")}  # its time and step are not the measured run's
        # The pretrain's own --json output first: it outlives a run directory that was started again later.
        metrics = _load(out / f"{run.name}.pretrain.json") or manifest.get("metrics") or {}
        ev = _load(out / f"{run.name}.evaluate.json")
        hs = _load(out / f"{run.name}.headstart.json")
        row = (hs.get("rows") or [{}])[0]
        model, _, objective = run.name.partition("_")
        rows.append({
            "model": model, "objective": objective, "status": manifest.get("status"),
            "pretrain_s": manifest.get("duration_s"), "steps": manifest.get("step"),
            "val_knn_init": metrics.get("val/knn_acc_init"), "val_knn": metrics.get("val/knn_acc"),
            "test_knn": ev.get("test/knn_acc"), "test_linear": ev.get("test/linear_acc"),
            "val_mlm_acc": metrics.get("val/mlm_acc"), "val_disc_acc": metrics.get("val/disc_acc"),
            "val_gen_mlm_acc": metrics.get("val/gen_mlm_acc"),
            "finetune_pretrained": row.get("pretrained"), "finetune_random": row.get("random"),
            "head_start": row.get("head_start"), "labels_per_class": row.get("labels_per_class"),
        })
    return rows


def _f(v, fmt="{:.3f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ms(s: dict | None) -> str:
    return "—" if not s or s.get("mean") is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def table(rows: list[dict]) -> str:
    text = [r for r in rows if r["model"] == "transformer"]
    rows = [r for r in rows if r["model"] != "transformer"]
    lines = ["| encoder | objective | pretrain (s) | val kNN init → after | test kNN | test linear | "
             "fine-tune 5/class: pretrained | random init | head start (points) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hs = "—" if r["head_start"] is None else f"{100 * r['head_start']:+.1f}"
        lines.append(f"| {r['model']} | {r['objective']} | {_f(r['pretrain_s'], '{:.0f}')} | "
                     f"{_f(r['val_knn_init'])} → {_f(r['val_knn'])} | {_f(r['test_knn'])} | {_f(r['test_linear'])} | "
                     f"{_ms(r['finetune_pretrained'])} | {_ms(r['finetune_random'])} | {hs} |")
    if text:
        lines += ["", "| text objective | pretrain (s) | steps | val metric | fine-tune 16/class: pretrained | "
                  "random init | head start (points) |", "|---|---|---|---|---|---|---|"]
        for r in text:
            hs = "—" if r["head_start"] is None else f"{100 * r['head_start']:+.1f}"
            metric = (f"mlm_acc {_f(r['val_mlm_acc'])}" if r["val_disc_acc"] is None else
                      f"disc_acc {_f(r['val_disc_acc'])}, generator mlm_acc {_f(r['val_gen_mlm_acc'])}")
            lines.append(f"| {r['objective']} | {_f(r['pretrain_s'], '{:.0f}')} | {r['steps']} | {metric} | "
                         f"{_ms(r['finetune_pretrained'])} | {_ms(r['finetune_random'])} | {hs} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["finetune_pretrained"] and r["finetune_random"] and r["model"] != "transformer"]
    if not rows:
        return
    names = [f"{r['model']}\n{r['objective']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    for dx, key, label in ((-0.2, "finetune_pretrained", "pretrained"), (0.2, "finetune_random", "random init")):
        ax.bar([i + dx for i in x], [r[key]["mean"] for r in rows], 0.4, yerr=[r[key]["std"] for r in rows],
               label=label, capsize=3)
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("test accuracy, 5 labels per class")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("data=digits: fine-tuning from each pre-training vs random init (seeds 0,1,2)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "scripts/results/zoo")
    rows = collect(out)
    (out / "zoo.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows)
    (out / "zoo.md").write_text(text)
    plot(rows, out / "zoo.png")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()

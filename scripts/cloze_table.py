"""The cloze table from scripts/cloze.sh's output: python scripts/cloze_table.py OUT [MORE_OUT ...].

Per pydocs task (package, kind), labels per class and head (classifier, cloze): test accuracy from the pre-trained
model and from random init (mean +- std over seeds), the head start, and that budget's fine-tunes' wall time (mean,
max). Several OUT folders (e.g. budgets run at different times) make one table; writes OUT/cloze.md and
OUT/cloze.json in the first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def collect(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("*.headstart.json")):
        task, _, head = path.name.removesuffix(".headstart.json").partition("_")
        h = json.loads(path.read_text())
        times: dict[str, list[float]] = {}
        for p in (out / "runs" / f"{task}_{head}").glob("*/run.json"):
            run = json.loads(p.read_text())
            budget = next((o.split("=", 1)[1] for o in run["overrides"] if o.startswith("data.labels_per_class=")),
                          "null")
            if run.get("duration_s") is not None:
                times.setdefault(budget, []).append(run["duration_s"])
        for r in h["rows"]:
            ts = times.get(str(r["labels_per_class"]) if r["labels_per_class"] is not None else "null", [])
            rows.append({"task": task, "head": head, "labels_per_class": r["labels_per_class"],
                         "pretrained": r["pretrained"], "random": r["random"], "head_start": r["head_start"],
                         "finetune_s_mean": sum(ts) / len(ts) if ts else None,
                         "finetune_s_max": max(ts) if ts else None})
    return sorted(rows, key=lambda r: (r["task"], r["labels_per_class"] or 1e9, r["head"]))


def table(rows: list[dict]) -> str:
    def ms(s: dict) -> str:
        return f"{s['mean']:.3f} ± {s['std']:.3f}"

    lines = ["| task | labels/class | head | pre-trained | random init | head start (points) "
             "| fine-tune s (mean, max) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = "—" if r["finetune_s_mean"] is None else f"{r['finetune_s_mean']:.0f}, {r['finetune_s_max']:.0f}"
        lines.append(f"| {r['task']} | {r['labels_per_class'] or 'all'} | {r['head']} | {ms(r['pretrained'])} | "
                     f"{ms(r['random'])} | {100 * r['head_start']:+.1f} | {t} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    outs = [Path(a) for a in sys.argv[1:]] or [Path("scripts/results/cloze")]
    out = outs[0]
    rows = sorted((r for o in outs for r in collect(o)),
                  key=lambda r: (r["task"], r["labels_per_class"] or 1e9, r["head"]))
    (out / "cloze.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows)
    (out / "cloze.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()

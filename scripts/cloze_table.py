"""The cloze table from scripts/cloze.sh's output: python scripts/cloze_table.py OUT.

Per pydocs task (package, kind), labels per class and head (classifier, cloze): test accuracy from the pre-trained
model and from random init (mean +- std over seeds), the head start, and the fine-tunes' mean wall time. Writes
OUT/cloze.md and OUT/cloze.json.
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
        runs = (out / "runs" / f"{task}_{head}").glob("*/run.json")
        times = [json.loads(p.read_text()).get("duration_s") for p in runs]
        times = [t for t in times if t is not None]
        for r in h["rows"]:
            rows.append({"task": task, "head": head, "labels_per_class": r["labels_per_class"],
                         "pretrained": r["pretrained"], "random": r["random"], "head_start": r["head_start"],
                         "finetune_s_mean": sum(times) / len(times) if times else None,
                         "finetune_s_max": max(times) if times else None})
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
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "scripts/results/cloze")
    rows = collect(out)
    (out / "cloze.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows)
    (out / "cloze.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()

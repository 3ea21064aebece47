"""Mean +- std over seeds of a `ptcli ... -m` sweep's metrics, grouped by every override but the seed:
python scripts/sweep_table.py SWEEP_DIR [SWEEP_DIR ...] [--metrics best/val/accuracy,test/accuracy] [--ignore KEY,...]
[--exclude KEY=VALUE,...].

Overrides shared by every row are printed once above the table, not in each row; ``--ignore`` drops keys that do
not define a setting (e.g. trainer.num_threads, init=pretrained from a headstart sweep)."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--metrics", default="best/val/accuracy,test/accuracy")
    ap.add_argument("--ignore", default="", help="override keys left out of the grouping")
    ap.add_argument("--exclude", default="", help="skip jobs with any of these overrides (e.g. init=random)")
    args = ap.parse_args()
    ignored = {"seed", *filter(None, args.ignore.split(","))}
    excluded = set(filter(None, args.exclude.split(",")))
    metrics = args.metrics.split(",")
    groups: dict[tuple[str, ...], list[dict]] = {}
    for sweep in args.sweeps:
        for job in json.loads((sweep / "summary.json").read_text())["jobs"]:
            if job["status"] != "completed" or excluded & set(job["overrides"]):
                continue
            key = tuple(o for o in job["overrides"] if o.split("=", 1)[0] not in ignored)
            groups.setdefault(key, []).append(job["metrics"])
    common = set.intersection(*(set(k) for k in groups)) if groups else set()
    if common:
        print("All rows: `" + " ".join(o for o in next(iter(groups)) if o in common) + "`\n")
    print("| " + " | ".join(["overrides", "n", *metrics]) + " |")
    print("|" + "---|" * (len(metrics) + 2))
    for key, runs in sorted(groups.items()):
        cells = []
        for m in metrics:
            values = [r[m] for r in runs if m in r]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}" if values else "—")
        shown = " ".join(o for o in key if o not in common) or "(none)"
        print(f"| {shown} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

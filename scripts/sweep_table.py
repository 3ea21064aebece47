"""Mean +- std over seeds of a `ptcli ... -m` sweep's metrics, grouped by every override but the seed:
python scripts/sweep_table.py SWEEP_DIR [SWEEP_DIR ...] [--metrics best/val/accuracy,test/accuracy]."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--metrics", default="best/val/accuracy,test/accuracy")
    args = ap.parse_args()
    metrics = args.metrics.split(",")
    groups: dict[tuple[str, ...], list[dict]] = {}
    for sweep in args.sweeps:
        for job in json.loads((sweep / "summary.json").read_text())["jobs"]:
            if job["status"] != "completed":
                continue
            key = tuple(o for o in job["overrides"] if not o.startswith("seed="))
            groups.setdefault(key, []).append(job["metrics"])
    print("| " + " | ".join(["overrides", "n", *metrics]) + " |")
    print("|" + "---|" * (len(metrics) + 2))
    for key, runs in sorted(groups.items()):
        cells = []
        for m in metrics:
            values = [r[m] for r in runs if m in r]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}" if values else "—")
        print(f"| {' '.join(key)} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

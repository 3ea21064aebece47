"""``ptcli report``: aggregate run directories into a table, CSV/Markdown files and plots.

Runs are grouped by the config values that differ between them (seed excluded: seeds are what we
average over), so a sweep over ``init`` x ``data.labels_per_class`` x ``seed`` becomes one row per
(init, labels_per_class) with mean, std and n of each metric.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRIC_ORDER = ["test/accuracy", "test/macro_f1", "val/accuracy", "val/mlm_acc", "val/knn_acc", "test/mlm_acc"]
FALLBACK_METRICS = ["val/loss"]
IGNORED_KEYS = {"command", "seed", "run_dir", "resume", "trainer.progress", "trainer.device", "trainer.num_threads"}


@dataclass
class Run:
    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def command(self) -> str:
        return str(self.manifest.get("command"))


@dataclass
class Group:
    key: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    def stats(self, metric: str) -> tuple[float, float, int] | None:
        # Non-finite values (a diverged run, a damaged run.json) would make every statistic NaN or raise.
        values = [float(r.manifest["metrics"][metric]) for r in self.runs
                  if _num((r.manifest.get("metrics") or {}).get(metric))]
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), std, len(values)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(d) if isinstance(d, list) else d
    return out


def find_runs(dirs: list[Path], skipped: list[str] | None = None) -> list[Run]:
    """Every directory below ``dirs`` holding a ``run.json`` (checkpoint folders excluded). A run whose
    ``run.json`` or ``config.yaml`` cannot be read is left out and named in ``skipped`` (file and reason)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    runs, seen = [], set()
    for root in dirs:
        for manifest_path in sorted(root.rglob("run.json")):
            run_dir = manifest_path.parent.resolve()
            if "checkpoints" in run_dir.parts or run_dir in seen:
                continue
            seen.add(run_dir)
            bad = manifest_path
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                if not isinstance(manifest, dict):
                    raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
                if not isinstance(manifest.get("metrics") or {}, dict):
                    raise ValueError("'metrics' is not an object")
                bad = run_dir / "config.yaml"
                cfg = OmegaConf.to_container(OmegaConf.load(bad)) if bad.is_file() else {}
            except (OSError, ValueError, YAMLError, OmegaConfBaseException) as exc:
                if skipped is not None:
                    skipped.append(f"{bad}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                continue
            runs.append(Run(run_dir, manifest, _flatten(cfg)))
    return runs


def group_runs(runs: list[Run]) -> tuple[list[str], list[Group]]:
    """Group by command and by every config key whose value differs between runs of that command
    (except the seed, which is what a group averages over)."""
    varying_by_command: dict[str, list[str]] = {}
    for command in sorted({r.command for r in runs}):
        same = [r for r in runs if r.command == command]
        keys = sorted({k for r in same for k in r.config})
        varying_by_command[command] = [
            k for k in keys if k not in IGNORED_KEYS and not k.startswith("hydra")
            and len({json.dumps(r.config.get(k), default=str) for r in same}) > 1]
    varying = sorted({k for ks in varying_by_command.values() for k in ks})
    groups: dict[str, Group] = {}
    for r in runs:
        key = {"command": r.command, **{k: r.config.get(k) for k in varying_by_command[r.command]}}
        groups.setdefault(json.dumps(key, default=str, sort_keys=True), Group(key)).runs.append(r)
    return varying, sorted(groups.values(), key=lambda g: json.dumps(g.key, default=str, sort_keys=True))


def _sort_value(v: Any) -> tuple:
    # Numbers before strings: a damaged config may mix types in one key, and mixed types do not compare.
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    return (v is None, not number, v if number else 0, "" if number else str(v))


def build_report(dirs: list[Path], out: Path) -> dict[str, Any]:
    skipped: list[str] = []
    runs = [r for r in find_runs(dirs, skipped) if r.manifest.get("status") == "completed"]
    for line in skipped:
        print(f"ptcli: warning: skipped an unreadable run: {line}", file=sys.stderr)
    if not runs:
        from ptcli.errors import UsageError

        raise UsageError(f"no completed run directories (with run.json) under {', '.join(map(str, dirs))}"
                         f"{f' ({len(skipped)} unreadable, named above)' if skipped else ''}.")
    varying, groups = group_runs(runs)
    metrics = [m for m in METRIC_ORDER if any(g.stats(m) for g in groups)] or \
        [m for m in FALLBACK_METRICS if any(g.stats(m) for g in groups)]
    groups.sort(key=lambda g: tuple(_sort_value(g.key.get(k)) for k in ["command", *varying]))
    rows = []
    for g in groups:
        row: dict[str, Any] = dict(g.key)
        row["n"] = len(g.runs)
        for m in metrics:
            s = g.stats(m)
            row[f"{m} mean"], row[f"{m} std"] = (s[0], s[1]) if s else (None, None)
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["command", *varying, "n", *[f"{m} {s}" for m in metrics for s in ("mean", "std")]]
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "report.md").write_text(_markdown(rows, ["command", *varying, "n"], metrics))
    plots = []
    if _plot_label_efficiency(groups, out / "label_efficiency.png"):
        plots.append("label_efficiency.png")
    if _plot_curves(runs, out / "curves.png"):
        plots.append("curves.png")
    return {"rows": rows, "group_keys": ["command", *varying], "metrics": metrics, "runs": len(runs),
            "out": str(out), "plots": plots, "skipped": skipped}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "all" if v is None else str(v)


def _markdown(rows: list[dict], keys: list[str], metrics: list[str]) -> str:
    header = keys + metrics
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_fmt(row.get(k)) for k in keys]
        for m in metrics:
            mean, std = row.get(f"{m} mean"), row.get(f"{m} std")
            cells.append("" if mean is None else f"{mean:.4f} ± {std:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_label_efficiency(groups: list[Group], path: Path) -> bool:
    """Test accuracy vs labels per class, one line per init (and per pretrained run)."""
    ft = [g for g in groups if g.key["command"] == "finetune" and g.stats("test/accuracy")]
    if not ft:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({g.runs[0].config.get("data.labels_per_class") for g in ft}, key=_sort_value)
    xpos = {b: i for i, b in enumerate(budgets)}
    lines: dict[str, list[tuple[int, float, float]]] = {}
    for g in ft:
        label = ", ".join(f"{k}={_fmt(v)}" for k, v in g.key.items()
                          if k not in ("command", "data.labels_per_class")) or "finetune"
        mean, std, _ = g.stats("test/accuracy")  # type: ignore[misc]
        lines.setdefault(label, []).append((xpos[g.runs[0].config.get("data.labels_per_class")], mean, std))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=label[:60])
    ax.set_xticks(range(len(budgets)), [_fmt(b) for b in budgets])
    ax.set_xlabel("labels per class")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("Label efficiency")
    return _save(fig, [ax], path, legend_size=7, dpi=120)


def _plot_curves(runs: list[Run], path: Path, limit: int = 12) -> bool:
    """Train loss and the main validation metric over steps, for up to ``limit`` runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    drawn = 0
    for r in runs[:limit]:
        f = r.path / "metrics.jsonl"
        if not f.is_file():
            continue
        events = _events(f)
        train = [(e["step"], e["loss"]) for e in events if e.get("split") == "train" and _num(e.get("loss"))]
        val_key = next((k for k in ("accuracy", "mlm_acc", "knn_acc") if any(k in e for e in events)), "loss")
        val = [(e["step"], e[val_key]) for e in events if e.get("split") == "val" and _num(e.get(val_key))]
        name = r.path.name if len(r.path.name) > 3 else "/".join(r.path.parts[-2:])
        if train:
            ax_loss.plot(*zip(*train, strict=True), label=name)
        if val:
            ax_val.plot(*zip(*val, strict=True), marker=".", label=f"{name} ({val_key})")
        drawn += bool(train or val)
    if not drawn:
        plt.close(fig)
        return False
    ax_loss.set(xlabel="step", ylabel="train loss", title="Training loss")
    ax_val.set(xlabel="step", ylabel="validation metric", title="Validation")
    return _save(fig, [ax_loss, ax_val], path, legend_size=6, dpi=110)


def _save(fig: Any, axes: list[Any], path: Path, legend_size: int, dpi: int) -> bool:
    """Grid and legend on ``axes``, then write the figure to ``path`` and free it."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True


def _events(path: Path) -> list[dict[str, Any]]:
    """The readable events of a metrics log; a torn or garbled line (a killed run) is skipped, not fatal."""
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and isinstance(e.get("step"), (int, float)):
            events.append(e)
    return events


def _num(v: Any) -> bool:
    try:
        return isinstance(v, (int, float)) and math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ptcli report: {report['runs']} runs")
    for k in report["group_keys"]:
        table.add_column(k)
    table.add_column("n", justify="right")
    for m in report["metrics"]:
        table.add_column(m, justify="right")
    for row in report["rows"]:
        cells = [_fmt(row.get(k)) for k in report["group_keys"]] + [str(row["n"])]
        for m in report["metrics"]:
            mean, std = row.get(f"{m} mean"), row.get(f"{m} std")
            cells.append("" if mean is None else f"{mean:.4f} ± {std:.4f}")
        table.add_row(*cells)
    console = Console(width=None if Console().is_terminal else 200)
    console.print(table)
    files = ["report.csv", "report.md", *report["plots"]]
    console.print(f"wrote {', '.join(files)} to {report['out']}")

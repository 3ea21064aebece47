"""What every evaluation shares: the run being scored, the data it is scored on, and the record of the scores
(``evaluation.json`` and a table on stderr). The recipes ``evaluate`` (text) and ``evaluate_images`` use it."""

from __future__ import annotations

import json
import sys
from typing import Any

from omegaconf import DictConfig

from ptcli.build import component_class, run_config
from ptcli.errors import UsageError
from ptcli.rundir import RunDir


def evaluated_run(cfg: DictConfig, run: RunDir) -> tuple[RunDir, DictConfig, DictConfig]:
    """The run being scored, its (checked) config, and the data to score it on; recorded in ``run.json``."""
    target = RunDir.load(cfg.run_dir)
    target_cfg = run_config(target, cfg.trusted_packages)
    command = target.manifest.get("command")
    if command not in ("pretrain", "finetune"):
        raise UsageError(f"{target.path} is a '{command}' run; evaluate takes a pretrain or finetune run.")
    run.update(evaluated_run=str(target.path), evaluated_command=command)
    return target, target_cfg, _data_config(cfg, target_cfg, run.manifest["overrides"], target.path)


def report(run: RunDir, metrics: dict[str, float], details: dict[str, Any]) -> dict[str, float]:
    """Write ``evaluation.json``, print the table; the metrics."""
    run.write_text("evaluation.json", json.dumps(details, indent=2) + "\n")
    _print_table(metrics, details)
    return metrics


def _data_config(cfg: DictConfig, target_cfg: DictConfig, overrides: list[str], run_path: Any) -> DictConfig:
    """The evaluated run's data, unless the user pointed ``data`` elsewhere on this command line."""
    if any(o.lstrip("+~").split("=", 1)[0].split(".")[0] == "data" for o in overrides):
        return cfg.data
    if getattr(component_class(target_cfg.data, "data"), "downloads", False):
        # A hub name in someone else's config would make this machine download (and, with old datasets
        # versions, run) whatever it names: the user must ask for it on their own command line.
        name = target_cfg.data.get("name")
        raise UsageError(f"the evaluated run was trained on the datasets hub dataset '{name}' (data.name in "
                         f"{run_path}/config.yaml). ptcli does not load a dataset named only by a loaded run; to "
                         f"evaluate on it, say so: data=hf data.name={name}"
                         f"{' data.config=' + str(target_cfg.data.config) if target_cfg.data.get('config') else ''}.")
    return target_cfg.data


def eval_split(splits: dict[str, Any]) -> str:
    for name in ("test", "validation"):
        if name in splits and len(splits[name]):
            return name
    raise UsageError("no test or validation data to evaluate on; pass data.test=FILE")


def _print_table(metrics: dict[str, float], details: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)  # stdout is reserved for --json
    table = Table(title=f"evaluate {details['run']} ({details['split']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    protocols = details.get("protocols", {})
    if protocols:
        table.add_column("protocol")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}", *([protocols.get(k.split("/", 1)[1], "")] if protocols else []))
    console.print(table)
    if "per_class" in details:
        pc = Table(title="per class")
        for col in ("class", "precision", "recall", "f1", "support"):
            pc.add_column(col, justify="left" if col == "class" else "right")
        for name, r in details["per_class"].items():
            pc.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
        console.print(pc)
    sys.stderr.flush()

"""``ptcli runs``: every run directory below a folder, newest first, with its status and key metric."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

KEY_METRICS = ("test/accuracy", "val/accuracy", "val/mlm_acc", "val/knn_acc", "test/mlm_acc", "val/loss")


def list_runs(root: Path) -> list[dict[str, Any]]:
    """One row per run directory below ``root``; a ``run.json`` that cannot be read or is not a manifest gives
    a row with status ``unreadable`` and the reason in ``error`` (never dropped, never fatal)."""
    rows = []
    for manifest_path in root.rglob("run.json"):
        run_dir = manifest_path.parent
        if "checkpoints" in run_dir.parts:
            continue
        try:
            m = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not isinstance(m, dict):
                raise ValueError(f"a JSON {type(m).__name__}, not an object")
        except (OSError, ValueError) as exc:
            rows.append({"dir": str(run_dir), "command": "?", "status": "unreadable", "metric": None,
                         "value": None, "step": None, "duration_s": None, "started_at": "",
                         "error": f"cannot read {manifest_path}: {type(exc).__name__}: {str(exc)[:200]}"})
            continue
        metrics = m.get("metrics") if isinstance(m.get("metrics"), dict) else {}
        key = next((k for k in KEY_METRICS if k in metrics), None)
        status = m.get("status")
        if status == "running" and not _alive(run_dir):
            status = "running?"  # no end recorded: killed hard, or still going elsewhere
        rows.append({"dir": str(run_dir), "command": m.get("command"), "status": status, "metric": key,
                     "value": metrics.get(key) if key else None, "step": m.get("step"),
                     "duration_s": m.get("duration_s"), "started_at": str(m.get("started_at") or ""),
                     "error": m.get("error")})
    rows.sort(key=lambda r: r["started_at"], reverse=True)
    return rows


def warn_unreadable(rows: list[dict[str, Any]]) -> None:
    """One stderr line per unreadable manifest, so a damaged run is seen even when the table is piped."""
    import sys

    for r in rows:
        if r["status"] == "unreadable":
            print(f"ptcli: warning: {r['error']}", file=sys.stderr)


def _alive(run_dir: Path) -> bool:
    # The metrics log of a live run was written recently.
    try:
        import time

        return time.time() - os.path.getmtime(run_dir / "metrics.jsonl") < 600
    except OSError:
        return False


def print_runs(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colors = {"completed": "green", "failed": "red", "interrupted": "yellow", "running": "cyan", "unreadable": "red"}
    table = Table(title=f"{len(rows)} runs")
    for col in ("started", "command", "status", "metric", "steps", "duration", "directory"):
        table.add_column(col, justify="right" if col in ("steps", "duration") else "left")
    for r in rows:
        color = colors.get(str(r["status"]), "white")
        metric = f"{r['metric']}={r['value']:.4f}" if isinstance(r.get("value"), (int, float)) else ""
        duration = f"{r['duration_s']:.0f}s" if isinstance(r.get("duration_s"), (int, float)) else ""
        table.add_row(escape(str(r["started_at"]).replace("+00:00", "Z")), escape(str(r["command"])),
                      f"[{color}]{escape(str(r['status']))}[/{color}]", escape(metric),
                      escape(str(r.get("step") or "")), duration, escape(r["dir"]))
    Console(width=None if Console().is_terminal else 200).print(table)

"""Sweeps whose jobs run in other processes (Hydra's joblib and submitit launchers, any sweeper over them).

In-process launchers report each job's outcome to ``tasks.STATE``; jobs in other processes cannot. A Hydra
callback (``hydra.callbacks.ptcli_sweep`` in conf/hydra/ptcli.yaml) records in the CLI process where the
sweep writes, and the CLI then reads the jobs' outcomes from their run directories: every directory Hydra
launched a job in has a ``.hydra/`` record, and a ``run.json`` unless the job died before ptcli started it.
Imported by Hydra for every run: keep it free of heavy imports.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


@dataclass
class Sweep:
    """The sweep this CLI process ran (set by :class:`SweepCallback`)."""

    dir: Path | None = None
    started_at: float = 0.0
    direction: Any = None  # the sweeper's optimization direction, if it has one (Optuna)
    job_started_at: float = 0.0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


SWEEP = Sweep()


class SweepCallback(Callback):
    """Runs in the CLI process around a multirun; the launcher's jobs may run elsewhere."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        SWEEP.reset()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Resolving the sweep dir here caches ${now:...}, so the launcher uses this very path.
        SWEEP.dir = Path(str(config.hydra.sweep.dir))
        SWEEP.started_at = time.time()
        from ptcli.errors import debug_enabled

        if not debug_enabled():  # jobs in other processes miss the CLI's quieting of progress bars
            os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        direction = config.hydra.sweeper.get("direction")  # Optuna: minimize | maximize | a list of them
        direction = getattr(direction, "name", direction)
        SWEEP.direction = direction if isinstance(direction, str) else None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        SWEEP.job_started_at = time.time()

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        """SIGINT/SIGTERM stop the sweep, not only the job that was running: the trainer turned the signal into
        an interrupted run (checkpoint written, ``run.json`` status ``interrupted``), which would otherwise let
        the launcher go on to the next job. Re-running the same sweep resumes that job and runs the rest."""
        if SWEEP.dir is None:  # a single run, or a job in a launcher's worker process
            return
        manifest_path = Path(str(config.hydra.runtime.output_dir)) / "run.json"
        try:
            fresh = manifest_path.stat().st_mtime >= SWEEP.job_started_at - 1  # not a run the job refused to touch
            manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if fresh else None
        except (OSError, ValueError):
            return
        if not isinstance(manifest, dict) or manifest.get("status") != "interrupted":
            return
        error = str(manifest.get("error") or "")
        print(f"ptcli: sweep {SWEEP.dir} stopped: {error.split(';')[0] or 'interrupted'} in job "
              f"{manifest_path.parent}. Run the same command again to resume that job and run the rest.",
              file=sys.stderr)
        raise SystemExit(143 if error.startswith("SIGTERM") else 130)  # (the launcher maps it to the exit code)


def jobs_started() -> bool:
    """Whether any job of the current sweep was launched (its directory holds Hydra's record)."""
    return SWEEP.dir is not None and any(True for _ in _job_dirs(SWEEP.dir))


def results_from_dirs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One result per job launched into ``sweep_dir``, as ``tasks._run`` would have recorded it."""
    results = []
    for job_dir in _job_dirs(sweep_dir):
        try:
            manifest = json.loads((job_dir / "run.json").read_text())
        except (OSError, ValueError):
            manifest = None
        status = manifest.get("status") if isinstance(manifest, dict) else None
        # A multirun exits 0 or 1, so only "completed or not" matters; "running" = the job process died.
        result = {"run_dir": str(job_dir), "exit_code": 0 if status == "completed" else 1,
                  "metrics": (manifest or {}).get("metrics") or {}}
        current = _hydra_overrides(job_dir)
        comparable = status is not None and current is not None and "overrides" in manifest
        mismatch = overrides_mismatch(manifest["overrides"], current) if comparable else None
        if mismatch:  # the job refused a run of another sweep it found there (tasks._rerun_sweep_job)
            result.update(exit_code=1, status="failed", metrics={}, overrides=current,
                          error=f"sweep job {job_dir}: {mismatch}; left untouched, not reused")
        results.append(result)
    return results


def _hydra_overrides(job_dir: Path) -> list[str] | None:
    """The overrides Hydra launched the job in ``job_dir`` with (its ``.hydra/overrides.yaml``), if recorded."""
    import yaml

    try:
        data = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return [str(o) for o in data] if isinstance(data, list) else None


def _normalized(overrides: list[str]) -> dict[tuple[str, str], str]:
    """Overrides as {(kind, key): value}: the same job compares equal however its overrides were spelled or
    ordered (``optim.lr=1e-3`` and ``optim.lr=0.001``), ``resume=`` aside."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out: dict[tuple[str, str], str] = {}
    for ov in overrides:
        try:
            o = parser.parse_override(ov)
            key, kind = (o.key_or_group + (f"@{o.package}" if o.package else "")), o.type.name
            value = "" if o.value_type is None else (str(o.value()) if o.is_sweep_override()
                                                     else o.get_value_element_as_str())
        except HydraException:
            key, kind, value = ov, "RAW", ""
        if key != "resume":
            out[(kind, key)] = value
    return out


def overrides_mismatch(stored: Any, current: list[str]) -> str | None:
    """Why a job directory's run (its ``run.json`` overrides ``stored``) is not the job launched with
    ``current``, or None when it is the same job."""
    if not (isinstance(stored, list) and all(isinstance(o, str) for o in stored)):
        return f"its run.json has no readable overrides (found {stored!r}), so it cannot be told to be this job"
    if _normalized(stored) == _normalized(current):
        return None
    return (f"it holds a run of other overrides [{' '.join(stored)}] than this job's [{' '.join(current)}] "
            "(the sweep changed since that run)")


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories below ``sweep_dir`` (any ``hydra.sweep.subdir``): those Hydra launched a job in
    during this sweep (``.hydra/`` written since it started: a stale job of an earlier sweep into the same
    directory is left out), or, with ``hydra.output_subdir=null``, those with a ``run.json``."""
    if not sweep_dir.is_dir():
        return []
    records = [p for p in sweep_dir.rglob(".hydra/overrides.yaml") if _visible(p.parent.parent, sweep_dir)]
    if records:
        dirs = {p.parent.parent for p in records if p.stat().st_mtime >= SWEEP.started_at - 2}
    else:
        dirs = {p.parent for p in sweep_dir.rglob("run.json") if _visible(p.parent, sweep_dir)}
    return sorted(dirs, key=lambda d: [(0, int(part), "") if part.isdigit() else (1, 0, part)
                                       for part in d.relative_to(sweep_dir).parts])


def _visible(job_dir: Path, sweep_dir: Path) -> bool:
    return job_dir != sweep_dir and not any(part.startswith(".") for part in job_dir.relative_to(sweep_dir).parts)


def optimization_results(sweep_dir: Path) -> dict[str, Any] | None:
    """The Optuna sweeper's ``optimization_results.yaml`` written by this sweep, if any."""
    path = sweep_dir / "optimization_results.yaml"
    if not path.is_file() or path.stat().st_mtime < SWEEP.started_at - 1:
        return None
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]


def monitored_metric(metrics: dict[str, Any]) -> str | None:
    """The name of a run's key metric: the one that chose its ``checkpoints/best`` (``best/<split>/<name>``:
    pretrain ``best/val/loss``, or ``best/val/knn_acc`` for SimCLR on labeled data; finetune
    ``best/val/accuracy``), else the first of the final validation or test metrics that exists."""
    best = sorted(k for k, v in metrics.items() if k.startswith("best/") and isinstance(v, (int, float)))
    if best:
        return best[0]
    for key in ("val/accuracy", "val/loss", "test/accuracy", "test/loss"):
        if isinstance(metrics.get(key), (int, float)):
            return key
    return None


def natural_direction(metric: str) -> str:
    """How a metric improves: losses and perplexities go down, accuracies and F1 up."""
    name = metric.rsplit("/", 1)[-1]
    return "minimize" if name in ("loss", "ppl") else "maximize"

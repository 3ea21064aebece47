"""Hydra task functions, one per verb, at module level so launchers can pickle them.

Each task opens the run directory Hydra chose, runs its recipe, and records the outcome in
``run.json`` whatever happens. In a sweep, a failing job is recorded and the sweep goes on.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptcli.errors import Interrupted, PtcliError, UsageError, debug_enabled, internal_error_message, is_config_error


@dataclass
class LaunchState:
    """What the tasks of one CLI invocation report back to the launcher (same process)."""

    command: str = ""
    json_out: bool = False
    started: bool = False
    multirun: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)

    def reset(self, command: str, json_out: bool) -> None:
        self.__init__(command=command, json_out=json_out)  # type: ignore[misc]

    def exit_code(self) -> int:
        codes = [r["exit_code"] for r in self.results]
        if not codes:
            return 0
        if self.multirun:
            return 0 if all(c == 0 for c in codes) else 1
        return codes[-1]


STATE = LaunchState()


class TrialFailed:
    """What a failed job returns to Hydra's sweeper instead of a value. It is no number (``float()`` raises), so
    the Optuna sweeper records the trial as failed (``TrialState.FAIL``: never the best, and its sampler does not
    learn from a made-up score) and goes on; the text, which the sweeper logs, names the job and its error.
    (``None`` also fails the trial, but the log then only says ``Got 'None'``; ``nan`` crashes the sweeper, which
    then tells Optuna a failed trial *with* a value; a worst value such as ``inf`` would be recorded as a
    completed trial.)"""

    def __init__(self, run_dir: str | None, error: str) -> None:
        self.run_dir, self.error = run_dir, error

    def __float__(self) -> float:
        raise ValueError(str(self))

    def __repr__(self) -> str:
        first = self.error.splitlines()[0] if self.error else "unknown error"
        return f"ptcli job failed ({self.run_dir or 'no run directory'}): {first}"

    __str__ = __repr__


def _run(command: str, cfg: DictConfig) -> float | TrialFailed | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    STATE.started = True
    hc = HydraConfig.get()
    STATE.multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    out_dir = Path(hc.runtime.output_dir)
    try:
        if STATE.multirun and (out_dir / "run.json").is_file() and not cfg.get("resume"):
            skipped, value = _rerun_sweep_job(out_dir, cfg, overrides)
            if skipped:
                return value
        from ptcli.build import resolve, trust

        resolve(cfg)  # interpolations (${oc.env:X}, ${now:...}) once, type-checked, before anything is written
        trust(cfg)  # before the run directory is written: only registered or trusted components
        from ptcli.runconfig import resolve_run_config

        # The final config (what a pretrained run or checkpoint implies), before config.yaml is written.
        cfg = resolve_run_config(cfg, command, Path(cfg.resume) if cfg.get("resume") else out_dir, overrides)
        run = _open_run(command, cfg, out_dir, overrides)
    except PtcliError as exc:
        # A sweep job refused before its run opened: recorded for the summary as failed with this job's own
        # overrides (its directory may hold another job's run.json, which must not speak for it).
        STATE.results.append({"run_dir": str(out_dir) if STATE.multirun else None, "exit_code": exc.exit_code,
                              "status": "failed", "error": str(exc), "overrides": overrides, "metrics": {}})
        report_error(exc)
        return TrialFailed(str(out_dir), str(exc))
    result: dict[str, Any] = {"run_dir": str(run.path), "exit_code": 0}
    STATE.results.append(result)
    # Errors are recorded and reported here, never raised into Hydra: a sweep goes on after a failed
    # job, and the launcher turns the recorded exit codes into the process exit code.
    try:
        from ptcli.loggers import build_loggers

        if run.writable:
            run.loggers = build_loggers(cfg.get("logger"), run.path, cfg, command)
        recipe = _recipe(command, cfg)
        OmegaConf.set_readonly(cfg, True)  # config.yaml is final: recipes read it, never change it
        metrics = recipe(cfg, run)
        run.finish("completed", metrics=metrics)
        result["metrics"] = metrics
    except PtcliError as exc:
        run.finish("interrupted" if isinstance(exc, Interrupted) else "failed", error=str(exc))
        result["exit_code"] = exc.exit_code
        report_error(exc)
        return TrialFailed(str(run.path), str(exc))
    except KeyboardInterrupt:
        run.finish("interrupted", error="KeyboardInterrupt (second SIGINT: aborted without checkpoint)")
        raise
    except Exception as exc:
        run.finish("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        result["exit_code"] = 2 if is_config_error(exc) else 1  # a config the run could not use is the user's
        report_error(exc)
        return TrialFailed(str(run.path), f"{type(exc).__name__}: {exc}")
    if not run.writable:
        pass  # rank > 0 under torchrun: rank 0 reports
    elif STATE.json_out and not STATE.multirun:
        print_json(metrics)
    elif not STATE.json_out:
        _print_summary(run, metrics)
    return _key_metric(metrics)


def _open_run(command: str, cfg: DictConfig, out_dir: Path, overrides: list[str]) -> Any:
    """Start or resume the run; under torchrun rank 0 does it and the other ranks follow its directory."""
    from ptcli import distributed
    from ptcli.rundir import RunDir

    if not distributed.is_main():
        path = distributed.broadcast_object(None)
        if path is None:
            raise PtcliError("rank 0 could not open the run directory (its error is above)")
        return RunDir.follow(path, cfg)
    try:
        if cfg.get("resume"):
            run = RunDir.resume(cfg.resume, cfg, command=command, overrides=overrides)
        else:
            run = RunDir.start(out_dir, cfg, command=command, overrides=overrides)
    except PtcliError:
        distributed.broadcast_object(None)
        raise
    distributed.broadcast_object(str(run.path))
    return run


def _rerun_sweep_job(out_dir: Path, cfg: DictConfig, overrides: list[str]) -> tuple[bool, float | None]:
    """A sweep re-run into the same sweep dir: skip completed jobs, resume interrupted ones, start dead ones
    without a checkpoint again; returns (skipped, its value). Only a job of the same overrides, and never one
    another process is writing: a job directory holding another job's run (the sweep changed) is refused, not
    reused (its metrics are not this job's) nor discarded (they are someone's results); the user re-runs into a
    new ``hydra.sweep.dir``."""
    from ptcli.checkpoint import is_complete
    from ptcli.rundir import RunDir, lock_holder
    from ptcli.sweeps import overrides_mismatch

    holder = lock_holder(out_dir)
    if holder is not None:
        who = f"process {holder}" if holder else "another process"
        raise UsageError(f"sweep job {out_dir}: {who} is still running this job (it holds its lock); it is left "
                         "untouched. Wait for that sweep to end, then re-run, or re-run into another "
                         "hydra.sweep.dir.")
    previous = RunDir.load(out_dir)
    mismatch = overrides_mismatch(previous.manifest.get("overrides"), overrides)
    if mismatch:
        raise UsageError(f"sweep job {out_dir}: {mismatch}. It is left untouched and its metrics are not taken "
                         "for this job's. Re-run this sweep into a new hydra.sweep.dir (or delete the old one).")
    status = previous.manifest.get("status")
    if status == "completed":
        metrics = previous.manifest.get("metrics") or {}
        STATE.results.append({"run_dir": str(out_dir), "exit_code": 0, "metrics": metrics, "skipped": True})
        print(f"ptcli: {out_dir}: already completed, skipped", file=sys.stderr)
        return True, _key_metric(metrics)
    if is_complete(out_dir / "checkpoints" / "last"):
        print(f"ptcli: {out_dir}: {status} at step {previous.manifest.get('step')}, resuming", file=sys.stderr)
        cfg.resume = str(out_dir)
    else:
        print(f"ptcli: {out_dir}: {status} without a checkpoint, starting it again", file=sys.stderr)
        RunDir.discard(out_dir)
    return False, None


# The recipe of each (command, modality): ``module:function``, imported when chosen. The modality is the one the
# run's model class declares (``ptcli.build.run_modality``); evaluate takes that of the run it scores.
RECIPES: dict[tuple[str, str], str] = {
    ("pretrain", "text"): "ptcli.recipes.pretrain:pretrain",
    ("pretrain", "image"): "ptcli.recipes.pretrain_images:pretrain_images",
    ("finetune", "text"): "ptcli.recipes.finetune:finetune",
    ("finetune", "image"): "ptcli.recipes.finetune_images:finetune_images",
    ("evaluate", "text"): "ptcli.recipes.evaluate:evaluate",
    ("evaluate", "image"): "ptcli.recipes.evaluate_images:evaluate_images",
}


def _recipe(command: str, cfg: DictConfig) -> Callable[[DictConfig, Any], dict[str, float]]:
    import importlib

    from ptcli.runconfig import recipe_modality

    kind = recipe_modality(cfg, command)
    if (command, kind) not in RECIPES:
        raise UsageError(f"ptcli {command} has no recipe for {kind} runs.")
    module, _, name = RECIPES[command, kind].partition(":")
    return getattr(importlib.import_module(module), name)


def _key_metric(metrics: dict[str, float]) -> float | None:
    """What a task returns to Hydra, so sweepers (Optuna) can optimize it: the run's monitored metric, the
    one that chose ``checkpoints/best`` (pretrain ``best/val/loss``: minimize; finetune ``best/val/accuracy``:
    maximize; ``ptcli.sweeps.monitored_metric``)."""
    from ptcli.sweeps import monitored_metric

    key = monitored_metric(metrics)
    return float(metrics[key]) if key else None


def _print_summary(run: Any, metrics: dict[str, float]) -> None:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, (int, float)))
    print(f"ptcli: {run.command} completed: {shown}", file=sys.stderr)
    print(f"ptcli: run directory: {run.path}", file=sys.stderr)


def pretrain_task(cfg: DictConfig) -> float | TrialFailed | None:
    return _run("pretrain", cfg)


def finetune_task(cfg: DictConfig) -> float | TrialFailed | None:
    return _run("finetune", cfg)


def evaluate_task(cfg: DictConfig) -> float | TrialFailed | None:
    return _run("evaluate", cfg)


TASKS = {"pretrain": pretrain_task, "finetune": finetune_task, "evaluate": evaluate_task}


def report_error(exc: BaseException, cause: BaseException | None = None, run_dir: str | Path | None = None) -> None:
    """One paragraph on stderr. ptcli's own errors are the user's to act on; any other exception is a bug,
    reported as an internal error with its traceback saved (in the current run's directory when there is one)."""
    if debug_enabled():
        traceback.print_exception(cause or exc, file=sys.stderr)
    if isinstance(exc, PtcliError) or _out_of_memory(exc):
        print(f"ptcli: error: {exc}", file=sys.stderr)
        return
    if is_config_error(exc):  # a config the schema let through but the run could not use (e.g. ~seed)
        print(f"ptcli: error: config: {' '.join(str(exc).split())}. Check the overrides that set or delete it.",
              file=sys.stderr)
        return
    if run_dir is None and STATE.started and STATE.results:
        run_dir = STATE.results[-1].get("run_dir")  # the job that raised (jobs run one at a time here)
    print(internal_error_message(exc, run_dir), file=sys.stderr)


def _out_of_memory(exc: BaseException) -> bool:
    # Running out of memory is the run's failure (a smaller batch or model fixes it), not a bug.
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def print_json(metrics: dict) -> None:
    sys.stdout.write(json.dumps(metrics, sort_keys=True) + "\n")
    sys.stdout.flush()

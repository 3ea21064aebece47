"""Optional metric loggers beside ``metrics.jsonl`` (which is always written): ``logger=tensorboard``,
``logger=mlflow`` (``MLFLOW_TRACKING_URI``, default a local ``./mlruns`` file store), ``logger=wandb``
(Weights & Biases; ``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_DIR``), or a list such as
``logger=[tensorboard,wandb]``.

``metrics.jsonl`` is the run's record; the loggers are copies of it. A logger that fails while the run trains
is reported once on stderr and dropped, never allowed to fail the run (build_loggers wraps each one).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ptcli.errors import UsageError


class TensorBoardLogger:
    def __init__(self, run_dir: Path, cfg: Any, command: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UsageError("logger=tensorboard needs the tensorboard package: pip install tensorboard") from exc
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{split}/{key}", value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowLogger:
    def __init__(self, run_dir: Path, cfg: Any, command: str) -> None:
        try:
            import mlflow
        except ImportError as exc:
            raise UsageError("logger=mlflow needs mlflow: pip install mlflow-skinny (or mlflow)") from exc
        from omegaconf import OmegaConf

        self.mlflow = mlflow
        mlflow.set_experiment(f"ptcli-{command}")
        self.run = mlflow.start_run(run_name=run_dir.name)
        flat: dict[str, Any] = {}
        _flatten(OmegaConf.to_container(cfg, resolve=True), "", flat)
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        mlflow.set_tag("ptcli.run_dir", str(run_dir.resolve()))

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        metrics = {f"{split}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))}
        self.mlflow.log_metrics(metrics, step=step)

    def close(self, status: str) -> None:
        mlflow_status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.mlflow.end_run(status=mlflow_status)


class WandbLogger:
    """One W&B run per ptcli run: the resolved config (plus ``ptcli.run_dir`` and ``ptcli.command``), every
    logged metric at its trainer step, and in the summary the run directory, its status and its final metrics
    (``run.json``'s, e.g. a fine-tune's best checkpoint scored on test)."""

    def __init__(self, run_dir: Path, cfg: Any, command: str) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise UsageError("logger=wandb needs the wandb package: pip install wandb (or the `loggers` extra)") \
                from exc
        from omegaconf import OmegaConf

        self.run: Any = None
        self.run_dir = run_dir
        config = OmegaConf.to_container(cfg, resolve=True)
        config["ptcli"] = {"run_dir": str(run_dir.resolve()), "command": command}
        # A sweep's jobs live in numbered subdirectories (multirun/<command>/<time>/<n>): grouped by their sweep.
        sweep = run_dir.parent.name if run_dir.name.isdigit() else None
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or f"ptcli-{command}",
                name=f"{sweep}/{run_dir.name}" if sweep else run_dir.name, group=sweep,
                job_type=command, tags=[command], config=config,
                # Beside tensorboard/ in the run directory unless the user chose a place for W&B files.
                dir=os.environ.get("WANDB_DIR") or str(run_dir),
                # resume=RUN continues the same W&B run: the id is fixed by the run directory and its start.
                id=_wandb_id(run_dir), resume="allow",
                reinit="create_new",  # a sweep runs its jobs in one process, one W&B run each
                # W&B would otherwise wrap stdout, where `--json` prints the one object a script parses.
                settings=wandb.Settings(console="off"),
            )
        except Exception as exc:  # no API key, no network, a bad entity: the training itself is still wanted
            _warn(f"logger=wandb could not start a W&B run ({type(exc).__name__}: {exc}); training goes on "
                  "without it (metrics.jsonl has every metric; WANDB_MODE=offline logs without a server).")
            return
        self.run.summary["ptcli/run_dir"] = str(run_dir.resolve())

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if self.run is None:
            return
        metrics = {f"{split}/{k}": float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(metrics, step=step)

    def close(self, status: str) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        run.summary["ptcli/status"] = status
        try:  # RunDir.finish saved run.json before closing the loggers
            final = json.loads((self.run_dir / "run.json").read_text(encoding="utf-8")).get("metrics") or {}
        except (OSError, ValueError):
            final = {}
        run.summary.update({k: v for k, v in final.items() if isinstance(v, (int, float))})
        run.finish(exit_code=0 if status == "completed" else 1)


def _wandb_id(run_dir: Path) -> str | None:
    """A W&B run id that a resume of this run directory finds again, and a new run in the same path does not."""
    try:
        started = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("started_at")
    except (OSError, ValueError):
        return None  # W&B draws one
    return hashlib.sha1(f"{run_dir.resolve()}|{started}".encode()).hexdigest()[:16]


def _warn(message: str) -> None:
    print(f"ptcli: warning: {message}", file=sys.stderr, flush=True)


class _Guarded:
    """A logger whose failure costs only the logger: the first exception is reported and the logger dropped."""

    def __init__(self, name: str, logger: Any) -> None:
        self.name, self.logger = name, logger

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if self.logger is not None:
            self._call("log", step, split, values)

    def close(self, status: str) -> None:
        if self.logger is not None:
            self._call("close", status)
            self.logger = None

    def _call(self, method: str, *args: Any) -> None:
        try:
            getattr(self.logger, method)(*args)
        except Exception as exc:
            _warn(f"logger={self.name} failed in {method} ({type(exc).__name__}: {exc}); the run goes on without "
                  "it (metrics.jsonl has every metric).")
            logger, self.logger = self.logger, None
            if method == "log":
                try:  # let it end what it started (a W&B run marked failed), if it still can
                    logger.close("failed")
                except Exception:
                    pass


def _flatten(d: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(d, dict):
        for k, v in d.items():
            _flatten(v, f"{prefix}{k}.", out)
    else:
        out[prefix[:-1]] = d


LOGGERS = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


def build_loggers(names: Any, run_dir: Path, cfg: Any, command: str) -> list[Any]:
    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise UsageError(f"logger: unknown {unknown}; choose from {sorted(LOGGERS)} (metrics.jsonl is always "
                         "written), e.g. logger=[tensorboard,mlflow]")
    return [_Guarded(n, LOGGERS[n](run_dir, cfg, command)) for n in names]

"""Optional metric loggers beside ``metrics.jsonl`` (which is always written): ``logger=tensorboard``,
``logger=mlflow`` (``MLFLOW_TRACKING_URI``, default a local ``./mlruns`` file store), or
``logger=[tensorboard,mlflow]``."""

from __future__ import annotations

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


def _flatten(d: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(d, dict):
        for k, v in d.items():
            _flatten(v, f"{prefix}{k}.", out)
    else:
        out[prefix[:-1]] = d


LOGGERS = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}


def build_loggers(names: Any, run_dir: Path, cfg: Any, command: str) -> list[Any]:
    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise UsageError(f"logger: unknown {unknown}; choose from {sorted(LOGGERS)} (metrics.jsonl is always "
                         "written), e.g. logger=[tensorboard,mlflow]")
    return [LOGGERS[n](run_dir, cfg, command) for n in names]

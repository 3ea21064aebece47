"""The self-describing run directory.

    config.yaml       the fully resolved config
    run.json          manifest: command, argv, overrides, status, error, times, versions, git, seed,
                      step, metrics (final, "<split>/<name>"), checkpoints
    metrics.jsonl     one JSON object per logged event (step, split, values)
    checkpoints/last  model.safetensors + trainer_state.pt (resume); best: model.safetensors
    tokenizer/        tokenizer.json (text runs)

``run.json`` is rewritten atomically (temp file + rename), so a reader never sees half a manifest.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("ptcli", "torch", "hydra-core", "omegaconf", "datasets", "tokenizers", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so run.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunDir:
    """One run's directory: its manifest, metrics log, config and checkpoints."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._started = time.time()

    @property
    def command(self) -> str:
        return self.manifest["command"]

    @classmethod
    def start(cls, path: str | Path, cfg: DictConfig, command: str, overrides: list[str]) -> RunDir:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        manifest = {
            "command": command,
            "argv": [f"ptcli {command}", *sys.argv[1:]],
            "overrides": overrides,
            "status": "running",
            "error": None,
            "started_at": _now(),
            "ended_at": None,
            "duration_s": None,
            "versions": _versions(),
            "git": _git_commit(),
            "seed": int(cfg.get("seed", 0)),
            "step": 0,
            "metrics": {},
            "checkpoints": {},
        }
        run = cls(path, manifest)
        run.save()
        return run

    @classmethod
    def load(cls, path: str | Path) -> RunDir:
        from ptcli.errors import UsageError

        path = Path(path)
        manifest_path = path / "run.json"
        if not manifest_path.is_file():
            raise UsageError(
                f"'{path}' is not a ptcli run directory (no run.json). Pass a directory written by "
                "ptcli pretrain/finetune, e.g. outputs/pretrain/<timestamp>."
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read '{manifest_path}': {exc}. The run directory is damaged.") from exc
        return cls(path, manifest)

    def config(self) -> DictConfig:
        from ptcli.errors import UsageError

        cfg_path = self.path / "config.yaml"
        try:
            cfg = OmegaConf.load(cfg_path)
        except Exception as exc:
            raise UsageError(f"cannot read '{cfg_path}': {exc}") from exc
        assert isinstance(cfg, DictConfig)
        return cfg

    def save(self) -> None:
        atomic_write_text(self.path / "run.json", json.dumps(_clean(self.manifest), indent=2, sort_keys=False) + "\n")

    def log(self, step: int, split: str, **values: float) -> None:
        event = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}}
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")

    def update(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.save()

    def finish(self, status: str, metrics: dict[str, float] | None = None, error: str | None = None,
               traceback: str | None = None) -> None:
        self.manifest["status"] = status
        self.manifest["error"] = error
        if traceback:
            self.manifest["traceback"] = traceback
        if metrics is not None:
            self.manifest["metrics"] = metrics
        self.manifest["ended_at"] = _now()
        self.manifest["duration_s"] = round(time.time() - self._started, 3)
        self.save()

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

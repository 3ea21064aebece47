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


RESUMABLE_CHANGES = {"resume", "trainer.max_steps", "trainer.progress", "trainer.device", "trainer.num_threads"}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix[:-1]]


def _get(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def adopt_derived(cfg: DictConfig, old: dict[str, Any], new: dict[str, Any], changed: list[str]) -> list[str]:
    """On resume, values the recipe derived at the start (the architecture of ``pretrained=``/``init_from=``,
    the default fine-tuning lr) are not user changes: put the run's back into ``cfg``; return those keys."""
    from_elsewhere = bool(new.get("pretrained") or new.get("init_from"))
    derived = [k for k in changed if (k.split(".")[0] == "model" and from_elsewhere)
               or (k == "optim.lr" and (new.get("optim") or {}).get("lr") is None)]
    if any(k.split(".")[0] == "model" for k in derived):
        cfg.model = old["model"]
    if "optim.lr" in derived:
        cfg.optim.lr = old["optim"]["lr"]
    return derived


class RunDir:
    """One run's directory: its manifest, metrics log, config and checkpoints.

    Under torchrun only rank 0 writes; the other ranks hold a read-only view (``RunDir.follow``) of the
    same directory, so every write below is a no-op for them.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], writable: bool = True) -> None:
        self.path = path
        self.manifest = manifest
        self.writable = writable
        self._started = time.time()
        self.loggers: list[Any] = []

    @classmethod
    def follow(cls, path: str | Path, cfg: DictConfig) -> RunDir:
        """A non-zero rank's view of the run that rank 0 started or resumed (with the same config)."""
        run = cls.load(path)
        run.writable = False
        if cfg.get("resume"):
            old = OmegaConf.to_container(run.config(), resolve=True)
            new = OmegaConf.to_container(cfg, resolve=True)
            adopt_derived(cfg, old, new, _diff(old, new))
        return run

    def write_text(self, name: str, text: str) -> None:
        """Write a file of the run (config.yaml, labels.json, ...) atomically, on rank 0 only."""
        if self.writable:
            atomic_write_text(self.path / name, text)

    @property
    def command(self) -> str:
        return self.manifest["command"]

    @classmethod
    def start(cls, path: str | Path, cfg: DictConfig, command: str, overrides: list[str]) -> RunDir:
        from ptcli.errors import UsageError

        path = Path(path)
        if (path / "run.json").is_file():
            raise UsageError(f"'{path}' already holds a run; pass resume={path} to continue it, or choose another "
                             "hydra.run.dir.")
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

    @staticmethod
    def discard(path: Path) -> None:
        """Remove a dead run's records so the job can start over in the same directory."""
        import shutil

        for name in ("run.json", "metrics.jsonl"):
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "checkpoints", ignore_errors=True)

    @classmethod
    def resume(cls, path: str | Path, cfg: DictConfig, command: str, overrides: list[str]) -> RunDir:
        """Reopen a run in place. Only ``trainer.max_steps`` (and cosmetic keys) may differ."""
        from ptcli.errors import UsageError

        run = cls.load(path)
        if run.manifest.get("command") != command:
            raise UsageError(f"resume={path} is a '{run.manifest.get('command')}' run, not a {command} run.")
        old = OmegaConf.to_container(run.config(), resolve=True)
        new = OmegaConf.to_container(cfg, resolve=True)
        changed = [k for k in _diff(old, new) if k not in RESUMABLE_CHANGES]
        derived = adopt_derived(cfg, old, new, changed)
        changed = [k for k in changed if k not in derived]
        if changed:
            shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in changed[:8])
            raise UsageError(f"resume={path}: the config differs from the run's ({shown}). Only trainer.max_steps "
                             "may change on resume; drop the other overrides or start a new run.")
        step = int(run.manifest.get("step") or 0)
        max_steps = (new.get("trainer") or {}).get("max_steps")
        if run.manifest.get("status") == "completed" and (max_steps is None or max_steps <= step):
            raise UsageError(f"resume={path}: the run already completed {step} steps. To train longer, raise "
                             f"trainer.max_steps above {step}; otherwise there is nothing to resume.")
        atomic_write_text(run.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        run.manifest.setdefault("resumed", []).append({"at": _now(), "step": step, "argv": sys.argv[1:]})
        run.manifest.update(status="running", error=None, ended_at=None, overrides=overrides)
        run.save()
        return run

    def truncate_metrics(self, step: int) -> None:
        """Drop events logged after ``step`` (the resumed checkpoint): they will be logged again."""
        path = self.path / "metrics.jsonl"
        if not self.writable or not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
        atomic_write_text(path, "".join(x + "\n" for x in keep))

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
        if not self.writable:
            return
        atomic_write_text(self.path / "run.json", json.dumps(_clean(self.manifest), indent=2, sort_keys=False) + "\n")

    def log(self, step: int, split: str, **values: float) -> None:
        if not self.writable:
            return
        event = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}}
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
        for logger in self.loggers:
            logger.log(step, split, values)

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
        for logger in self.loggers:
            logger.close(status)
        self.loggers = []

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

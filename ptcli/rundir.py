"""The self-describing run directory.

    config.yaml       the fully resolved config
    run.json          manifest: command, argv, overrides, status, error, times, versions, git, seed,
                      step, metrics (final, "<split>/<name>"), checkpoints
    metrics.jsonl     one JSON object per logged event (step, split, values)
    checkpoints/last  model.safetensors + trainer_state.pt (resume); best: model.safetensors
    tokenizer/        tokenizer.json (text runs)

``run.json`` is rewritten atomically (temp file + rename), so a reader never sees half a manifest.

One writer per directory: the process that starts or resumes a run holds ``fcntl.flock`` on ``.lock`` (which
holds its pid) until the run finishes or the process ends, and ``run.json`` is created exclusively.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` survive a power loss (the file's own fsync does not)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _write_tmp(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def atomic_write_text(path: Path, text: str) -> None:
    os.replace(_write_tmp(path, text), path)
    fsync_dir(path.parent)


def create_exclusive(path: Path, text: str) -> None:
    """Create ``path`` with ``text``, complete or not at all; ``FileExistsError`` if it exists. A hard link
    of a finished temp file is both exclusive and atomic, so no reader sees a half-written file."""
    tmp = _write_tmp(path, text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: exclusive create, then write
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


# --- one writer per run directory -------------------------------------------------------------------------

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are still created exclusively, but a live run is not detected
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
_HELD: dict[Path, int] = {}  # run dir (resolved) -> fd holding its flock, for as long as this process writes it


def _flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _read_pid(lock_file: Path) -> int | None:
    try:
        text = lock_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def lock_holder(path: str | Path) -> int | None:
    """The pid of the process writing the run directory ``path`` (holding its lock), or None if none is."""
    path = Path(path)
    try:
        if path.resolve() in _HELD:
            return os.getpid()
        if fcntl is None:
            return None
        lock_file = path / LOCK
        fd = os.open(lock_file, os.O_RDONLY)
    except (OSError, ValueError):  # no lock file (no run), or a path no file can have (a NUL byte)
        return None
    try:
        # A shared probe: two probes never see each other as holders, and a writer's exclusive lock blocks it.
        if _flock(fd, fcntl.LOCK_SH):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    # The holder writes its pid just after locking: give it a moment rather than name a stale pid.
    pid = None
    for _ in range(50):
        pid = _read_pid(lock_file)
        if pid is not None and _alive(pid):
            return pid
        time.sleep(0.01)
    return pid if pid is not None else 0


def _acquire(path: Path) -> int | None:
    """Lock the run directory ``path`` for this process; the holder's pid if another process holds it."""
    key = path.resolve()
    if key in _HELD:
        return None
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    # A probe (``lock_holder``) holds a shared lock for microseconds: retry briefly before giving up.
    for attempt in range(20 if fcntl is not None else 0):
        if _flock(fd, fcntl.LOCK_EX):
            break
        if attempt == 19:
            os.close(fd)
            return lock_holder(path) or 0
        time.sleep(0.02)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd
    return None


def release(path: str | Path) -> None:
    """Give up this process's lock on a run directory (the run finished, or never started)."""
    fd = _HELD.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def _refuse_locked(path: Path, pid: int, action: str) -> None:
    from ptcli.errors import UsageError

    who = f"process {pid}" if pid else "another process"
    stop = f" or stop it (kill {pid})" if pid else ""
    raise UsageError(f"'{path}' is in use: {who} is writing this run (it holds {path / LOCK}). Wait for it to "
                     f"end{stop} before you {action}, or choose another directory.")


def _hydra_files(command: str) -> set[str]:
    """What Hydra itself puts in a run directory before ptcli's task runs: ``.hydra/`` and the job log."""
    names = {".hydra", LOCK, f"{command}.log"}
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            names.add(f"{HydraConfig.get().job.name}.log")
    except Exception:
        pass  # no Hydra run in this process (a script starting a run directly)
    return names


def check_new_run_dir(path: str | Path, command: str) -> None:
    """Refuse to start a run in ``path`` when it holds a run already or other files (exit 2); a missing or
    empty directory, or one holding only what Hydra writes before the task, is fine."""
    from ptcli.errors import UsageError

    path = Path(path)
    if (path / "run.json").is_file():
        raise UsageError(f"'{path}' already holds a run; pass resume={path} to continue it, or choose another "
                         "hydra.run.dir.")
    if path.exists() and not path.is_dir():
        raise UsageError(f"'{path}' is a file, not a directory; choose another hydra.run.dir.")
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if p.name not in _hydra_files(command))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UsageError(f"'{path}' is not empty and is not a ptcli run (it holds {shown}); ptcli writes a run "
                             "only into a new or empty directory. Choose another hydra.run.dir (or leave it out "
                             "for a fresh outputs/<command>/<timestamp>).")


def _resume_locked_message(path: Path | str, holder: int) -> str:
    who = f"process {holder}" if holder else "another process"
    return (f"resume={path}: the run is still running in {who} (it holds {Path(path) / LOCK}). "
            f"Wait for it to end{f' or stop it (kill {holder})' if holder else ''}, then resume.")


def check_run_dir_arg(args: list[str], command: str) -> None:
    """Before Hydra writes its own files (``.hydra/``, the job log) into the run directory named on the command
    line, refuse one that is not ours to write: a live run to resume, or a directory to start in that holds a
    run or other files. It is then left untouched. ``start``/``resume`` check again under the lock."""
    from ptcli.errors import UsageError

    if any(a in ("-m", "--multirun") for a in args):
        return  # a sweep's jobs are checked one by one (ptcli/tasks.py)
    if os.environ.get("RANK", "0") not in ("", "0"):
        return  # torchrun: rank 0 checks and starts the run; the others follow it, maybe after it began
    value = [a.split("=", 1)[1].strip("'\"") for a in args if a.startswith("resume=")]
    if value and value[-1] not in ("", "null"):
        holder = lock_holder(value[-1])
        if holder is not None:
            raise UsageError(_resume_locked_message(value[-1], holder))
        return
    value = [a.split("=", 1)[1].strip("'\"") for a in args if a.startswith("hydra.run.dir=")]
    if value and value[-1]:
        check_new_run_dir(value[-1], command)


_CHOSEN: dict[str, str] = {}
_INSPECTING = {"-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help", "-sc", "--shell-completion"}


def unique_run_dir(base: str) -> str:
    """``base`` or, when another run took it in the same second, the first free ``base-2``, ``base-3``, ...;
    created here with an exclusive ``mkdir``, so concurrent processes never share one. Hydra's default
    ``hydra.run.dir`` resolves through this (``${ptcli.unique_dir:...}``), before it opens its job log there."""
    chosen = _CHOSEN.get(base)
    # Hydra may resolve hydra.run.dir more than once: one run, one directory. A later run in this process
    # (launched in-process, in the same second) finds that one taken by the run.json written since.
    if chosen is not None and Path(chosen).is_dir() and not (Path(chosen) / "run.json").exists():
        return chosen
    if any(a in _INSPECTING for a in sys.argv[1:]):
        return base  # --cfg/--info print the config and run nothing: create nothing
    parent = Path(base).parent
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        name = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(name)
        except FileExistsError:
            continue
        _CHOSEN[base] = name
        return name
    raise RuntimeError(f"no free run directory name next to {base}")


OmegaConf.register_new_resolver("ptcli.unique_dir", unique_run_dir, replace=True)


def clean_leftovers(path: Path) -> list[str]:
    """Remove what killed writers left behind: temp copies of files written atomically and the ``.tmp-*`` /
    ``.old-*`` checkpoint folders of an interrupted save (after putting back a checkpoint that only survived
    as ``.old-*``). Only the lock holder may call this: then no other process is writing them."""
    removed = []
    for p in path.glob(".*.tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    root = path / "checkpoints"
    if root.is_dir():
        from ptcli.checkpoint import clean_checkpoint_leftovers

        removed += [f"checkpoints/{n}" for n in clean_checkpoint_leftovers(root)]
    return removed


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


# The keys a resume may change. Keys a run derives (ptcli.runconfig.DERIVED) are derived again, or adopted from the
# run (RESUME_ADOPTS), before the run directory is opened: a resumed config compares equal to the stored one.
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


def _stored_config(path: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as plain data, to compare a resumed config with: nothing in it is resolved or
    used (the task checked it with ``ptcli.build.load_run_config`` before; ``ptcli.build.run_config`` loads
    a run's config for use)."""
    from ptcli.errors import UsageError

    try:
        stored = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=False)
    except Exception as exc:  # yaml's and OmegaConf's errors have no common base
        raise UsageError(f"cannot read '{path / 'config.yaml'}': {' '.join(str(exc).split())[:300]}. The run "
                         "directory is damaged.") from None
    if not isinstance(stored, dict):
        raise UsageError(f"'{path / 'config.yaml'}' is not a mapping of config sections; the run directory is "
                         "damaged.")
    return stored


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
        # Checked before the lock file is created, so that a directory that is not ours stays untouched.
        check_new_run_dir(path, command)
        path.mkdir(parents=True, exist_ok=True)
        holder = _acquire(path)
        if holder is not None:
            _refuse_locked(path, holder, "start a run there")
        run = cls(path, manifest)
        try:
            check_new_run_dir(path, command)  # again, now that no other ptcli process can write it
            clean_leftovers(path)
            try:
                create_exclusive(path / "run.json", json.dumps(_clean(manifest), indent=2) + "\n")
            except FileExistsError:
                raise UsageError(f"'{path}' already holds a run; pass resume={path} to continue it, or choose "
                                 "another hydra.run.dir.") from None
            atomic_write_text(path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        except BaseException:
            release(path)
            raise
        return run

    @staticmethod
    def discard(path: Path) -> None:
        """Empty a dead run's directory (a sweep job that never checkpointed) so the job can start over in it.
        Takes the run's lock first and keeps it for the ``start`` that follows: a live run is never touched."""
        from ptcli.errors import UsageError

        path = Path(path)
        if not (path / "run.json").is_file():
            raise UsageError(f"'{path}' holds no run (no run.json): nothing to discard.")
        holder = _acquire(path)
        if holder is not None:
            _refuse_locked(path, holder, "start this job again")
        # Everything but Hydra's own files and the lock: run.json last, so an interrupted discard is retried.
        keep = _hydra_files(str(json.loads((path / "run.json").read_text(encoding="utf-8")).get("command", "")))
        for p in sorted(path.iterdir(), key=lambda p: p.name == "run.json"):
            if p.name in keep:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        fsync_dir(path)

    @classmethod
    def resume(cls, path: str | Path, cfg: DictConfig, command: str, overrides: list[str]) -> RunDir:
        """Reopen a run in place. Only ``trainer.max_steps`` (and cosmetic keys) may differ."""
        from ptcli.errors import UsageError

        run = cls.load(path)
        holder = _acquire(run.path)
        if holder is not None:
            raise UsageError(_resume_locked_message(path, holder))
        try:
            return cls._resume_locked(path, cfg, command, overrides)
        except BaseException:
            release(run.path)
            raise

    @classmethod
    def _resume_locked(cls, path: str | Path, cfg: DictConfig, command: str, overrides: list[str]) -> RunDir:
        from ptcli.errors import UsageError

        run = cls.load(path)  # again: the manifest read before the lock may predate the last writer's end
        clean_leftovers(run.path)
        if run.manifest.get("command") != command:
            raise UsageError(f"resume={path} is a '{run.manifest.get('command')}' run, not a {command} run.")
        old = _stored_config(run.path)
        new = OmegaConf.to_container(cfg, resolve=True)
        # Both are final configs (ptcli.runconfig derived the same values again, or adopted the run's).
        changed = [k for k in _diff(old, new) if k not in RESUMABLE_CHANGES]
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
        # The run's records are final: another process may resume it now (a sweep in this process would
        # otherwise keep one open lock per finished job).
        release(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

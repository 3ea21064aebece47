"""Shared fixtures: offline, isolated caches, and a helper that runs the real CLI (in this process by default)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ptcli.testing import Invocation, invoke

TINY_TRANSFORMER = ["model.dim=32", "model.heads=2", "model.layers=2", "model.ffn_dim=64"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE)
# Under pytest-xdist (pyproject.toml: -n auto) each worker gets one core's worth of threads, it and the processes
# its tests start (before torch is imported): N workers x all cores each would only fight over the cores.
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if XDIST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // XDIST_WORKERS)))

# scripts/setup.sh installs every extra (hf, loggers, bench, sweep, dev): in CI a missing one means a broken
# environment, and a skipped test would hide exactly the features that extra exists for.
STRICT_EXTRAS = os.environ.get("CI") == "true"


class _Deferred(ModuleType):
    """A module imported at its first attribute access: collecting a test file does not pay for a heavy optional
    library (transformers + peft: seconds per xdist worker) that only its tests use."""

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self.__name__), attr)


def require(module: str, reason: str = "an optional extra is not installed") -> ModuleType:
    """``pytest.importorskip`` that fails instead of skipping under ``CI=true``. Presence is checked at once (the
    module's spec), the import itself deferred to first use: an installed but broken library fails there."""
    try:
        found = importlib.util.find_spec(module) is not None
        error: Exception = ModuleNotFoundError(f"No module named {module!r}")
    except (ImportError, ValueError) as exc:  # a parent package that is missing or fails to import
        found, error = False, exc
    if found:
        return sys.modules.get(module) or _Deferred(module)
    msg = f"{reason}: cannot import {module!r} ({error})"  # outside `except`: no chained traceback in the report
    if STRICT_EXTRAS:
        pytest.fail(f"{msg}. CI=true: scripts/setup.sh installs it, so this is a failure, not a skip.",
                    pytrace=False)
    pytest.skip(msg, allow_module_level=True)


def _fail_import_skip(report) -> None:
    # A safety net for any pytest.importorskip that is still used or added later ("could not import ...").
    if STRICT_EXTRAS and report.skipped and "could not import" in str(report.longrepr):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome, report.longrepr = "failed", f"CI=true: skipped for a missing extra: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_import_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    _fail_import_skip(report)
    return report


# Files whose module- or class-scoped fixtures are expensive (a DDP run, a shared pre-training): their tests stay on
# one xdist worker (``--dist loadgroup``), so each fixture is built once; every other test is handed out on its own.
GROUPED_FILES = {
    "test_cloze.py", "test_configs.py", "test_configs_cli.py", "test_distributed.py", "test_features_e2e.py",
    "test_finetune.py", "test_fuzz.py", "test_hf_pretrained.py", "test_lora.py", "test_precision.py",
    "test_probes_sklearn.py", "test_report.py", "test_streaming.py", "test_trust.py", "test_vision.py",
    "test_vision_objectives.py",
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    # The files with slow tests (real processes) first: xdist hands out work in this order, so the workers fill the
    # end of the run with short tests instead of one worker finishing a long file while the other idles.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
    for item in items:
        if item.path.name in GROUPED_FILES:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


def pytest_xdist_node_collection_finished(node, ids) -> None:
    """Under --dist loadgroup each worker reports its grouped tests as "<id>@<group>". pytest-xdist 3.8 writes that
    name through the private ``item._nodeid``, which pytest 9 no longer reads: the groups are then silently ignored
    and every expensive module fixture is built on both workers. So fail, naming the fix (pyproject.toml pins
    pytest < 9)."""
    if node.config.getoption("dist") != "loadgroup":
        return
    lost = [i for i in ids if Path(i.split("::")[0]).name in GROUPED_FILES and "@" not in i]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup: pytest-xdist did not apply the test groups (e.g. {lost[0]}) "
                                f"under pytest {pytest.__version__}; install pytest<9 (bash scripts/setup.sh) or run "
                                "with --dist load.")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    # One cache (corpus, tokenizers) for all xdist workers of this run: ptcli writes its entries atomically.
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cache"
    path.mkdir(exist_ok=True)
    os.environ["PTCLI_CACHE"] = str(path / "ptcli")
    os.environ["HF_DATASETS_CACHE"] = str(path / "hf")
    return path


# A run's outcome: exit code, stdout, stderr (in this process or a real one).
Result = Invocation


# Environment variables that libraries read once, at import (huggingface_hub/datasets' offline flags), or that
# only a new interpreter honours (PYTHONPATH, PATH): a run that changes them needs its own process.
PROCESS_ENV = ("PYTHONPATH", "PATH", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def needs_process(args: tuple[str, ...], env: dict | None) -> bool:
    """What only a real process shows: start-up (--help, no verb), sweeps whose launcher starts processes,
    environment read at import."""
    if not args or any(a in ("-h", "--help") for a in args):
        return True
    if any(a.startswith("hydra/launcher=") and a.split("=", 1)[1] not in ("", "basic") for a in args):
        return True
    return any(k in PROCESS_ENV and os.environ.get(k) != v for k, v in (env or {}).items())


def run_in_process(args: tuple[str, ...], cwd: Path | None, env: dict, timeout: int) -> Result:
    """``ptcli ARGS`` through the real entry point in this process, as the subprocess would run it, with
    everything a run may change in the process put back afterwards (``ptcli.testing.invoke``)."""
    return invoke(args, cwd=cwd, env=env, timeout=timeout)


def run_subprocess(args: tuple[str, ...], cwd: Path | None, env: dict, timeout: int,
                   nproc: int | None = None) -> Result:
    # nproc: under torchrun (the real launcher; --standalone picks a free rendezvous port)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "ptcli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def ptcli(cache_dir):
    """Run ``ptcli ARGS`` (the real entry point) and return exit code and output: in this process (seconds of
    imports saved per call), or in a real subprocess where only a process shows the behaviour (``nproc``,
    ``subprocess=True``, ``needs_process``)."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300,
            nproc: int | None = None, subprocess: bool = False) -> Result:
        full_env = {**os.environ, **OFFLINE, "PTCLI_CACHE": str(cache_dir / "ptcli"),
                    "HF_DATASETS_CACHE": str(cache_dir / "hf"), **(env or {})}
        full_env.pop("PTCLI_DEBUG", None)
        if nproc or subprocess or os.environ.get("PTCLI_TEST_SUBPROCESS") or needs_process(args, env):
            return run_subprocess(args, cwd, full_env, timeout, nproc)
        return run_in_process(args, cwd, full_env, timeout)

    return run


@pytest.fixture(scope="session")
def smoke_pretrain(ptcli, tmp_path_factory) -> Path:
    """One tiny completed pretrain run, shared by tests that need a pretrained encoder."""
    run_dir = tmp_path_factory.mktemp("runs") / "pretrain"
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, f"hydra.run.dir={run_dir}")
    assert r.code == 0, r
    return run_dir


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())

"""One writer per run directory: exclusive start, a lock held while a run is written, unique default names,
and the clean-up of what killed writers leave behind."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import OFFLINE, TINY_TRANSFORMER, read_manifest
from omegaconf import OmegaConf

from ptcli.errors import UsageError
from ptcli.rundir import RunDir, atomic_write_text, lock_holder, release, unique_run_dir

STAMP = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(-\d+)?")


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) with its content: 'left untouched' means equal snapshots."""
    return {str(p.relative_to(root)): p.read_text(errors="replace") if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))}


class HeldLock:
    """A writer in another process, as far as ptcli can tell: an flock on the run's .lock naming our pid, taken
    with fcntl directly (not ptcli's code), so the test also checks the lock protocol itself."""

    def __init__(self, run: Path) -> None:
        self.fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        os.close(self.fd)


def _error(stderr: str) -> str:
    """The one ``ptcli: error:`` paragraph of a refused command."""
    errors = [line for line in stderr.splitlines() if line.startswith("ptcli: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def _env(cache_dir: Path) -> dict[str, str]:
    env = {**os.environ, **OFFLINE, "PTCLI_CACHE": str(cache_dir / "ptcli"), "HF_DATASETS_CACHE": str(cache_dir / "hf")}
    env.pop("PTCLI_DEBUG", None)
    return env


@pytest.mark.slow  # concurrent processes
def test_four_concurrent_default_named_runs_are_four_completed_runs(cache_dir, smoke_pretrain, tmp_path):
    # (smoke_pretrain: the data and tokenizer caches are warm, so the processes only start up and train)
    # Every name of the next two minutes already holds someone's run, so each of the 4 processes must find a
    # free sibling, all at the same moment: the race the default names used to lose (4, not 8: each process
    # costs ~6 s of CPU in imports, and 4 at once already race for the same names).
    taken = tmp_path / "outputs" / "pretrain"
    now = datetime.now()
    for s in range(300):
        d = taken / (now + timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S")
        d.mkdir(parents=True)
        (d / "run.json").write_text('{"command": "pretrain", "status": "completed"}\n')
    before = _snapshot(taken)
    t0, cpu0 = time.time(), _children_cpu()
    procs = [subprocess.Popen([sys.executable, "-m", "ptcli", "pretrain", "debug=smoke", *TINY_TRANSFORMER,
                               "trainer.max_steps=2", "trainer.num_threads=1", f"seed={i}"],
                              cwd=tmp_path, env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    wall, cpu = time.time() - t0, _children_cpu() - cpu0
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    premade = {k.split("/")[0] for k in before}
    new = sorted(d for d in taken.iterdir() if d.name not in premade)
    assert len(new) == 4, [d.name for d in taken.iterdir()]
    assert all(STAMP.fullmatch(d.name) for d in new)
    manifests = [read_manifest(d) for d in new]
    assert all(m["status"] == "completed" for m in manifests)
    assert sorted(m["seed"] for m in manifests) == list(range(4))  # each process wrote its own directory
    for d in new:  # Hydra's job log went to the directory ptcli chose, not to the taken one
        assert (d / "pretrain.log").is_file() and (d / ".hydra" / "overrides.yaml").is_file()
        assert f"seed={read_manifest(d)['seed']}" in (d / ".hydra" / "overrides.yaml").read_text()
    assert {k: v for k, v in _snapshot(taken).items() if k.split("/")[0] in premade} == before
    print(f"4 concurrent smoke runs: {wall:.1f} s wall, {cpu:.1f} s CPU")


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow  # concurrent processes
def test_unique_run_dir_is_race_free_across_processes(tmp_path):
    code = ("import sys, time; from ptcli.rundir import unique_run_dir; t = float(sys.argv[1]);"
            "time.sleep(max(0.0, t - time.time())); print(unique_run_dir('runs/x'))")
    at = str(time.time() + 3)  # all 6 call it at the same instant, after their imports
    procs = [subprocess.Popen([sys.executable, "-c", code, at], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    names = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(names) == sorted(["runs/x", *(f"runs/x-{n}" for n in range(2, 7))])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(Path(n).name for n in names)


def test_resume_of_a_live_run_is_refused_naming_its_pid(ptcli, smoke_pretrain, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_pretrain, run)
    holder = HeldLock(run)
    try:
        assert lock_holder(run) == os.getpid()
        before = _snapshot(run)
        r = ptcli("pretrain", f"resume={run}", "trainer.max_steps=12")
        assert r.code == 2, r
        error = _error(r.stderr)
        assert f"process {os.getpid()}" in error and "still running" in error and f"kill {os.getpid()}" in error
        assert _snapshot(run) == before
        with pytest.raises(UsageError, match=f"still running in process {os.getpid()}"):
            RunDir.resume(run, OmegaConf.create({}), "pretrain", [])  # the check under the lock, in the task
        with pytest.raises(UsageError, match=f"process {os.getpid()}"):
            RunDir.discard(run)  # a sweep re-run never empties a live job
        assert _snapshot(run) == before
    finally:
        holder.release()
    assert lock_holder(run) is None


@pytest.mark.slow  # concurrent processes
def test_resume_while_ptcli_is_training_the_run_is_refused(ptcli, cache_dir, smoke_pretrain, tmp_path):
    import signal

    run = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, "-m", "ptcli", "pretrain", "debug=smoke", *TINY_TRANSFORMER,
                             "trainer.max_steps=100000", "trainer.log_every=1", f"hydra.run.dir={run}"],
                            env=_env(cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        assert lock_holder(run) == proc.pid
        r = ptcli("pretrain", f"resume={run}", "trainer.max_steps=200000")
        assert r.code == 2, r
        assert f"still running in process {proc.pid}" in _error(r.stderr)
        assert proc.poll() is None and read_manifest(run)["status"] == "running"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert read_manifest(run)["status"] == "interrupted" and lock_holder(run) is None


def test_start_in_a_directory_another_process_is_starting_is_refused(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    holder = HeldLock(fresh)  # it has locked, and not yet written run.json
    try:
        with pytest.raises(UsageError, match=f"process {os.getpid()}"):
            RunDir.start(fresh, OmegaConf.create({"seed": 0}), "pretrain", [])
        assert sorted(p.name for p in fresh.iterdir()) == [".lock"]
    finally:
        holder.release()


def test_resume_after_the_writer_died_cleans_its_leftovers(ptcli, smoke_pretrain, tmp_path):
    # What a SIGKILL mid-save leaves: the copied run's .lock names a dead process (nobody holds the flock),
    # and temp folders and files of interrupted writes lie around.
    run = tmp_path / "run"
    shutil.copytree(smoke_pretrain, run)
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "last", ckpts / ".tmp-last-999999")
    (ckpts / ".tmp-last-999999" / "COMPLETE").unlink()
    shutil.copytree(ckpts / "best", ckpts / ".old-best-999998")
    shutil.copytree(ckpts / "last", ckpts / ".tmp-step-00000004-999997")
    (run / ".run.json.tmp-999999").write_text('{"half": ')
    assert lock_holder(run) is None
    step = read_manifest(run)["step"]
    r = ptcli("pretrain", f"resume={run}", f"trainer.max_steps={step + 2}")
    assert r.code == 0, r
    assert read_manifest(run)["status"] == "completed" and read_manifest(run)["step"] == step + 2
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith(".")) == []
    assert not list(run.glob(".*.tmp-*"))
    assert lock_holder(run) is None  # released when the run finished


def test_a_non_run_directory_is_refused_and_left_untouched(ptcli, tmp_path):
    target = tmp_path / "mine"
    (target / "data").mkdir(parents=True)
    (target / "notes.txt").write_text("my notes\n")
    (target / "data" / "x.csv").write_text("a,b\n1,2\n")
    (target / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _snapshot(target)
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, f"hydra.run.dir={target}")
    assert r.code == 2, r
    error = _error(r.stderr)
    assert str(target) in error and "not empty" in error and "notes.txt" in error
    assert _snapshot(target) == before  # not even Hydra's .hydra/ or job log


def test_start_accepts_only_hydras_files_and_refuses_a_second_start(tmp_path):
    cfg = OmegaConf.create({"seed": 3})
    run = tmp_path / "r"
    (run / ".hydra").mkdir(parents=True)
    (run / "pretrain.log").write_text("")
    started = RunDir.start(run, cfg, "pretrain", ["seed=3"])
    try:
        assert lock_holder(run) == os.getpid()
        assert json.loads((run / "run.json").read_text())["seed"] == 3
        assert OmegaConf.load(run / "config.yaml").seed == 3
        with pytest.raises(UsageError, match="already holds a run; pass resume="):
            RunDir.start(run, cfg, "pretrain", [])
    finally:
        started.finish("completed", metrics={})
    assert lock_holder(run) is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "evaluate.log").write_text("")  # another command's log is not Hydra's for this one
    with pytest.raises(UsageError, match="not empty"):
        RunDir.start(tmp_path / "other", cfg, "pretrain", [])
    assert not (tmp_path / "other" / ".lock").exists()


def test_discard_empties_a_dead_run_but_keeps_hydras_files(tmp_path):
    cfg = OmegaConf.create({"seed": 0})
    run = tmp_path / "job"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (run / "pretrain.log").write_text("first attempt\n")
    RunDir.start(run, cfg, "pretrain", []).finish("failed", error="boom")
    (run / "checkpoints" / "x").mkdir(parents=True)
    (run / "labels.json").write_text("{}")
    RunDir.discard(run)
    try:
        assert sorted(p.name for p in run.iterdir()) == [".hydra", ".lock", "pretrain.log"]
        assert (run / "pretrain.log").read_text() == "first attempt\n"
        again = RunDir.start(run, cfg, "pretrain", [])  # the job starts over in the same directory
        again.finish("completed", metrics={})
    finally:
        release(run)
    assert read_manifest(run)["status"] == "completed"


def test_checkpoint_leftovers_are_cleaned_and_an_orphaned_old_checkpoint_restored(tmp_path):
    torch = pytest.importorskip("torch")
    from ptcli.checkpoint import clean_checkpoint_leftovers, is_complete, load_weights, save_checkpoint

    save_checkpoint(tmp_path, "last", {"w": torch.ones(2)})
    save_checkpoint(tmp_path, "best", {"w": torch.full((2,), 2.0)})
    # Killed between the two renames of a save of `last`: only `.old-last-*` holds it, next to the new temp.
    os.replace(tmp_path / "last", tmp_path / ".old-last-41")
    shutil.copytree(tmp_path / ".old-last-41", tmp_path / ".tmp-last-41")
    # A stale `.old-best-*` beside a complete `best`, and a half-copied rotation snapshot.
    shutil.copytree(tmp_path / "best", tmp_path / ".old-best-7")
    (tmp_path / ".tmp-step-00000002-7").mkdir()
    removed = clean_checkpoint_leftovers(tmp_path)
    assert sorted(removed) == [".old-best-7", ".tmp-last-41", ".tmp-step-00000002-7"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]
    assert is_complete(tmp_path / "last") and load_weights(tmp_path / "last")["w"].tolist() == [1.0, 1.0]
    assert load_weights(tmp_path / "best")["w"].tolist() == [2.0, 2.0]


def test_atomic_write_text_fsyncs_the_directory(tmp_path, monkeypatch):
    import stat

    synced: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(tmp_path / "a.json", "{}\n")
    assert synced == [False, True]  # the file's bytes, then the directory entry that the rename changed
    assert (tmp_path / "a.json").read_text() == "{}\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_unique_run_dir_takes_the_next_free_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from ptcli import rundir

    monkeypatch.setattr(rundir, "_CHOSEN", {})
    (tmp_path / "out" / "s").mkdir(parents=True)  # taken by an earlier run of the same second
    (tmp_path / "out" / "s-2").mkdir()
    assert unique_run_dir("out/s") == "out/s-3"
    assert unique_run_dir("out/s") == "out/s-3"  # Hydra may resolve it twice: one run, one name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s", "s-2", "s-3"]
    (tmp_path / "out" / "s-3" / "run.json").write_text("{}")  # that run started: the next launch moves on
    assert unique_run_dir("out/s") == "out/s-4"

"""Sweeps beyond one process: Hydra's joblib and submitit_local launchers (jobs in other processes) and the
Optuna sweeper over ``optim.lr`` (``+hparams_search=pretrain_lr_optuna``). The plugins are the ``sweep``
extra, which ``scripts/setup.sh`` installs, so these tests run in CI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import TINY_TRANSFORMER, read_manifest, require

require("hydra_plugins.hydra_joblib_launcher", "the `sweep` extra is not installed")
require("hydra_plugins.hydra_submitit_launcher", "the `sweep` extra is not installed")
require("hydra_plugins.hydra_optuna_sweeper", "the `sweep` extra is not installed")

FAST = ["debug=smoke", *TINY_TRANSFORMER, "trainer.max_steps=4"]


def _lr(run_dir: Path) -> str:
    return next(o for o in read_manifest(run_dir)["overrides"] if o.startswith("optim.lr="))


def _summary(sweep: Path) -> dict:
    return json.loads((sweep / "summary.json").read_text())


def _assert_all_completed(sweep: Path, n: int) -> dict:
    summary = _summary(sweep)
    assert summary["total"] == n and summary["failed"] == 0, summary
    for job in summary["jobs"]:
        manifest = read_manifest(sweep / job["dir"])
        assert manifest["status"] == "completed" and job["status"] == "completed"
        assert job["metric"] == "best/val/loss" and job["value"] == manifest["metrics"]["best/val/loss"]
    values = [j["value"] for j in summary["jobs"]]
    assert summary["best"]["metric"] == "best/val/loss" and summary["best"]["value"] == min(values)
    return summary


@pytest.mark.slow  # a launcher that starts processes
def test_joblib_sweep_runs_jobs_in_parallel_processes_and_a_failing_job_fails_it(ptcli, tmp_path):
    # One sweep for both (each job is a process that pays seconds of imports): the good job completes in its
    # worker and is the sweep's best, the diverging one fails the sweep, and the parent names its error.
    sweep = tmp_path / "sweep"
    r = ptcli("pretrain", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, "optim.lr=1e-3,1e6",
              "trainer.clip_grad=null", f"hydra.sweep.dir={sweep}")
    assert r.code == 1, r
    assert "Joblib.Parallel(n_jobs=2" in r.stderr
    summary = _summary(sweep)
    assert summary["total"] == 2 and summary["failed"] == 1
    assert sorted(j["dir"] for j in summary["jobs"]) == ["0", "1"]
    by_lr = {_lr(sweep / j["dir"]): j for j in summary["jobs"]}
    good, bad = by_lr["optim.lr=0.001"], by_lr["optim.lr=1000000.0"]
    manifest = read_manifest(sweep / good["dir"])
    assert good["status"] == manifest["status"] == "completed"
    assert good["metric"] == "best/val/loss" and good["value"] == manifest["metrics"]["best/val/loss"]
    assert summary["best"]["dir"] == good["dir"]
    assert bad["status"] == "failed" and bad["exit_code"] == 1 and "non-finite loss" in bad["error"]
    assert read_manifest(sweep / bad["dir"])["status"] == "failed"
    assert "non-finite loss" in r.stderr  # the parent names the job's error


@pytest.mark.slow  # a launcher that starts processes
def test_submitit_local_sweep(ptcli, tmp_path):
    sweep = tmp_path / "sweep"
    r = ptcli("pretrain", "-m", "hydra/launcher=submitit_local", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert r.code == 0, r
    _assert_all_completed(sweep, 2)
    assert list((sweep / ".submitit").glob("*/*_result.pkl")), "jobs did not run through submitit"


@pytest.mark.slow  # four training runs
def test_optuna_searches_lr_and_reports_the_best(ptcli, tmp_path):
    sweep = tmp_path / "sweep"
    # the preset makes it a sweep (no -m); the trials run in this process (Hydra's basic launcher): the launchers
    # that start processes are tested above, and each of their jobs costs seconds of imports
    r = ptcli("pretrain", "+hparams_search=pretrain_lr_optuna", *FAST, f"hydra.sweep.dir={sweep}", "--json")
    assert r.code == 0, r
    summary = _assert_all_completed(sweep, 4)
    assert json.loads(r.stdout) == summary  # --json: the summary, and nothing else, on stdout
    lrs = [float(_lr(sweep / j["dir"]).split("=")[1]) for j in summary["jobs"]]
    assert len(set(lrs)) == 4 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    from omegaconf import OmegaConf

    for j, lr in zip(summary["jobs"], lrs, strict=True):  # the trial's lr is the run's lr
        assert OmegaConf.load(sweep / j["dir"] / "config.yaml").optim.lr == lr
    import yaml

    optuna = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert optuna["best_value"] == summary["best"]["value"] == min(j["value"] for j in summary["jobs"])
    best_job = next(j for j in summary["jobs"] if j["dir"] == summary["best"]["dir"])
    assert f"optim.lr={optuna['best_params']['optim.lr']}" in best_job["overrides"]
    assert summary["best"]["direction"] == "minimize"
    assert f"best job {summary['best']['dir']}: best/val/loss=" in r.stderr


def test_optuna_presets_direction_matches_the_monitored_metric(ptcli):
    for command, direction in (("pretrain", "minimize"), ("finetune", "maximize")):
        r = ptcli(command, f"+hparams_search={command}_lr_optuna", "--cfg", "hydra")
        assert r.code == 0, r
        assert f"direction: {direction}" in r.stdout and "optim.lr: tag(log, interval(" in r.stdout
        assert "mode: MULTIRUN" in r.stdout


@pytest.mark.slow  # a real process
def test_config_error_with_a_launcher_is_a_usage_error(ptcli, tmp_path):
    r = ptcli("pretrain", "-m", "hydra/launcher=joblib", "model=nosuch", "seed=0,1",
              f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.code == 2, r
    assert "nosuch" in r.stderr and not (tmp_path / "sweep" / "summary.json").exists()


def test_key_metric_is_the_monitored_metric():
    from ptcli.tasks import _key_metric

    assert _key_metric({"best/val/loss": 2.0, "val/loss": 2.5, "val/mlm_acc": 0.3}) == 2.0
    assert _key_metric({"best/val/accuracy": 0.8, "val/accuracy": 0.7, "test/accuracy": 0.9}) == 0.8
    assert _key_metric({"test/accuracy": 0.9, "test/loss": 1.0}) == 0.9
    assert _key_metric({}) is None


def test_results_from_dirs_reads_jobs_of_other_processes(tmp_path, monkeypatch):
    from ptcli import sweeps

    def job(name: str, manifest: dict | None, age: float = 0.0) -> None:
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text("[]\n")
        os.utime(d / ".hydra" / "overrides.yaml", (time.time() - age, time.time() - age))
        if manifest is not None:
            (d / "run.json").write_text(json.dumps(manifest))

    monkeypatch.setattr(sweeps, "SWEEP", sweeps.Sweep(dir=tmp_path, started_at=time.time() - 5))
    job("0", {"status": "completed", "metrics": {"best/val/loss": 1.0}})
    job("1", {"status": "failed", "metrics": {}})
    job("2", {"status": "running"})  # the job's process died
    job("3", None)  # died before ptcli opened its run
    job("10", {"status": "completed", "metrics": {}})
    job("4", {"status": "completed"}, age=3600)  # a job of an earlier sweep into the same directory
    (tmp_path / ".submitit" / "1").mkdir(parents=True)
    results = sweeps.results_from_dirs(tmp_path)
    assert [Path(r["run_dir"]).name for r in results] == ["0", "1", "2", "3", "10"]
    assert [r["exit_code"] for r in results] == [0, 1, 1, 1, 0]
    assert sweeps.jobs_started()


WITH_FAILURES = """# @package _global_
# Random sampling, seeded: two trials train, one blows up at run time (lr 1e6, no clipping: non-finite loss),
# one is a config error (mask_rate outside (0, 1)). (Not the grid sampler: hydra-optuna-sweeper 1.3 crashes when
# the grid's last trial fails, as Optuna's stop() then raises outside the sweeper's guard.)
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: random
hydra:
  mode: MULTIRUN
  sweeper:
    direction: minimize
    n_trials: 4
    n_jobs: 1
    sampler:
      seed: 10
    params:
      optim.lr: choice(1e-3, 1e6)
      objective.mask_rate: choice(0.15, 0.3, 1.5)
"""


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_optuna_records_failed_trials_as_failed_and_the_study_goes_on(ptcli, tmp_path):
    conf, sweep = tmp_path / "conf", tmp_path / "sweep"
    (conf / "hparams_search").mkdir(parents=True)
    (conf / "hparams_search" / "with_failures.yaml").write_text(WITH_FAILURES)
    r = ptcli("pretrain", "--config-dir", str(conf), "+hparams_search=with_failures", *FAST,
              "trainer.clip_grad=null", f"hydra.sweep.dir={sweep}", "--json")
    assert r.code == 1, r  # some trials failed
    summary = _summary(sweep)
    assert json.loads(r.stdout) == summary and summary["total"] == 4 and summary["failed"] == 2

    def param(job: dict, key: str) -> float:
        return float(next(o for o in job["overrides"] if o.startswith(key + "=")).split("=")[1])

    kinds = []
    for job in summary["jobs"]:
        manifest = read_manifest(sweep / job["dir"])
        assert job["status"] == manifest["status"]
        kinds.append("config" if param(job, "objective.mask_rate") > 1 else "blow-up" if param(job, "optim.lr") > 1
                     else "ok")
        if param(job, "objective.mask_rate") > 1:
            assert job["status"] == "failed" and job["exit_code"] == 2 and "objective.mask_rate" in job["error"]
        elif param(job, "optim.lr") > 1:
            assert job["status"] == "failed" and job["exit_code"] == 1 and "non-finite loss" in job["error"]
        else:
            assert job["status"] == "completed" and job["value"] == manifest["metrics"]["best/val/loss"]
    assert sorted(kinds) == ["blow-up", "config", "ok", "ok"], kinds  # (the seeded sampler's draw)
    done = [j for j in summary["jobs"] if j["status"] == "completed"]
    import yaml

    optuna = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(done, key=lambda j: j["value"])
    assert optuna["best_value"] == summary["best"]["value"] == best["value"] and summary["best"]["dir"] == best["dir"]
    assert optuna["best_params"]["optim.lr"] == 1e-3
    # The sweeper told Optuna each failed trial as failed (TrialState.FAIL, no value), naming the job's error.
    told = [line for line in r.stderr.splitlines() if "Failed experiment:" in line]
    assert len(told) == 2 and all("ptcli job failed (" in line for line in told), told
    assert sum("non-finite loss" in line for line in told) == 1 and sum("mask_rate" in line for line in told) == 1


def test_trial_failed_is_no_number():
    from ptcli.tasks import TrialFailed

    failed = TrialFailed("multirun/x/3", "non-finite loss at step 3\nmore")
    with pytest.raises(ValueError, match=r"ptcli job failed \(multirun/x/3\): non-finite loss at step 3$"):
        float(failed)
    import pickle

    assert str(pickle.loads(pickle.dumps(failed))) == str(failed)  # crosses joblib/submitit process boundaries


def _hold_lock(job_dir: Path):
    """A live process holding the job's run-dir lock, as a running ptcli job does (ptcli.rundir)."""
    import subprocess
    import sys

    from ptcli import rundir

    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0); os.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(job_dir / rundir.LOCK)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow  # three sweeps and a lock held by another process
def test_rerun_refuses_jobs_of_other_overrides_and_never_touches_a_live_one(ptcli, tmp_path):
    from ptcli import rundir

    sweep = tmp_path / "sweep"
    args = ["pretrain", "-m", *FAST, "trainer.max_steps=2", f"hydra.sweep.dir={sweep}"]
    r = ptcli(*args, "seed=0,1,2")
    assert r.code == 0, r
    # Job 2 looks like a run still going in another process: status running, its lock held by a live pid.
    manifest = read_manifest(sweep / "2")
    (sweep / "2" / "run.json").write_text(json.dumps({**manifest, "status": "running"}))

    def files() -> dict:  # what ptcli wrote (Hydra rewrites .hydra/ and its log before any task runs)
        return {d: {p.relative_to(sweep / d): p.read_bytes() for p in (sweep / d).rglob("*") if p.is_file()
                    and ".hydra" not in p.parts and p.suffix != ".log" and p.name != rundir.LOCK} for d in ("1", "2")}

    before = files()
    holder = _hold_lock(sweep / "2")
    try:
        r = ptcli(*args, "seed=0,5,2")  # job 1 is now seed=5: not the run in 1/
    finally:
        holder.kill()
        holder.wait()
    assert r.code == 1, r
    summary = _summary(sweep)
    jobs = {j["dir"]: j for j in summary["jobs"]}
    assert jobs["0"]["status"] == "completed" and "already completed, skipped" in r.stderr
    refused = jobs["1"]
    assert refused["status"] == "failed" and refused["metrics"] == {} and refused["value"] is None
    assert "seed=5" in refused["overrides"] and "seed=1" not in refused["overrides"]
    assert str(sweep / "1") in refused["error"] and "seed=1]" in refused["error"] and "seed=5]" in refused["error"]
    live = jobs["2"]
    assert live["status"] == "failed" and f"process {holder.pid}" in live["error"]
    assert summary["failed"] == 2 and summary["best"]["dir"] == "0"
    assert files() == before  # neither reused, discarded nor resumed
    # The original sweep again: every job is its own, so all are taken as they are (2: dead now, resumed).
    r = ptcli(*args, "seed=0,1,2")
    assert r.code == 0, r
    assert r.stderr.count("already completed, skipped") == 2 and _summary(sweep)["failed"] == 0


def test_results_from_dirs_fails_a_job_that_found_another_sweeps_run(tmp_path, monkeypatch):
    from ptcli import sweeps

    monkeypatch.setattr(sweeps, "SWEEP", sweeps.Sweep(dir=tmp_path, started_at=time.time() - 5))
    for name, launched in (("0", ["seed=0", "optim.lr=1e-3"]), ("1", ["seed=7"])):
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in launched))
        (d / "run.json").write_text(json.dumps({"status": "completed", "overrides": ["optim.lr=0.001", "seed=0"],
                                                "metrics": {"best/val/loss": 1.0}}))
    ok, other = sweeps.results_from_dirs(tmp_path)
    assert ok["exit_code"] == 0 and ok["metrics"] == {"best/val/loss": 1.0}  # same job, spelled differently
    assert other["exit_code"] == 1 and other["status"] == "failed" and other["metrics"] == {}
    assert other["overrides"] == ["seed=7"] and "seed=0]" in other["error"]

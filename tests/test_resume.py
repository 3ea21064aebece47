"""Crash safety: exact resume, signals, non-finite losses, refused resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import OFFLINE, TINY_TRANSFORMER, read_manifest, read_metrics
from safetensors.torch import load_file

SMALL = ["debug=smoke", *TINY_TRANSFORMER, "trainer.log_every=2", "trainer.eval_every=100",
         "trainer.checkpoint_every=10"]


def _weights(run):
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def _spawn(args, env_extra=None):
    env = {**os.environ, **OFFLINE, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "ptcli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _wait_for_step(run, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.jsonl").is_file() and any(e["step"] >= step for e in read_metrics(run)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("run did not reach the step in time")


@pytest.mark.slow  # a signal to a real process
def test_sigkill_and_resume_matches_uninterrupted(ptcli, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = [*SMALL, "trainer.max_steps=16", "trainer.checkpoint_every=1"]
    r = ptcli("pretrain", *args, f"hydra.run.dir={full}")
    assert r.code == 0, r
    proc = _spawn(["pretrain", *args, f"hydra.run.dir={killed}"], {"PTCLI_STEP_DELAY": "0.05"})
    _wait_for_step(killed, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_manifest(killed)["status"] == "running"  # killed hard: nothing could record it
    r = ptcli("pretrain", f"resume={killed}")  # alone: the run's stored overrides are replayed
    assert r.code == 0, r
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bitwise identical
    train = lambda run: [(e["step"], e["loss"]) for e in read_metrics(run) if e["split"] == "train"]  # noqa: E731
    assert train(full) == train(killed)


@pytest.mark.slow  # a signal to a real process
def test_sigint_interrupts_with_checkpoint_and_resumes(ptcli, tmp_path):
    run = tmp_path / "run"
    args = [*SMALL, "trainer.max_steps=30"]
    proc = _spawn(["pretrain", *args, f"hydra.run.dir={run}"], {"PTCLI_STEP_DELAY": "0.1"})
    _wait_for_step(run, 4, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    m = read_manifest(run)
    assert m["status"] == "interrupted" and "SIGINT" in m["error"]
    assert (run / "checkpoints" / "last" / "COMPLETE").is_file()
    stopped_at = m["step"]
    assert 4 <= stopped_at < 30
    r = ptcli("pretrain", *args, f"resume={run}")
    assert r.code == 0, r
    m = read_manifest(run)
    assert m["status"] == "completed" and m["step"] == 30 and m["resumed"][0]["step"] == stopped_at


@pytest.mark.slow  # a signal to a real process
def test_sigterm_exits_143(tmp_path):
    run = tmp_path / "run"
    proc = _spawn(["pretrain", *SMALL, "trainer.max_steps=60", f"hydra.run.dir={run}"], {"PTCLI_STEP_DELAY": "0.1"})
    _wait_for_step(run, 2, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert read_manifest(run)["status"] == "interrupted"


def test_resume_refuses_changed_config_and_completed_runs(ptcli, smoke_pretrain, tmp_path):
    r = ptcli("pretrain", "debug=smoke", "model.dim=64", f"resume={smoke_pretrain}")
    assert r.code == 2 and "model.dim" in r.stderr, r
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, f"resume={smoke_pretrain}")
    assert r.code == 2 and "already completed" in r.stderr, r
    assert read_manifest(smoke_pretrain)["status"] == "completed"


def test_non_finite_loss_fails_with_step(ptcli, tmp_path):
    run = tmp_path / "run"
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, "optim.lr=1e6", "trainer.clip_grad=null",
              f"hydra.run.dir={run}")
    assert r.code == 1, r
    m = read_manifest(run)
    assert m["status"] == "failed" and "non-finite loss at step" in m["error"]
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_sweep_with_a_failing_job_then_rerun_only_that_job(ptcli, tmp_path):
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    text = "\n".join(" ".join(words[(i + j) % 12] for j in range(30)) for i in range(300)) + "\n"
    good, late = tmp_path / "good.txt", tmp_path / "late.txt"
    good.write_text(text)
    sweep = tmp_path / "sweep"
    args = ["pretrain", "-m", "debug=smoke", *TINY_TRANSFORMER, "data=text", f"data.train={good},{late}", "seed=0,1",
            "tokenizer.vocab_size=60", "trainer.batch_size=4", "trainer.max_steps=4", f"hydra.sweep.dir={sweep}"]
    r = ptcli(*args)
    assert r.code == 1, r  # one job of the sweep failed
    summary = json.loads((sweep / "summary.json").read_text())
    statuses = sorted(j["status"] for j in summary["jobs"])
    assert statuses == ["completed", "completed", "failed", "failed"] and summary["failed"] == 2
    failed = [j for j in summary["jobs"] if j["status"] == "failed"]
    assert all("late.txt" in j["error"] for j in failed)
    first_end = {j["dir"]: read_manifest(sweep / j["dir"])["ended_at"] for j in summary["jobs"]}
    late.write_text(text)  # fix the input, re-run the same sweep into the same directory
    r = ptcli(*args)
    assert r.code == 0, r
    assert r.stderr.count("already completed, skipped") == 2
    summary = json.loads((sweep / "summary.json").read_text())
    assert all(j["status"] == "completed" for j in summary["jobs"])
    for j in summary["jobs"]:
        if j["dir"] not in {f["dir"] for f in failed}:
            assert read_manifest(sweep / j["dir"])["ended_at"] == first_end[j["dir"]]  # untouched


@pytest.mark.slow  # a signal to a real process
def test_sigkill_during_checkpoint_write_keeps_last_loadable(tmp_path):
    from ptcli.checkpoint import is_complete, load_state, load_weights

    run = tmp_path / "run"
    proc = _spawn(["pretrain", *SMALL, "trainer.max_steps=40", "trainer.checkpoint_every=2", f"hydra.run.dir={run}"],
                  {"PTCLI_CHECKPOINT_PAUSE": "0.5"})
    ckpts = run / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until `last` exists AND a newer write is in flight
        if (ckpts / "last").is_dir() and list(ckpts.glob(".tmp-last-*")):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    else:  # killing at any other moment would not test a kill during the write
        proc.kill()
        seen = sorted(p.name for p in ckpts.glob("*"))
        pytest.fail(f"no checkpoint write was caught in flight within 120 s; checkpoints/ held {seen}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = ckpts / "last"
    assert is_complete(last)
    assert load_weights(last) and load_state(last)["step"] >= 2


def test_keep_last_rotation_never_touches_best(ptcli, tmp_path):
    run = tmp_path / "run"
    r = ptcli("pretrain", *SMALL, "trainer.max_steps=12", "trainer.checkpoint_every=2", "trainer.keep_last=3",
              "trainer.eval_every=4", f"hydra.run.dir={run}")
    assert r.code == 0, r
    ckpts = run / "checkpoints"
    steps = sorted(p.name for p in ckpts.glob("step-*"))
    assert steps == ["step-00000010", "step-00000012"]  # keep_last=3: last + the two newest snapshots
    assert (ckpts / "best" / "COMPLETE").is_file() and (ckpts / "last" / "COMPLETE").is_file()
    assert read_manifest(run)["checkpoints"]["history"] == steps

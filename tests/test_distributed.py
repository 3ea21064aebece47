"""Data-parallel (DDP) and sharded (FSDP2) training under the real torchrun, 2 CPU processes on gloo."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import OFFLINE, TINY_TRANSFORMER, read_manifest, read_metrics

pytestmark = pytest.mark.slow  # torchrun starts real processes

SMOKE = ["debug=smoke", *TINY_TRANSFORMER]


def losses(run_dir) -> list[tuple[int, str, float]]:
    return [(e["step"], e["split"], e["loss"]) for e in read_metrics(run_dir)]


# The README's claim. Measured: 1.2e-7 (DDP and FSDP against one process, 2 gloo ranks, smoke settings).
README_REL = 1e-6


def wait_for_step(run, step: int, proc, timeout: float = 120) -> None:
    """Until run.json records ``step``; fails (instead of signalling at an arbitrary moment) if it never does."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "run.json").is_file() and read_manifest(run).get("step", 0) >= step:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before step {step}: {proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"the run did not reach step {step} within {timeout} s")


def assert_same_losses(a, b, rel: float = README_REL) -> None:
    la, lb = losses(a), losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb] and la
    for (step, split, x), (_, _, y) in zip(la, lb, strict=True):
        assert abs(x - y) <= rel * abs(x), (step, split, x, y)


@pytest.fixture(scope="session")
def ddp_run(ptcli, tmp_path_factory):
    """A 2-process DDP pretrain, run without hydra.run.dir: rank 0 names the one run directory. Session-scoped, so
    that it is built once per worker even if the file's tests were ever split (they were under pytest 9, which
    broke xdist's groups: tests/conftest.py)."""
    cwd = tmp_path_factory.mktemp("ddp")
    r = ptcli("pretrain", "trainer.strategy=ddp", *SMOKE, cwd=cwd, nproc=2)
    assert r.code == 0, r
    runs = list((cwd / "outputs" / "pretrain").iterdir())
    assert len(runs) == 1, runs  # no per-rank timestamped directories
    return runs[0]


def test_ddp_matches_single_process_with_the_same_global_batch(ptcli, ddp_run, tmp_path):
    single = tmp_path / "single"
    r = ptcli("pretrain", *SMOKE, f"hydra.run.dir={single}")
    assert r.code == 0, r
    m = read_manifest(ddp_run)
    assert m["status"] == "completed" and m["step"] == 20
    assert (ddp_run / "checkpoints" / "best" / "model.safetensors").is_file()
    # One writer: each logged step appears once in metrics.jsonl.
    assert_same_losses(single, ddp_run)


def test_fsdp_checkpoint_is_evaluated_by_one_process(ptcli, ddp_run, tmp_path):
    run = tmp_path / "fsdp"
    r = ptcli("pretrain", "trainer.strategy=fsdp", *SMOKE, f"hydra.run.dir={run}", nproc=2)
    assert r.code == 0, r
    assert read_manifest(run)["status"] == "completed"
    assert_same_losses(ddp_run, run)  # sharding changes where weights live, not the math
    r = ptcli("evaluate", str(run), "--json", f"hydra.run.dir={tmp_path / 'eval'}")
    assert r.code == 0, r
    ref = ptcli("evaluate", str(ddp_run), "--json", f"hydra.run.dir={tmp_path / 'eval-ddp'}")
    import json

    assert json.loads(r.stdout)["test/loss"] == pytest.approx(json.loads(ref.stdout)["test/loss"], rel=1e-4)


def test_ddp_killed_and_resumed_matches_uninterrupted(ptcli, ddp_run, cache_dir, tmp_path):
    import os

    run = tmp_path / "killed"
    env = {**os.environ, **OFFLINE, "PTCLI_CACHE": str(cache_dir / "ptcli"), "HF_DATASETS_CACHE": str(cache_dir / "hf"),
           "PTCLI_STEP_DELAY": "0.3"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ptcli",
           "pretrain", "trainer.strategy=ddp", *SMOKE, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(run, 10, proc)  # the first checkpoint, then stop the job mid-way
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    proc.communicate(timeout=120)
    m = read_manifest(run)
    assert m["status"] == "interrupted" and 10 <= m["step"] < 20, m
    r = ptcli("pretrain", "trainer.strategy=ddp", *SMOKE, f"resume={run}", nproc=2)
    assert r.code == 0, r
    assert read_manifest(run)["status"] == "completed"
    assert_same_losses(ddp_run, run)


def test_finetune_under_ddp(ptcli, ddp_run, tmp_path):
    run = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={ddp_run}", "trainer.strategy=ddp", "debug=smoke", f"hydra.run.dir={run}",
              nproc=2)
    assert r.code == 0, r
    m = read_manifest(run)
    assert m["status"] == "completed" and "test/accuracy" in m["metrics"]


def test_global_batch_must_divide_over_ranks(ptcli, tmp_path):
    run = tmp_path / "r"
    r = ptcli("pretrain", "trainer.strategy=ddp", *SMOKE, "trainer.batch_size=7", f"hydra.run.dir={run}", nproc=2)
    # torchrun exits 1 whenever a rank fails and reports each rank's own exit code: the first failure (its
    # "Root Cause") must be ptcli's usage error, 2; a rank still running then is stopped by torchrun (-15).
    assert r.code == 1, r
    codes = re.findall(r"exitcode\s+:\s*(-?\d+)", r.stderr)
    root = re.findall(r"exitcode\s+:\s*(-?\d+)", r.stderr.split("Root Cause")[-1])[:1]
    assert root == ["2"] and set(codes) <= {"2", "-15"} and len(codes) == 2, r
    assert "ptcli: error: trainer.batch_size=7" in r.stderr and "multiple of 2" in r.stderr, r
    assert "Traceback" not in r.stderr.split("failed (exitcode")[0], r  # the ranks' output, before torchrun's
    assert not (run / "checkpoints").exists()


def test_streaming_under_ddp_resumes_with_each_ranks_position(ptcli, cache_dir, tmp_path):
    """Each rank streams its own shard; an interrupted DDP streaming run resumes every rank's stream where
    it stopped, so it ends with the weights of an uninterrupted one."""
    import os

    import torch
    from safetensors.torch import load_file
    from test_streaming import _corpus_file

    data = tmp_path / "corpus.txt"
    _corpus_file(data)
    args = ["pretrain", "trainer.strategy=ddp", *SMOKE, "data=text", f"data.train={data}", "data.streaming=true",
            "data.block_size=32", "data.shuffle_buffer=8", "trainer.max_steps=24", "trainer.eval_every=12"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = ptcli(*args, f"hydra.run.dir={full}", nproc=2)
    assert r.code == 0, r
    assert read_manifest(full)["status"] == "completed"
    env = {**os.environ, **OFFLINE, "PTCLI_CACHE": str(cache_dir / "ptcli"), "HF_DATASETS_CACHE": str(cache_dir / "hf"),
           "PTCLI_STEP_DELAY": "0.3"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ptcli", *args,
           f"hydra.run.dir={killed}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(killed, 12, proc)  # past the first checkpoint, then stop both ranks
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    m = read_manifest(killed)
    assert m["status"] == "interrupted" and 12 <= m["step"] < 24, m
    r = ptcli(*args, f"resume={killed}", nproc=2)
    assert r.code == 0, r
    a = load_file(str(full / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert_same_losses(full, killed)

"""``resume=RUN`` alone: a run started with overrides resumes with only ``resume=RUN`` on the command line, and
fine-tune and SimCLR runs resume bitwise like MLM's. Stored overrides are untrusted input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRANSFORMER, read_manifest, read_metrics
from safetensors.torch import load_file

# SIGTERM lands between steps; log every step so the wait below sees each one.
EVERY_STEP = ["trainer.log_every=1", "trainer.checkpoint_every=1"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def _train_losses(run: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in read_metrics(run) if e["split"] == "train"]


def _interrupt(ptcli, args: list[str], run: Path, at_step: int) -> int:
    """``ptcli ARGS hydra.run.dir=RUN``, sent SIGTERM right after step ``at_step`` (``PTCLI_SIGTERM_AT_STEP``: the
    run signals itself, through the same handler as a signal from outside; tests/test_resume.py signals real
    processes); the step it stopped at (checkpointed)."""
    r = ptcli(*args, f"hydra.run.dir={run}", env={"PTCLI_SIGTERM_AT_STEP": str(at_step)})
    assert r.code == 143, r
    manifest = read_manifest(run)
    assert manifest["status"] == "interrupted" and manifest["step"] == at_step, manifest
    return manifest["step"]


def _resume_alone(ptcli, command: str, run: Path):
    r = ptcli(command, f"resume={run}")
    assert r.code == 0, r
    manifest = read_manifest(run)
    assert manifest["status"] == "completed" and manifest["resumed"], manifest
    return r, manifest


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_finetune_resumed_with_resume_alone_is_bitwise_exact(ptcli, smoke_pretrain, tmp_path):
    args = ["finetune", "debug=smoke", f"pretrained={smoke_pretrain}", "data.labels_per_class=8", "seed=3",
            "trainer.max_steps=12", "trainer.eval_every=4", "trainer.patience=2", *EVERY_STEP]
    full, cut = tmp_path / "full", tmp_path / "cut"
    r = ptcli(*args, f"hydra.run.dir={full}")
    assert r.code == 0, r
    stopped = _interrupt(ptcli, args, cut, at_step=5)
    assert 5 <= stopped < 12
    fitted = {name: (cut / name).read_bytes() for name in ("labels.json", "subsample.json")}
    r, manifest = _resume_alone(ptcli, "finetune", cut)
    assert manifest["resumed"][0]["step"] == stopped and manifest["step"] == read_manifest(full)["step"]
    assert f"pretrained={smoke_pretrain}" in manifest["overrides"]  # the stored overrides were applied
    _assert_bitwise_equal(full, cut)
    assert _train_losses(full) == _train_losses(cut)
    assert read_manifest(full)["metrics"] == manifest["metrics"]
    assert {name: (cut / name).read_bytes() for name in fitted} == fitted


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_simclr_resumed_with_resume_alone_is_bitwise_exact(ptcli, tmp_path):
    args = ["pretrain", "model=convnet", "objective=simclr", "data=digits", "debug=smoke", "model.width=8",
            "model.stages=2", "objective.proj_dim=16", "objective.proj_hidden=32", "trainer.batch_size=32",
            "trainer.max_steps=10", "trainer.eval_every=5", "seed=2", *EVERY_STEP]
    full, cut = tmp_path / "full", tmp_path / "cut"
    r = ptcli(*args, f"hydra.run.dir={full}")
    assert r.code == 0, r
    stopped = _interrupt(ptcli, args, cut, at_step=3)
    assert 3 <= stopped < 10
    _, manifest = _resume_alone(ptcli, "pretrain", cut)
    assert manifest["step"] == 10 and "objective=simclr" in manifest["overrides"]
    _assert_bitwise_equal(full, cut)
    assert _train_losses(full) == _train_losses(cut)
    full_metrics = read_manifest(full)["metrics"]
    assert {k: v for k, v in full_metrics.items() if "init" not in k} == manifest["metrics"]


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_resumed_finetune_keeps_its_labels_and_subsample(ptcli, smoke_pretrain, tmp_path):
    """Tampered files prove it: the resumed run trains on the stored subsample and label order, and leaves both
    files as they are instead of fitting them again."""
    args = ["finetune", "debug=smoke", f"pretrained={smoke_pretrain}", "data.labels_per_class=8", "seed=5",
            "trainer.max_steps=10", "trainer.eval_every=5", *EVERY_STEP]
    run = tmp_path / "run"
    _interrupt(ptcli, args, run, at_step=2)
    labels = json.loads((run / "labels.json").read_text())
    subsample = json.loads((run / "subsample.json").read_text())
    first = read_manifest(run)["data"]["train_examples"]
    assert first == len(subsample["train_indices"])
    (run / "labels.json").write_text(json.dumps({"names": labels["names"][::-1]}) + "\n")
    (run / "subsample.json").write_text(json.dumps({**subsample, "train_indices": subsample["train_indices"][::2]}))
    tampered = {name: (run / name).read_bytes() for name in ("labels.json", "subsample.json")}
    _, manifest = _resume_alone(ptcli, "finetune", run)
    assert {name: (run / name).read_bytes() for name in tampered} == tampered
    assert manifest["data"]["train_examples"] == len(subsample["train_indices"][::2]) < first
    report = json.loads((run / "test_report.json").read_text())
    assert list(report["per_class"]) == labels["names"][::-1]  # scored with the stored label order


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_resume_refuses_a_subsample_that_does_not_fit_the_data(ptcli, smoke_pretrain, tmp_path):
    args = ["finetune", "debug=smoke", f"pretrained={smoke_pretrain}", "data.labels_per_class=8",
            "trainer.max_steps=10", *EVERY_STEP]
    run = tmp_path / "run"
    _interrupt(ptcli, args, run, at_step=2)
    subsample = json.loads((run / "subsample.json").read_text())
    (run / "subsample.json").write_text(json.dumps({**subsample, "train_indices": [10**9]}))
    r = ptcli("finetune", f"resume={run}")
    assert r.code == 2, r
    assert "subsample.json" in r.stderr and "train_indices" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_resume_alone_continues_a_run_started_with_overrides(ptcli, tmp_path):
    run = tmp_path / "run"
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, "model.dim=48", "trainer.max_steps=4",
              f"hydra.run.dir={run}")
    assert r.code == 0, r
    # Before: exit 2, "the config differs from the run's (model.dim: 48 -> 64 ...)". The user's explicit
    # override (max_steps) wins over the stored one.
    r = ptcli("pretrain", f"resume={run}", "trainer.max_steps=6")
    assert r.code == 0, r
    manifest = read_manifest(run)
    assert manifest["status"] == "completed" and manifest["step"] == 6
    assert "model.dim=48" in manifest["overrides"] and "trainer.max_steps=6" in manifest["overrides"]
    assert "trainer.max_steps=4" not in manifest["overrides"]
    from omegaconf import OmegaConf

    assert OmegaConf.load(run / "config.yaml").model.dim == 48
    # Resumed once, its stored overrides (now with resume=) replay again.
    r = ptcli("pretrain", f"resume={run}", "trainer.max_steps=7")
    assert r.code == 0, r
    assert read_manifest(run)["step"] == 7


@pytest.mark.parametrize("payload", [
    "hydra.run.dir=/tmp/elsewhere",
    "+hydra.job.chdir=true",
    "hydra/launcher=joblib",
    "~hydra.callbacks",
    "+model._target_=os.system",
    "+evil={_target_:os.system,command:touch}",
    "data.train=${oc.env:HOME}/.netrc",
    "--config-dir=/tmp",
    "model@_global_=transformer",
    "seed=1,2",
    "seed=glob(*)",
])
def test_resume_refuses_unsafe_stored_overrides(ptcli, smoke_pretrain, tmp_path, payload):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_pretrain, run)
    manifest = read_manifest(run)
    manifest["overrides"] = [*manifest["overrides"], payload]
    (run / "run.json").write_text(json.dumps(manifest))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    r = ptcli("pretrain", f"resume={run}", "trainer.max_steps=30")
    assert r.code == 2, r
    assert str(run / "run.json") in r.stderr and repr(payload) in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("ptcli: error:") == 1
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # refused before Hydra made anything
    assert read_manifest(run)["status"] == "completed"

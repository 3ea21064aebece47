"""End-to-end pre-training at tiny scale: run directory, determinism, sweeps, user data."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_TRANSFORMER, read_manifest, read_metrics, require
from omegaconf import OmegaConf
from safetensors.torch import load_file


def test_smoke_run_directory_layout(smoke_pretrain):
    run = smoke_pretrain
    m = read_manifest(run)
    assert m["status"] == "completed" and m["command"] == "pretrain" and m["error"] is None
    for key in ("argv", "overrides", "started_at", "ended_at", "versions", "git", "seed", "step", "checkpoints"):
        assert key in m
    assert m["step"] == 20
    assert {"val/loss", "val/mlm_acc", "val/ppl", "train/loss"} <= set(m["metrics"])
    assert (run / "config.yaml").is_file()
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.model.dim == 32
    assert cfg.optim.lr == 2e-3 and cfg.objective.mask_rate == 0.3  # the MLM defaults, as run
    for name in ("last", "best"):
        weights = load_file(str(run / "checkpoints" / name / "model.safetensors"))
        assert "encoder.tok_emb.weight" in weights
    assert (run / "checkpoints" / "last" / "trainer_state.pt").is_file()
    tok = json.loads((run / "tokenizer" / "tokenizer.json").read_text())
    assert "[MASK]" in tok["model"]["vocab"]
    events = read_metrics(run)
    train = [e for e in events if e["split"] == "train"]
    val = [e for e in events if e["split"] == "val"]
    assert train and val
    assert {"loss", "lr", "tokens_per_s", "step"} <= set(train[0])
    assert {"loss", "mlm_acc", "ppl"} <= set(val[0])
    assert train[-1]["loss"] < train[0]["loss"]  # it learns something even in 20 steps


def test_same_seed_same_losses(ptcli, smoke_pretrain, tmp_path):
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, f"hydra.run.dir={tmp_path / 'again'}")
    assert r.code == 0, r
    first = [e["loss"] for e in read_metrics(smoke_pretrain) if e["split"] == "train"]
    again = [e["loss"] for e in read_metrics(tmp_path / "again") if e["split"] == "train"]
    assert first == again


def test_other_seed_other_losses(ptcli, smoke_pretrain, tmp_path):
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, "seed=1", f"hydra.run.dir={tmp_path / 'seed1'}")
    assert r.code == 0, r
    first = [e["loss"] for e in read_metrics(smoke_pretrain) if e["split"] == "train"]
    other = [e["loss"] for e in read_metrics(tmp_path / "seed1") if e["split"] == "train"]
    assert first != other


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_multirun_sweep(ptcli, tmp_path):
    sweep = tmp_path / "sweep"
    r = ptcli("pretrain", "-m", "debug=smoke", "model.dim=32,64", "model.heads=2", "model.layers=2",
              "model.ffn_dim=64", "trainer.max_steps=5",
              f"hydra.sweep.dir={sweep}")
    assert r.code == 0, r
    jobs = sorted(p.parent for p in sweep.glob("*/run.json"))
    assert len(jobs) == 2
    dims = set()
    for job in jobs:
        assert read_manifest(job)["status"] == "completed"
        dims.add([line for line in (job / "config.yaml").read_text().splitlines() if line.startswith("  dim:")][0])
    assert dims == {"  dim: 32", "  dim: 64"}


def test_json_output_is_only_json(ptcli, tmp_path):
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, "trainer.max_steps=5", "--json",
              f"hydra.run.dir={tmp_path / 'j'}")
    assert r.code == 0, r
    metrics = json.loads(r.stdout)
    assert "val/mlm_acc" in metrics
    assert read_manifest(tmp_path / "j")["metrics"]["val/mlm_acc"] == metrics["val/mlm_acc"]


def _write_csv(path, n=300):
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()
    lines = ["id,sentence,label"]
    for i in range(n):
        text = " ".join(words[(i * 7 + j) % len(words)] for j in range(12 + i % 9))
        lines.append(f'{i},"{text}",{"pos" if i % 2 else "neg"}')
    path.write_text("\n".join(lines) + "\n")


def test_text_csv_with_custom_column(ptcli, tmp_path):
    csv = tmp_path / "train.csv"
    _write_csv(csv)
    run = tmp_path / "run"
    r = ptcli("pretrain", "data=text", f"data.train={csv}", "data.text_column=sentence", "debug=smoke",
              *TINY_TRANSFORMER, "tokenizer.vocab_size=200", "trainer.batch_size=4", f"hydra.run.dir={run}")
    assert r.code == 0, r
    assert read_manifest(run)["status"] == "completed"


def test_text_csv_missing_column_names_the_columns(ptcli, tmp_path):
    csv = tmp_path / "train.csv"
    _write_csv(csv)
    r = ptcli("pretrain", "data=text", f"data.train={csv}", "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.code == 2, r
    assert "'text'" in r.stderr and "sentence" in r.stderr and "label" in r.stderr and "id" in r.stderr
    assert "Traceback" not in r.stderr
    assert read_manifest(tmp_path / "run")["status"] == "failed"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_text_missing_file_exits_2(ptcli, tmp_path):
    r = ptcli("pretrain", "data=text", f"data.train={tmp_path / 'nope.txt'}", "debug=smoke",
              f"hydra.run.dir={tmp_path / 'run'}")
    assert r.code == 2, r
    assert "nope.txt" in r.stderr and "data.train" in r.stderr


def test_hf_local_dataset_directory(ptcli, tmp_path):
    import datasets

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(20)) for i in range(400)]
    datasets.Dataset.from_dict({"content": texts}).save_to_disk(str(tmp_path / "local_ds"))
    run = tmp_path / "run"
    r = ptcli("pretrain", "data=hf", f"data.name={tmp_path / 'local_ds'}", "data.text_column=content",
              "debug=smoke", *TINY_TRANSFORMER, "tokenizer.vocab_size=100", "trainer.batch_size=4",
              f"hydra.run.dir={run}")
    assert r.code == 0, r


def test_hf_hub_name_offline_is_a_clear_error(ptcli, tmp_path):
    r = ptcli("pretrain", "data=hf", "data.name=some-org/nonexistent-corpus", "debug=smoke",
              f"hydra.run.dir={tmp_path / 'run'}")
    assert r.code == 2, r
    assert "some-org/nonexistent-corpus" in r.stderr and "offline" in r.stderr.lower()


def test_tensorboard_and_mlflow_loggers(ptcli, tmp_path):
    require("tensorboard", "the `loggers` extra is not installed")
    mlflow = require("mlflow", "the `loggers` extra is not installed")
    run = tmp_path / "run"
    store = tmp_path / "mlruns"
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, "trainer.max_steps=10", "logger=[tensorboard,mlflow]",
              f"hydra.run.dir={run}", env={"MLFLOW_TRACKING_URI": f"file:{store}", "MLFLOW_ALLOW_FILE_STORE": "true"})
    assert r.code == 0, r
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    assert "train/loss" in ea.Tags()["scalars"] and "val/mlm_acc" in ea.Tags()["scalars"]
    import os

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = mlflow.tracking.MlflowClient(tracking_uri=f"file:{store}")
    exp = client.get_experiment_by_name("ptcli-pretrain")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert [m.step for m in history] == [5, 10]
    assert runs[0].data.params["model.dim"] == "32"


def test_unknown_logger_is_a_usage_error(ptcli, tmp_path):
    r = ptcli("pretrain", "debug=smoke", "logger=comet", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.code == 2 and "comet" in r.stderr and "tensorboard" in r.stderr and "wandb" in r.stderr, r

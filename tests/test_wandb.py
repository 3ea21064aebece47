"""logger=wandb against the real wandb package, offline (no server, no network): the run, its config, the metric
history and the run directory, read back from the ``.wandb`` file W&B writes; a W&B failure does not lose the run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import TINY_TRANSFORMER, require

wandb = require("wandb", "the `loggers` extra is not installed")


@pytest.fixture(autouse=True)
def fresh_wandb():
    # W&B keeps the settings it read from the environment (WANDB_MODE, ...) in a process-wide singleton: each test
    # here sets its own environment, as a new process would read it.
    wandb.teardown()
    yield
    wandb.teardown()


def wandb_env(tmp_path: Path, mode: str = "offline") -> dict[str, str]:
    # Everything W&B writes (runs, settings, caches) under tmp_path; no API key from the machine running the test.
    home = tmp_path / "wandb-home"
    return {"WANDB_MODE": mode, "WANDB_DIR": str(tmp_path / "wandb-runs"), "WANDB_CONFIG_DIR": str(home / "config"),
            "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_DATA_DIR": str(home / "data"), "WANDB_API_KEY": ""}


def read_wandb(path: Path) -> list:
    """The records of a ``.wandb`` file: W&B's LevelDB-log framing (a 7-byte file header, 32 KiB blocks of chunks
    with a 7-byte header: crc32, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4) around W&B's own protobuf
    ``Record`` messages, parsed with wandb.proto."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zeros to the block's end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def items(entries) -> dict:
    """``{"train/loss": 5.1, ...}`` from a history/summary/config protobuf's key or nested_key + value_json."""
    return {"/".join(e.nested_key) or e.key: json.loads(e.value_json) for e in entries}


def offline_runs(tmp_path: Path) -> list[Path]:
    # run.finish() returns once W&B's service has the run's last record, and the service writes it to the
    # .wandb file when the stream closes, soon after. A new process (the CLI) waits for that at exit; a test that
    # ran the CLI in this process waits for it here.
    wandb.teardown()
    return sorted((tmp_path / "wandb-runs" / "wandb").glob("offline-run-*"))


def of_kind(records: list, kind: str) -> list:
    return [getattr(rec, kind) for rec in records if rec.WhichOneof("record_type") == kind]


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_wandb_offline_run_and_its_resume(ptcli, tmp_path):
    """Config, metric history, run directory and final metrics of a run, 2 steps then resumed to 4: the resumed
    process logs into the same W&B run (one test, not two: a module fixture would be built once per xdist worker)."""
    run_dir, env = tmp_path / "run", wandb_env(tmp_path)
    results = [ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, "trainer.max_steps=2", "trainer.log_every=2",
                     "trainer.eval_every=2", "logger=wandb", f"hydra.run.dir={run_dir}", env=env)]
    assert results[0].code == 0, results[0]
    results.append(ptcli("pretrain", f"resume={run_dir}", "trainer.max_steps=4", "--json", env=env))
    assert results[1].code == 0, results[1]
    dirs = offline_runs(tmp_path)
    assert len(dirs) == 2, dirs  # one W&B offline directory per process that logged
    first, resumed = (read_wandb(next(d.glob("run-*.wandb"))) for d in dirs)

    [run], [run2] = of_kind(first, "run"), of_kind(resumed, "run")
    assert run.project == "ptcli-pretrain" and run.display_name == "run" and run.job_type == "pretrain"
    assert run2.run_id == run.run_id and len(run.run_id) == 16  # the resume continues the same W&B run
    config = {e.key: json.loads(e.value_json) for e in run.config.update}
    assert config["model"]["dim"] == 32 and config["trainer"]["max_steps"] == 2
    assert config["ptcli"] == {"run_dir": str(run_dir.resolve()), "command": "pretrain"}

    # The history of both parts is metrics.jsonl, event for event, at the trainer's steps.
    assert [h.step.num for h in of_kind(first, "history")] == [2]
    assert [h.step.num for h in of_kind(resumed, "history")] == [4]  # on from the checkpoint's step
    history: dict[int, dict] = {}
    for h in of_kind(first, "history") + of_kind(resumed, "history"):
        history.setdefault(h.step.num, {}).update(items(h.item))
    expected: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        expected.setdefault(event["step"], {}).update(
            {f"{event['split']}/{k}": v for k, v in event.items() if k not in ("step", "split")
             and isinstance(v, (int, float))})
    assert {s: {k: v for k, v in h.items() if not k.startswith("_")} for s, h in history.items()} == expected
    assert "val/mlm_acc" in history[2] and "train/loss" in history[2] and "val/mlm_acc" in history[4]

    summary: dict = {}
    for update in of_kind(resumed, "summary"):
        summary.update(items(update.update))
    assert summary["ptcli/run_dir"] == str(run_dir.resolve()) and summary["ptcli/status"] == "completed"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert {k: summary[k] for k in manifest["metrics"]} == manifest["metrics"]  # incl. best/val/loss
    for records, r in zip((first, resumed), results, strict=True):
        assert records[-1].WhichOneof("record_type") == "exit" and records[-1].exit.exit_code == 0
        assert "wandb sync" in r.stderr  # W&B's own note on uploading the offline run later
    # W&B leaves stdout alone (console capture off): nothing there, or with --json the one object.
    assert results[0].stdout == "" and json.loads(results[1].stdout) == manifest["metrics"]


def test_wandb_that_cannot_start_does_not_lose_the_run(ptcli, tmp_path):
    # Online without an API key: the real wandb.init refuses. The run trains anyway, with a warning.
    run_dir = tmp_path / "run"
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, "trainer.max_steps=1", "logger=wandb",
              f"hydra.run.dir={run_dir}", env=wandb_env(tmp_path, mode="online"))
    assert r.code == 0, r
    assert "ptcli: warning: logger=wandb could not start a W&B run" in r.stderr, r
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "completed" and "val/loss" in manifest["metrics"]


class FailingLogger:
    """A logger whose backend breaks mid-run (a full disk, a dropped connection)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def log(self, step, split, values) -> None:
        self.calls.append(f"log {step}")
        raise OSError("No space left on device")

    def close(self, status: str) -> None:
        self.calls.append(f"close {status}")


def test_a_logger_that_fails_mid_run_is_dropped_not_fatal(capsys):
    from ptcli.loggers import _Guarded

    inner = FailingLogger()
    guarded = _Guarded("wandb", inner)
    guarded.log(5, "train", {"loss": 1.0})
    guarded.log(10, "train", {"loss": 0.5})  # dropped: not called again
    guarded.close("completed")
    assert inner.calls == ["log 5", "close failed"]
    err = capsys.readouterr().err
    assert err.count("ptcli: warning: logger=wandb failed in log (OSError: No space left on device)") == 1


def test_sweep_jobs_are_grouped_by_their_sweep(tmp_path, monkeypatch):
    # The logger on its own (no training): a sweep job's directory is multirun/<command>/<time>/<n>.
    from omegaconf import OmegaConf

    from ptcli.loggers import WandbLogger, _wandb_id

    for key, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    ids = []
    for job in ("0", "1"):
        run_dir = tmp_path / "multirun" / "pretrain" / "2026-01-01_00-00-00" / job
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps({"started_at": "2026-01-01T00:00:00+00:00", "metrics": {}}))
        logger = WandbLogger(run_dir, OmegaConf.create({"seed": int(job)}), "pretrain")
        logger.log(1, "train", {"loss": 1.0})
        logger.close("completed")
        ids.append(_wandb_id(run_dir))
    assert len(set(ids)) == 2  # the same start time, another directory: another W&B run
    runs = [of_kind(read_wandb(next(d.glob("*.wandb"))), "run")[0] for d in offline_runs(tmp_path)]
    assert sorted(r.display_name for r in runs) == ["2026-01-01_00-00-00/0", "2026-01-01_00-00-00/1"]
    assert {r.run_group for r in runs} == {"2026-01-01_00-00-00"} and {r.run_id for r in runs} == set(ids)

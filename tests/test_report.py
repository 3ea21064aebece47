"""``ptcli report`` and ``ptcli runs`` over a small finetune sweep."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import TINY_TRANSFORMER


@pytest.fixture(scope="module")
def sweep(ptcli, smoke_pretrain, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep") / "ft"
    r = ptcli("finetune", "-m", f"pretrained={smoke_pretrain}", "init=pretrained,random", "seed=0,1",
              "data.labels_per_class=2", "debug=smoke", "trainer.max_steps=4", "trainer.eval_every=2",
              f"hydra.sweep.dir={sweep_dir}")
    assert r.code == 0, r
    return sweep_dir


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_sweep_summary(sweep):
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["total"] == 4 and summary["failed"] == 0
    assert all(j["status"] == "completed" for j in summary["jobs"])


@pytest.mark.slow  # its module fixture runs a 4-job fine-tune sweep (~7 s)
def test_report_groups_by_init_and_averages_seeds(ptcli, sweep, tmp_path):
    r = ptcli("report", str(sweep), "--out", str(tmp_path / "rep"))
    assert r.code == 0, r
    rows = list(csv.DictReader(open(tmp_path / "rep" / "report.csv")))
    assert sorted(row["init"] for row in rows) == ["pretrained", "random"]
    assert all(row["n"] == "2" for row in rows)
    # the mean in the table is the mean of the runs' own numbers
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/run.json")]
    for row in rows:
        accs = [m["metrics"]["test/accuracy"] for m in runs if f"init={row['init']}" in m["overrides"]]
        assert float(row["test/accuracy mean"]) == pytest.approx(sum(accs) / len(accs))
    assert (tmp_path / "rep" / "label_efficiency.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "report.md").read_text().startswith("| command")
    assert "init" in r.stdout and "test/accuracy" in r.stdout


def test_report_without_runs_is_a_usage_error(ptcli, tmp_path):
    r = ptcli("report", str(tmp_path))
    assert r.code == 2 and "no completed run" in r.stderr


@pytest.mark.slow  # SIGINT to a real process
def test_runs_lists_statuses(ptcli, sweep, tmp_path):
    bad = tmp_path / "bad"
    r = ptcli("pretrain", "debug=smoke", "data=text", f"data.train={tmp_path / 'missing.csv'}", f"hydra.run.dir={bad}")
    assert r.code == 2
    r = ptcli("runs", str(sweep.parent), "--json")
    assert r.code == 0, r
    rows = json.loads(r.stdout)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"completed"}
    r = ptcli("runs", str(tmp_path), "--json")
    assert [row["status"] for row in json.loads(r.stdout)] == ["failed"]
    # an interrupted run (SIGINT mid-training) is listed as such, newest first
    import os
    import signal
    import subprocess
    import sys
    import time

    stopped = tmp_path / "stopped"
    env = {**os.environ, "PTCLI_STEP_DELAY": "0.1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ptcli", "pretrain", "debug=smoke", *TINY_TRANSFORMER,
                             "trainer.max_steps=200", f"hydra.run.dir={stopped}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (stopped / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    r = ptcli("runs", str(tmp_path), "--json")
    assert [row["status"] for row in json.loads(r.stdout)] == ["interrupted", "failed"]
    r = ptcli("runs", str(tmp_path))
    assert r.code == 0 and "interrupted" in r.stdout and "failed" in r.stdout

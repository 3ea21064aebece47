"""ptcli headstart: the label multiplier and table on hand-checkable numbers, and the verb end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import OFFLINE, read_manifest

from ptcli.errors import UsageError
from ptcli.headstart import (
    Point,
    build_rows,
    default_sweep_dir,
    format_table,
    labels_needed,
    parse_budgets,
    parse_seeds,
    plan,
)

CURVE = [(1, 0.2), (4, 0.3), (16, 0.5)]


def test_labels_needed_interpolates_on_log_labels():
    # 0.4 is halfway from 0.3 (4 labels) to 0.5 (16): halfway in log2 is 3, so 8 labels.
    needed, bound = labels_needed(CURVE, 0.4)
    assert bound == "=" and needed == pytest.approx(8.0)
    assert labels_needed(CURVE, 0.3) == (pytest.approx(4.0), "=")  # exactly on a point
    assert labels_needed(CURVE, 0.15) == (1, "<=")  # already there at the smallest budget: at most 1
    assert labels_needed(CURVE, 0.6) == (16, ">")  # never within the largest budget
    assert labels_needed([], 0.5) == (None, ">")
    # Not monotone: the first crossing counts (0.45 is 5/6 of the way from 0.2 to 0.5, so 4**(5/6) labels).
    needed, _ = labels_needed([(1, 0.2), (4, 0.5), (16, 0.4), (64, 0.6)], 0.45)
    assert needed == pytest.approx(4 ** (5 / 6))


def _points() -> dict:
    def point(values, per_class):
        return Point(values=values, per_class=[per_class] * len(values))

    return {("pretrained", 1): point([0.40, 0.42], 1), ("random", 1): point([0.2], 1),
            ("pretrained", 4): point([0.5], 4), ("random", 4): point([0.3], 4),
            ("pretrained", 16): point([0.6], 16), ("random", 16): point([0.5], 16),
            ("pretrained", None): point([0.7], 250.0), ("random", None): point([0.65], 250.0)}


def test_rows_head_start_and_multiplier_on_hand_numbers():
    rows = build_rows(_points(), [1, 4, 16, None])
    one, four, sixteen, every = rows
    assert one["pretrained"] == {"mean": pytest.approx(0.41), "std": pytest.approx(0.01 * math.sqrt(2)), "n": 2}
    assert one["random"] == {"mean": 0.2, "std": 0.0, "n": 1}
    assert one["head_start"] == pytest.approx(0.21)
    # Random init reaches 0.41 at 4 * 4**0.55 = 8.57 labels per class: 8.57x the 1 label of this row.
    assert one["label_multiplier"] == pytest.approx(4 * 4 ** 0.55) and one["multiplier_bound"] == "="
    assert one["multiplier_note"] == "random init needs 8.6x the labels (8.6 per class)"
    # 0.5 at 4 labels: random init has it at 16, 4x. 0.6 at 16: between 16 (0.5) and all = 250 (0.65).
    assert four["label_multiplier"] == pytest.approx(4.0)
    assert sixteen["random_labels_per_class_needed"] == pytest.approx(math.exp(math.log(16) + 2 / 3 * math.log(
        250 / 16)))
    # 'all' counts as its actual labeled examples per class; random init never reaches 0.7.
    assert every["labels_per_class"] is None and every["examples_per_class"] == 250.0
    assert every["label_multiplier"] is None and every["multiplier_bound"] == ">"
    assert every["label_multiplier_lower_bound"] == 1.0  # the largest budget is this row's own
    assert "more than" in every["multiplier_note"] and "250 labels per class" in every["multiplier_note"]


def test_rows_with_a_missing_cell():
    points = _points()
    del points["random", 4]
    rows = build_rows(points, [1, 4, 16, None])
    assert rows[1]["random"] == {"mean": None, "std": None, "n": 0} and rows[1]["head_start"] is None
    # The curve skips the missing budget: 0.41 is now reached between 1 (0.2) and 16 (0.5).
    assert rows[0]["random_labels_per_class_needed"] == pytest.approx(16 ** (0.21 / 0.3))


def test_table():
    result = {"metric": "test/accuracy", "seeds": [0, 1], "pretrained": "runs/pre", "data": "pydocs",
              "rows": build_rows(_points(), [1, 4, 16, None])}
    text = format_table(result)
    assert "| 1 | 0.410 ± 0.014 (n=2) | 0.200 ± 0.000 (n=1) | +21.0 | 8.6x |" in text
    assert "| 4 | 0.500 ± 0.000 (n=1) | 0.300 ± 0.000 (n=1) | +20.0 | 4x |" in text
    assert "| all (250) | 0.700 ± 0.000 (n=1) | 0.650 ± 0.000 (n=1) | +5.0 | more than the largest budget (> 1x) |" \
        in text


def test_budgets_and_seeds():
    assert parse_budgets("64,1,all,4") == [1, 4, 64, None]
    assert parse_budgets("[1, null]") == [1, None]
    for bad in ("0", "1,1", "x", "-4"):
        with pytest.raises(UsageError, match="--budgets"):
            parse_budgets(bad)
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("a", "1,1", "-1"):
        with pytest.raises(UsageError, match="--seeds"):
            parse_seeds(bad)


def _pretrain_run(tmp_path):
    """What plan() reads of a pretrain run: its run.json (the fine-tunes read the rest)."""
    run = tmp_path / "pre"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"command": "pretrain", "status": "completed"}))
    return run


def test_plan_refuses_what_it_sweeps_and_names_its_sweep_by_the_jobs(tmp_path):
    run = _pretrain_run(tmp_path)
    pre = f"pretrained={run}"
    for args, says in ((["debug=smoke"], "needs pretrained="), ([pre, "seed=3"], "--seeds"),
                       ([pre, "init=random"], "init=pretrained,random"), ([pre, "data.labels_per_class=4"],
                       "--budgets"), ([pre, "--cfg", "job"], "--cfg"), ([pre, "optim.lr=1e-3,1e-4"], "a sweep"),
                       ([f"pretrained={run / 'nope'}"], "not a ptcli run directory")):
        with pytest.raises(UsageError, match=says):
            plan(args, [1], [0])
    p = plan([pre, "debug=smoke"], [1, None], [0, 1])
    assert p.args[-3:] == ["init=pretrained,random", "data.labels_per_class=1,null", "seed=0,1"]
    assert p.sweep_dir.parent.as_posix() == "multirun/headstart"
    # The same jobs give the same directory whatever launcher runs them; other jobs give another.
    assert plan([pre, "debug=smoke", "hydra/launcher=basic"], [1, None], [0, 1]).sweep_dir == p.sweep_dir
    assert plan([pre, "debug=smoke"], [1], [0, 1]).sweep_dir != p.sweep_dir
    assert default_sweep_dir(str(run), "pydocs", ["debug=smoke"], [1], [0]).name.startswith(
        f"{run.name}-pydocs-")
    assert plan([pre, "hydra.sweep.dir=/tmp/x"], [1], [0]).sweep_dir.as_posix() == "/tmp/x"


def _labeled_csv(path, n):
    words = {"pos": "good great fine happy nice lovely superb".split(), "neg": "bad awful sad poor ugly grim".split(),
             "meh": "okay average plain middling fair mild".split()}
    rows = [f"{' '.join(w[(i + j) % len(w)] for j in range(6))},{lab}"
            for i in range(n) for lab, w in [list(words.items())[i % 3]]]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_headstart_end_to_end_then_rerun_skips_completed_jobs(ptcli, smoke_pretrain, tmp_path):
    pre = tmp_path / "pre"
    shutil.copytree(smoke_pretrain, pre)  # headstart.json is copied into it: not into the shared fixture
    args = ["headstart", f"pretrained={pre}", *_text_data(tmp_path), "debug=smoke", "trainer.max_steps=2",
            "--budgets", "1,all", "--seeds", "0"]
    r = ptcli(*args, "--json", cwd=tmp_path)
    assert r.code == 0, r
    result = json.loads(r.stdout)  # one JSON object, nothing else on stdout
    sweep = tmp_path / result["sweep_dir"]
    assert json.loads((sweep / "headstart.json").read_text()) == result
    assert json.loads((pre / "headstart.json").read_text()) == result  # for the export model card
    assert (sweep / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["total"] == 4 and summary["failed"] == 0
    assert result["data"] == "text" and result["metric"] == "test/accuracy" and result["budgets"] == [1, None]
    jobs = {tuple(j["overrides"][-3:-1]): read_manifest(sweep / j["dir"]) for j in summary["jobs"]}
    one, every = result["rows"]
    for row, budget in ((one, "1"), (every, "null")):
        for init in ("pretrained", "random"):
            job = jobs[f"init={init}", f"data.labels_per_class={budget}"]
            assert row[init] == {"mean": job["metrics"]["test/accuracy"], "std": 0.0, "n": 1}
        assert row["head_start"] == pytest.approx(row["pretrained"]["mean"] - row["random"]["mean"])
    assert one["examples_per_class"] == 1.0 and every["examples_per_class"] == 10.0  # 'all': 30 labels, 3 classes

    redo = next(j["dir"] for j in summary["jobs"] if j["overrides"][-3] == "init=random")
    kept = {j["dir"]: read_manifest(sweep / j["dir"])["ended_at"] for j in summary["jobs"] if j["dir"] != redo}
    shutil.rmtree(sweep / redo)  # a partly lost sweep: the same command re-runs only what is missing
    r = ptcli(*args, cwd=tmp_path)
    assert r.code == 0, r
    assert r.stderr.count("already completed, skipped") == 3
    assert all(read_manifest(sweep / d)["ended_at"] == ended for d, ended in kept.items())
    assert read_manifest(sweep / redo)["status"] == "completed"
    assert r.stdout.startswith("test/accuracy, mean ± std over seeds 0;") and "| all (10) |" in r.stdout
    # Other jobs into the same sweep directory: refused, and their old runs are not taken for results.
    before = (sweep / "headstart.json").read_text()
    r = ptcli(*args, "trainer.max_steps=3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.code == 1 and "it holds a run of other overrides" in r.stderr, r
    assert json.loads((sweep / "summary.json").read_text())["failed"] == 4
    assert "no fine-tune in" in r.stderr and r.stdout == "" and (sweep / "headstart.json").read_text() == before


def _text_data(tmp_path):
    # Any data= option: a small labeled CSV keeps each fine-tune's evaluation (two splits, twice) cheap.
    return ["data=text", *[f"data.{split}={_labeled_csv(tmp_path / f'{split}.csv', n)}"
                           for split, n in (("train", 30), ("validation", 12), ("test", 12))]]


@pytest.mark.slow  # a signal to a real process
def test_sigint_stops_the_sweep_and_the_same_command_resumes_it(ptcli, smoke_pretrain, tmp_path):
    pre = tmp_path / "pre"
    shutil.copytree(smoke_pretrain, pre)
    args = ["headstart", f"pretrained={pre}", *_text_data(tmp_path), "debug=smoke", "trainer.max_steps=30",
            "--budgets", "1", "--seeds", "0"]
    env = {**os.environ, **OFFLINE, "PTCLI_STEP_DELAY": "0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "ptcli", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(tmp_path.glob("multirun/headstart/*/0/metrics.jsonl")):  # the first job is training
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    sweep = next(tmp_path.glob("multirun/headstart/*"))
    assert read_manifest(sweep / "0")["status"] == "interrupted"
    assert not (sweep / "1").exists() and not (sweep / "headstart.json").exists()  # the sweep stopped there
    assert out == "" and "run the same command again to resume" in err
    r = ptcli(*args, cwd=tmp_path)
    assert r.code == 0, r
    assert "interrupted at step" in r.stderr and "resuming" in r.stderr
    assert [read_manifest(sweep / j)["status"] for j in ("0", "1")] == ["completed", "completed"]
    assert json.loads((sweep / "headstart.json").read_text())["jobs"] == {"completed": 2, "total": 2}


def test_headstart_usage_errors_exit_2(ptcli, tmp_path):
    r = ptcli("headstart", "debug=smoke")
    assert r.code == 2 and "needs pretrained=" in r.stderr, r
    r = ptcli("headstart", f"pretrained={_pretrain_run(tmp_path)}", "--budgets", "0")
    assert r.code == 2 and "--budgets 0" in r.stderr, r

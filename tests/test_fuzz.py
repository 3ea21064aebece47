"""A fuzzed command line (scripts/fuzz_cli.py): generated overrides and malformed files against every verb.

CI runs a bounded, derandomized sample in-process; ``python scripts/fuzz_cli.py N`` runs long ones. The property:
exit code 0/1/2, no traceback and no internal error, run.json agreeing with the exit code, no completed run with a
non-finite metric (``fuzz_cli.check``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import fuzz_cli  # noqa: E402


@pytest.fixture(scope="module")
def workspace(smoke_pretrain, tmp_path_factory) -> fuzz_cli.Workspace:
    # Reads the shared smoke run only; every case writes under its own folder.
    return fuzz_cli.Workspace(tmp_path_factory.mktemp("fuzz"), smoke_pretrain)


@settings(max_examples=30, derandomize=True, database=None, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
@pytest.mark.slow  # several training runs (seconds of CPU)
def test_fuzzed_command_lines_hold_the_property(workspace, data):
    case = data.draw(fuzz_cli.cases(workspace))
    outcome = fuzz_cli.run_inprocess(case.argv)
    problems = fuzz_cli.check(case, outcome)
    assert not problems, (case.describe(), problems, outcome.escaped or outcome.stderr[-3000:])


@pytest.mark.parametrize("case", ["config", "data", "runs"])
@pytest.mark.slow  # a real process
def test_in_process_matches_a_real_process(ptcli, workspace, tmp_path, case):
    """The fuzzer's in-process runner gives what the installed entry point gives."""
    if case == "config":
        argv = ["pretrain", "debug=smoke", "model.dim=abc", f"hydra.run.dir={tmp_path / 'run'}"]
    elif case == "data":
        f = fuzz_cli.write_text_file(tmp_path / "x.jsonl", "jsonl_scalars", 1)
        argv = ["embed", str(workspace.text_run), "--input", str(f), "--out", str(tmp_path / "e.npy")]
    else:
        for i, how in enumerate(["torn_json", "odd_types", "intact"]):
            fuzz_cli.garble(workspace.text_run, tmp_path / "runs" / f"r{i}", how)
        argv = ["runs", str(tmp_path / "runs"), "--json"]
    inproc = fuzz_cli.run_inprocess(argv)
    real = ptcli(*argv, subprocess=True)
    assert inproc.escaped is None, inproc.escaped
    assert inproc.code == real.code, (inproc.stderr, real)
    errors = [[ln for ln in text.splitlines() if ln.startswith("ptcli: error:")]
              for text in (inproc.stderr, real.stderr)]
    assert errors[0] == errors[1]
    if case == "runs":
        assert json.loads(inproc.stdout) == json.loads(real.stdout)
        statuses = [str(r["status"]) for r in json.loads(real.stdout)]
        assert "unreadable" in statuses and "completed" in statuses and len(statuses) == 3, statuses
    else:
        assert real.code == 2 and len(errors[1]) == 1, real


def test_the_property_catches_violations(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    case = fuzz_cli.Case("pretrain", ["pretrain"], run)
    ok = fuzz_cli.Outcome(2, "", "ptcli: error: model.dim: bad\n")
    assert fuzz_cli.check(case, ok) == []
    assert fuzz_cli.check(case, fuzz_cli.Outcome(2, "", "Traceback (most recent call last):\nptcli: error: x\n"))
    assert fuzz_cli.check(case, fuzz_cli.Outcome(3, "", "ptcli: error: x\n"))
    assert fuzz_cli.check(case, fuzz_cli.Outcome(1, "", "ptcli: internal error: KeyError (traceback saved to f)\n"))
    (run / "run.json").write_text(json.dumps({"status": "failed"}))
    assert fuzz_cli.check(case, fuzz_cli.Outcome(0, "", ""))  # exit 0 with a failed run
    (run / "run.json").write_text(json.dumps({"status": "completed", "metrics": {"val/loss": float("nan")}}))
    problems = fuzz_cli.check(case, fuzz_cli.Outcome(0, "", ""))
    assert problems and "non-finite" in problems[0]

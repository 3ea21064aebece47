"""Every verb fails cleanly: the user's errors exit 2 with one ``ptcli: error:`` paragraph naming the file or
option; a bug (in ptcli or a plugin) exits 1 as an "internal error" with its traceback saved to a file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TRANSFORMER, read_manifest


def _usage_error(r, *needles):
    assert r.code == 2, r
    assert "Traceback" not in r.stderr, r
    assert r.stderr.count("ptcli: error:") == 1, r
    for needle in needles:
        assert needle in r.stderr, (needle, r)


def _internal_error(r) -> Path:
    assert r.code == 1, r
    assert "Traceback" not in r.stderr, r
    m = re.search(r"ptcli: internal error: .*\(traceback saved to (.+?)\)", r.stderr)
    assert m, r
    return Path(m.group(1))


def test_export_refuses_existing_out_unless_force(ptcli, smoke_pretrain, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = ptcli("export", str(smoke_pretrain), "--format", "hf", "--out", str(out))
    _usage_error(r, str(out), "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    file_out = tmp_path / "model.bin"
    file_out.write_text("mine")
    r = ptcli("export", str(smoke_pretrain), "--format", "hf", "--out", str(file_out))
    _usage_error(r, str(file_out), "a file")
    assert file_out.read_text() == "mine"
    r = ptcli("export", str(smoke_pretrain), "--format", "hf", "--out", str(out), "--force")
    assert r.code == 0, r
    assert (out / "config.json").is_file() and (out / "keep.txt").read_text() == "mine"
    r = ptcli("export", str(smoke_pretrain), "--format", "hf", "--out", str(file_out), "--force")
    assert r.code == 0, r
    assert (file_out / "model.safetensors").is_file()


def test_export_of_an_unmappable_checkpoint_is_a_usage_error(ptcli, smoke_pretrain, tmp_path):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(smoke_pretrain, run)
    for name in ("best", "last"):
        f = run / "checkpoints" / name / "model.safetensors"
        weights = load_file(str(f))
        dropped = [k for k in weights if k.endswith("blocks.1.mlp.0.weight")]
        assert dropped, sorted(weights)
        save_file({k: v for k, v in weights.items() if k not in dropped}, str(f))
    r = ptcli("export", str(run), "--format", "hf", "--out", str(tmp_path / "hf"))
    _usage_error(r, "blocks.1.mlp.0.weight", "cannot be exported")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("case", ["extension", "binary", "directory", "column", "out_dir", "latin1"])
def test_embed_bad_inputs(ptcli, smoke_pretrain, tmp_path, case):
    out = tmp_path / "e.npy"
    if case == "extension":
        inp, needles = tmp_path / "texts.xlsx", ["--input", "texts.xlsx", ".jsonl"]
        inp.write_text("text\nhello\n")
    elif case == "binary":
        inp, needles = tmp_path / "texts.jsonl", ["--input", "texts.jsonl"]
        inp.write_bytes(bytes(range(256)) * 4)
    elif case == "directory":
        inp, needles = tmp_path / "folder", ["--input", "not a file"]
        inp.mkdir()
    elif case == "column":
        inp, needles = tmp_path / "t.csv", ["--text-column", "body"]
        inp.write_text("body\nhello world\n")
    elif case == "latin1":
        inp, needles = tmp_path / "t.csv", ["--input", "t.csv"]
        inp.write_bytes("text\ncaf\xe9 cr\xe8me\n".encode("latin-1"))
    else:
        inp, out, needles = tmp_path / "t.txt", tmp_path / "out.npy", ["--out", "directory"]
        inp.write_text("hello world\n")
        out.mkdir()
    r = ptcli("embed", str(smoke_pretrain), "--input", str(inp), "--out", str(out))
    if case == "latin1" and r.code == 0:  # a reader that decodes Latin-1 leniently is fine too: rows came out
        assert out.is_file(), r
        return
    _usage_error(r, *needles)
    assert not (out.is_file())


def _garbled_runs(root: Path, good: Path) -> list[Path]:
    shutil.copytree(good, root / "good")
    bad = []
    for name, text in (("torn", '{"status": "compl'), ("list", "[1, 2]"), ("binary", "")):
        (root / name).mkdir(parents=True)
        f = root / name / "run.json"
        if name == "binary":
            f.write_bytes(b"\xff\xfe\x00garbage")
        else:
            f.write_text(text)
        bad.append(f)
    return bad


def test_runs_reports_garbled_manifests(ptcli, smoke_pretrain, tmp_path):
    bad = _garbled_runs(tmp_path / "runs", smoke_pretrain)
    r = ptcli("runs", str(tmp_path / "runs"), "--json")
    assert r.code == 0, r
    rows = {Path(row["dir"]).name: row for row in json.loads(r.stdout)}
    assert rows["good"]["status"] == "completed"
    for f in bad:
        assert rows[f.parent.name]["status"] == "unreadable", rows
        assert str(f) in r.stderr and "warning" in r.stderr, r
    r = ptcli("runs", str(tmp_path / "runs"))
    assert r.code == 0 and r.stdout.count("unreadable") == 3, r


def test_report_names_garbled_manifests(ptcli, smoke_pretrain, tmp_path):
    bad = _garbled_runs(tmp_path / "runs", smoke_pretrain)
    (tmp_path / "runs" / "good" / "metrics.jsonl").open("a").write('{"step": 3, "split": "tr\n[]\n')
    r = ptcli("report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"))
    assert r.code == 0, r
    assert "Traceback" not in r.stderr
    for f in bad:
        assert str(f) in r.stderr, r
    assert "1 runs" in r.stdout, r
    only_bad = tmp_path / "only-bad"
    shutil.copytree(tmp_path / "runs" / "torn", only_bad / "torn")
    r = ptcli("report", str(only_bad))
    _usage_error(r, "1 unreadable", "torn")


def test_report_out_is_a_file(ptcli, smoke_pretrain, tmp_path):
    (tmp_path / "out").write_text("x")
    r = ptcli("report", str(smoke_pretrain), "--out", str(tmp_path / "out"))
    _usage_error(r, str(tmp_path / "out"))


BROKEN_PLUGIN = '''
from hydra.experimental.callback import Callback


class Broken(Callback):
    def __init__(self):  # (Hydra only warns about errors in the callback's hooks; its constructor is code that runs)
        raise ZeroDivisionError("the plugin divided by zero")
'''


@pytest.mark.slow  # a real process
def test_broken_plugin_is_an_internal_error_not_a_config_error(ptcli, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "brokenplugin.py").write_text(BROKEN_PLUGIN)
    run = tmp_path / "run"
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, f"hydra.run.dir={run}",
              "+hydra.callbacks.broken._target_=brokenplugin.Broken", env={"PYTHONPATH": str(tmp_path / "pkg")})
    saved = _internal_error(r)
    assert "ZeroDivisionError: the plugin divided by zero" in saved.read_text()
    assert "Traceback" in saved.read_text()
    assert not (run / "run.json").exists()


def test_config_errors_stay_exit_2(ptcli, tmp_path):
    run = tmp_path / "run"
    r = ptcli("pretrain", "debug=smoke", "model=nosuchmodel", f"hydra.run.dir={run}")
    _usage_error(r, "nosuchmodel", "transformer")
    r = ptcli("pretrain", "debug=smoke", "model.dim=abc", f"hydra.run.dir={run}")
    _usage_error(r, "model.dim")
    (tmp_path / "afile").write_text("x")
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, f"hydra.run.dir={tmp_path / 'afile' / 'run'}")
    _usage_error(r, "afile")
    # A plugin whose class does not exist is the user's config, not a bug.
    r = ptcli("pretrain", "debug=smoke", f"hydra.run.dir={run}", "+hydra.callbacks.x._target_=nosuchpkg.Cb")
    _usage_error(r, "nosuchpkg")


def test_unexpected_exception_in_a_plain_verb_is_internal(tmp_path):
    # The guard every non-Hydra verb runs in, fed a real bug (ZeroDivisionError) in its own process.
    code = ("import sys; from ptcli.cli import _guarded\n"
            "sys.exit(_guarded(lambda: 1 / 0))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PTCLI_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    m = re.search(r"internal error: ZeroDivisionError: division by zero \(traceback saved to (.+?)\)", proc.stderr)
    assert m, proc.stderr
    saved = Path(m.group(1))
    assert saved.is_relative_to(tmp_path / "cache")
    assert "in _guarded" in saved.read_text() and "ZeroDivisionError" in saved.read_text()


def test_load_hint_says_offline_only_when_offline(monkeypatch):
    from ptcli.errors import load_hint

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert "offline" not in load_hint(FileNotFoundError("no such dataset"), "it").lower()
    assert "could not be reached" in load_hint(ConnectionError("refused"), "it")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert "offline" in load_hint(FileNotFoundError("no such dataset"), "it")


@pytest.mark.slow  # a real process
def test_hub_dataset_error_online_does_not_blame_the_network(ptcli, tmp_path):
    # A local path that is a directory without data: datasets fails the same way online and offline.
    (tmp_path / "empty").mkdir()
    r = ptcli("pretrain", "debug=smoke", "data=hf", f"data.name={tmp_path / 'empty'}",
              f"hydra.run.dir={tmp_path / 'run'}", env={"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"})
    _usage_error(r, "data.name")
    assert "offline" not in r.stderr.lower(), r
    if (tmp_path / "run" / "run.json").exists():
        assert read_manifest(tmp_path / "run")["status"] == "failed"


@pytest.mark.parametrize("seed", ["-3", "1000000000000000000000000000000"])
def test_a_seed_out_of_range_is_a_config_error(seed, tmp_path, capsys):
    """Found by scripts/fuzz_cli.py: a 100-bit seed overflowed torch's generator inside the run (exit 1, internal
    error). It is the user's to fix: exit 2 before the run directory is written."""
    from ptcli.launch import launch

    assert launch("finetune", ["debug=smoke", f"seed={seed}", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert f"seed={seed}" in capsys.readouterr().err
    assert not (tmp_path / "run" / "run.json").exists()

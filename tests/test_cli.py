"""The command line: help, version, lazy imports, Hydra options and config errors."""

from __future__ import annotations

import subprocess
import sys

from ptcli import __version__


def test_help_lists_verbs(ptcli):
    r = ptcli("--help")
    assert r.code == 0, r
    for verb in ("pretrain", "finetune", "evaluate"):
        assert verb in r.stdout


def test_version(ptcli):
    r = ptcli("--version")
    assert r.code == 0 and __version__ in r.stdout


def test_help_does_not_import_torch_or_hydra():
    code = ("import sys\nfrom ptcli.cli import app\n"
            "try:\n    app(['--help'], prog_name='ptcli')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'hydra', 'datasets') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out, out


def test_verb_help_shows_hydra_options(ptcli):
    r = ptcli("pretrain", "--help")
    assert r.code == 0, r
    for opt in ("--multirun", "--cfg", "--resolve", "--info", "--config-dir", "--json"):
        assert opt in r.stdout, opt


def test_typo_in_key_exits_2_with_suggestion(ptcli, tmp_path):
    r = ptcli("pretrain", "trainer.max_stpes=10", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.code == 2, r
    assert "trainer.max_stpes" in r.stderr and "max_steps" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "run.json").exists()


def test_unknown_group_option_lists_choices(ptcli):
    r = ptcli("pretrain", "model=nosuch")
    assert r.code == 2, r
    assert "nosuch" in r.stderr and "transformer" in r.stderr
    assert "Traceback" not in r.stderr


def test_wrong_type_is_a_config_error(ptcli):
    r = ptcli("pretrain", "trainer.batch_size=lots")
    assert r.code == 2, r
    assert "batch_size" in r.stderr


def test_cfg_job_prints_resolved_config_without_running(ptcli, tmp_path):
    r = ptcli("pretrain", "--cfg", "job", "model.dim=48", cwd=tmp_path)
    assert r.code == 0, r
    assert "dim: 48" in r.stdout
    assert not (tmp_path / "outputs").exists()


def test_info_defaults(ptcli, tmp_path):
    r = ptcli("pretrain", "--info", "defaults", cwd=tmp_path)
    assert r.code == 0, r
    assert "model/transformer" in r.stdout


def test_config_dir_adds_experiments(ptcli, tmp_path):
    exp = tmp_path / "myconf" / "experiment"
    exp.mkdir(parents=True)
    (exp / "wide.yaml").write_text("# @package _global_\nmodel:\n  dim: 96\n")
    r = ptcli("pretrain", "--config-dir", str(tmp_path / "myconf"), "experiment=wide", "--cfg", "job", cwd=tmp_path)
    assert r.code == 0, r
    assert "dim: 96" in r.stdout


def _complete(words: str, cword: int) -> list[str]:
    import os

    env = {**os.environ, "_PTCLI_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    out = subprocess.run([sys.executable, "-m", "ptcli"], capture_output=True, text=True, env=env)
    return out.stdout.split()


def test_shell_completion_of_commands_and_group_options():
    from ptcli.cli import complete_overrides

    assert complete_overrides("model=") == ["model=convnet", "model=transformer", "model=vit"]
    assert complete_overrides("data=d") == ["data=digits"]
    assert "objective=" in complete_overrides("obj")
    assert "debug=smoke" in complete_overrides("debug=")
    assert "finetune" in _complete("ptcli fi", 1)
    assert _complete("ptcli pretrain model=", 2) == ["model=convnet", "model=transformer", "model=vit"]

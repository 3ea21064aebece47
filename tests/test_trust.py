"""A run directory may come from anyone: a crafted config.yaml must not make any verb import, write, delete or
execute anything. Each payload goes through evaluate, finetune pretrained=, embed and export (in-process:
the real CLI code paths, without a subprocess per case) and must give exit 2, an error naming the key, and
leave the sentinel files as they were."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from ptcli.build import check_targets, instantiate, load_run_config
from ptcli.cli import app
from ptcli.errors import UsageError
from ptcli.launch import launch

SECRET = "s3cr3t-value-from-the-environment"


# name -> (edit of the config dict given the sentinel paths, text the error must contain)
def _payloads(sentinel: Path, victim: Path) -> dict:
    def replace(slot, node):
        return lambda c: c.update({slot: node})

    return {
        "pathlib-via-ptcli-module": (replace("model", {"_target_": "ptcli.rundir.Path", "_args_": [str(sentinel)]}),
                                     "model._target_"),
        "atomic-write": (replace("data", {"_target_": "ptcli.rundir.atomic_write_text", "path": str(sentinel),
                                          "text": "pwned"}), "data._target_"),
        "discard-another-run": (replace("model", {"_target_": "ptcli.rundir.RunDir.discard", "path": str(victim)}),
                                "model._target_"),
        "os-system": (replace("objective", {"_target_": "ptcli.launch.os.system",
                                            "_args_": [f"touch {sentinel}"]}), "objective._target_"),
        "subprocess-run": (replace("optim", {"_target_": "ptcli.rundir.subprocess.run",
                                             "args": ["touch", str(sentinel)]}), "optim._target_"),
        "stdlib-target": (replace("schedule", {"_target_": "os.system", "_args_": [f"touch {sentinel}"]}),
                          "schedule._target_"),
        "nested-in-unused-key": (lambda c: c.update(notes={"x": {"y": {
            "_target_": "ptcli.rundir.atomic_write_text", "path": str(sentinel), "text": "pwned"}}}), "notes.x.y"),
        "nested-in-component": (lambda c: c["model"].update(extra={
            "_target_": "ptcli.rundir.atomic_write_text", "path": str(sentinel), "text": "pwned"}), "model.extra"),
        "args-in-component": (lambda c: c["model"].update(_args_=[str(sentinel)]), "model._args_"),
        "interpolation": (lambda c: c.update(seed="${oc.env:PTCLI_TEST_SECRET}"), "'seed'"),
        "interpolation-in-component": (lambda c: c["model"].update(dim="${oc.env:PTCLI_TEST_SECRET}"), "model.dim"),
        "wrong-type": (lambda c: c["model"].update(dim="32; rm -rf /"), "model.dim"),
        "unknown-key": (lambda c: c["model"].update(backdoor=1), "model.backdoor"),
    }


@pytest.fixture(scope="module")
def victim(smoke_pretrain, tmp_path_factory) -> Path:
    """Another run whose files a payload tries to delete."""
    path = tmp_path_factory.mktemp("victim") / "run"
    shutil.copytree(smoke_pretrain, path)
    return path


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _tampered(source: Path, dest: Path, edit) -> Path:
    shutil.copytree(source, dest)
    cfg = OmegaConf.to_container(OmegaConf.load(dest / "config.yaml"), resolve=False)
    edit(cfg)
    (dest / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return dest


def _verb(verb: str, run: Path, out: Path, capsys) -> tuple[int, str]:
    if verb in ("evaluate", "finetune"):
        arg = f"run_dir={run}" if verb == "evaluate" else f"pretrained={run}"
        code = launch(verb, [arg, f"hydra.run.dir={out}", "debug=smoke"])
        return code, capsys.readouterr().err
    if verb == "export":
        r = CliRunner().invoke(app, ["export", str(run), "--format", "hf", "--out", str(out)])
    else:
        texts = out.parent / "texts.txt"
        texts.write_text("hello world\n")
        r = CliRunner().invoke(app, ["embed", str(run), "--input", str(texts), "--out", str(out) + ".npy"])
    return r.exit_code, r.output


@pytest.mark.parametrize("verb", ["evaluate", "finetune", "embed", "export"])
@pytest.mark.slow  # several training runs (seconds of CPU)
def test_tampered_config_is_refused_and_nothing_happens(verb, smoke_pretrain, victim, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.setenv("PTCLI_TEST_SECRET", SECRET)
    monkeypatch.delenv("PTCLI_TRUSTED_PACKAGES", raising=False)
    sentinel = tmp_path / "SENTINEL"
    before = _snapshot(victim)
    for name, (edit, key) in _payloads(sentinel, victim).items():
        run = _tampered(smoke_pretrain, tmp_path / name, edit)
        out = tmp_path / f"out-{name}"
        code, err = _verb(verb, run, out, capsys)
        assert code == 2, f"{verb} {name}: exit {code}\n{err}"
        assert key in err and "config.yaml" in err, f"{verb} {name}: the error does not name {key}:\n{err}"
        assert "Traceback" not in err, err
        assert SECRET not in err, f"{verb} {name}: the secret reached the output"
        assert not sentinel.exists(), f"{verb} {name}: the payload ran"
        assert _snapshot(victim) == before, f"{verb} {name}: another run's files changed"
        # Only what Hydra writes for any command (its job log, .hydra/ with this command's own overrides):
        # no run.json, no config.yaml carrying the payload or the secret.
        hydras = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
        written = [p for p in hydras if p.suffix != ".log" and ".hydra" not in p.parts]
        assert not written, f"{verb} {name}: wrote {written}"
        assert all(SECRET not in p.read_text() for p in hydras)


def test_load_run_config_reports_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  _target_: ptcli.models.transformer.TransformerEncoder\n  heads: two\n")
    with pytest.raises(UsageError, match=r"model\.heads"):
        load_run_config(path)
    path.write_text("model: [1, 2]\n")
    with pytest.raises(UsageError, match="model must be a mapping"):
        load_run_config(path)
    path.write_text("model: {_target_: ptcli.models.transformer.TransformerEncoder\n")
    with pytest.raises(UsageError, match="cannot read"):
        load_run_config(path)
    path.write_text("!!python/object/apply:os.system ['true']\n")  # YAML tags: OmegaConf's loader is safe
    with pytest.raises(UsageError):
        load_run_config(path)


def test_own_config_is_checked_with_the_same_registry(tmp_path):
    marker = tmp_path / "pwned"
    cfg = OmegaConf.create({"model": {"_target_": "os.system", "_args_": [f"touch {marker}"]}})
    with pytest.raises(UsageError, match="not trusted"):
        instantiate(cfg.model, "model")
    with pytest.raises(UsageError, match="not a registered ptcli"):
        instantiate(OmegaConf.create({"_target_": "ptcli.rundir.atomic_write_text", "path": str(marker),
                                      "text": "x"}), "data")
    assert not marker.exists()
    with pytest.raises(UsageError, match="notes"):
        check_targets(OmegaConf.create({"notes": [{"_target_": "ptcli.__class__"}]}))
    # A registered component in the wrong slot is refused too.
    with pytest.raises(UsageError, match="objective"):
        check_targets(OmegaConf.create({"objective": {"_target_": "ptcli.models.transformer.TransformerEncoder"}}))
    check_targets(OmegaConf.create({"model": {"_target_": "ptcli.models.transformer.TransformerEncoder"}}))


def test_a_command_line_target_is_refused_before_the_run_dir_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = launch("pretrain", ["debug=smoke", "model._target_=ptcli.rundir.Path", f"hydra.run.dir={out}"])
    assert code == 2
    assert "model._target_" in capsys.readouterr().err
    assert not (out / "run.json").exists() and not (out / "config.yaml").exists()


def test_evaluate_does_not_load_a_hub_dataset_named_by_the_run(smoke_pretrain, tmp_path, capsys):
    def edit(c):
        c["data"].update(_target_="ptcli.data.sources.HubDataset", name="someone/evil", config=None)
        c["data"].pop("label", None)  # pydocs' own key: a hub section has none

    run = _tampered(smoke_pretrain, tmp_path / "hub", edit)
    code = launch("evaluate", [f"run_dir={run}", f"hydra.run.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "data=hf data.name=someone/evil" in err


PACKAGE = '''
from ptcli.models.transformer import TransformerEncoder


class TinyEncoder(TransformerEncoder):
    """A user's own encoder: ptcli's, with a fixed small shape."""

    def __init__(self, vocab_size, **kw):
        super().__init__(vocab_size, dim=32, layers=1, heads=2, ffn_dim=64, max_len=kw.get("max_len", 128))
'''


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_trusted_user_package(tmp_path, capsys, monkeypatch):
    """A user's component runs in their own run when they name its package; a run dir that names it loads
    only when the loading user trusts the package too (the run's own trusted_packages counts for nothing)."""
    pkg = tmp_path / "src" / "mylab_ptcli_test"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.delenv("PTCLI_TRUSTED_PACKAGES", raising=False)
    run = tmp_path / "pre"
    target = "model._target_=mylab_ptcli_test.TinyEncoder"
    assert launch("pretrain", ["debug=smoke", target, f"hydra.run.dir={tmp_path / 'untrusted'}"]) == 2
    assert "trusted_packages=[mylab_ptcli_test]" in capsys.readouterr().err
    code = launch("pretrain", ["debug=smoke", target, "trusted_packages=[mylab_ptcli_test]",
                               "trainer.max_steps=2", f"hydra.run.dir={run}"])
    assert code == 0, capsys.readouterr().err
    assert launch("evaluate", [f"run_dir={run}", f"hydra.run.dir={tmp_path / 'ev1'}"]) == 2
    assert "not trusted" in capsys.readouterr().err
    monkeypatch.setenv("PTCLI_TRUSTED_PACKAGES", "mylab_ptcli_test")
    assert launch("evaluate", [f"run_dir={run}", f"hydra.run.dir={tmp_path / 'ev2'}"]) == 0
    monkeypatch.delenv("PTCLI_TRUSTED_PACKAGES")
    assert launch("evaluate", [f"run_dir={run}", "trusted_packages=[mylab_ptcli_test]",
                               f"hydra.run.dir={tmp_path / 'ev3'}"]) == 0
    sys.modules.pop("mylab_ptcli_test", None)


@pytest.mark.slow  # a real process
def test_cli_exit_code_in_a_subprocess(ptcli, smoke_pretrain, tmp_path):
    """The same refusal through the real entry point: exit 2 and one error paragraph."""
    sentinel = tmp_path / "SENTINEL"
    edit, _ = _payloads(sentinel, tmp_path)["os-system"]
    run = _tampered(smoke_pretrain, tmp_path / "bad", edit)
    r = ptcli("evaluate", str(run), f"hydra.run.dir={tmp_path / 'out'}", env={"PTCLI_TEST_SECRET": SECRET},
              subprocess=True)
    assert r.code == 2, r
    assert "ptcli: error:" in r.stderr and "objective._target_" in r.stderr and "Traceback" not in r.stderr
    assert not sentinel.exists()
    assert os.environ.get("PTCLI_TEST_SECRET") is None

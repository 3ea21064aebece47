"""``ptcli configs list|show|copy|validate`` through the real CLI (in-process), on ptcli's own conf/ and on
config directories and run configs written here. Every shipped preset passes ``validate`` (composition into
its command plus the schema checks); tests/test_configs.py also instantiates every preset's components."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptcli.configs import description
from ptcli.launch import conf_dir

CONF = conf_dir()
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def option_files() -> list[Path]:
    return sorted(p for p in CONF.glob("*/*.yaml") if p.parent.name != "hydra")


def test_every_yaml_in_conf_has_a_one_line_description():
    missing = [str(p.relative_to(CONF)) for p in sorted(CONF.rglob("*.yaml")) if not description(p)]
    assert not missing, f"give these a first comment line (ptcli configs list shows it): {missing}"
    # The description is the first comment line, never Hydra's package directive.
    assert description(CONF / "objective" / "mlm.yaml").startswith("Masked language modeling")


def test_list_names_every_group_option_and_preset_with_its_description(ptcli):
    r = ptcli("configs", "list")
    assert r.code == 0, r
    lines = r.stdout.splitlines()
    for path in option_files():
        row = [line for line in lines if line.split()[:1] == [path.stem] and description(path) in line]
        assert row, f"{path.parent.name}/{path.stem} is not listed with its description"
    assert "hydra" not in {line.split()[0] for line in lines if line and not line.startswith(" ")}
    assert any(line.split()[:1] == ["transformer"] and "[default: pretrain, finetune, evaluate]" in line
               for line in lines)
    assert len(PRESETS) >= 4
    assert any(line.startswith("experiment") for line in lines)

    r = ptcli("configs", "list", "--json")
    assert r.code == 0, r
    groups = json.loads(r.stdout)
    assert [o["name"] for o in groups["experiment"]] == PRESETS
    assert all(o["description"] and o["source"] == "ptcli" for opts in groups.values() for o in opts)
    assert {o["name"]: o["default_for"] for o in groups["trainer"]} == {"default": ["pretrain", "evaluate"],
                                                                         "finetune": ["finetune"]}


def test_list_with_config_dir_adds_yours_and_flags_a_shadowed_name(ptcli, tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "pretrain_wide.yaml").write_text("# @package _global_\n# My wide model.\n")
    (tmp_path / "experiment" / "pretrain_mlm_long.yaml").write_text("# @package _global_\n# Mine.\n")
    r = ptcli("configs", "list", "--config-dir", str(tmp_path), "--json")
    assert r.code == 0, r
    mine = {o["name"]: o for o in json.loads(r.stdout)["experiment"] if o["source"] == "yours"}
    assert mine["pretrain_wide"]["description"] == "My wide model."
    assert mine["pretrain_mlm_long"]["description"].startswith("(shadowed by ptcli's experiment=pretrain_mlm_long")
    r = ptcli("configs", "list", "--config-dir", str(tmp_path / "nope"))
    assert r.code == 2 and "not a directory" in r.stderr, r


def test_show_prints_the_file_and_names_what_exists_on_a_typo(ptcli):
    for spec in ("model/transformer", "model=transformer", "experiment/pretrain_mlm_long.yaml"):
        r = ptcli("configs", "show", spec)
        group, name = spec.replace("=", "/").removesuffix(".yaml").split("/")
        assert r.code == 0, r
        assert r.stdout == (CONF / group / f"{name}.yaml").read_text()
    r = ptcli("configs", "show", "modle/transformer")
    assert r.code == 2 and "unknown config group 'modle'. Did you mean 'model'?" in r.stderr, r
    r = ptcli("configs", "show", "model/transfomer")
    assert r.code == 2, r
    assert "unknown option 'transfomer' in config group 'model'. Did you mean 'model/transformer'?" in r.stderr
    assert "convnet" in r.stderr
    r = ptcli("configs", "show", "transformer")
    assert r.code == 2 and "GROUP/NAME" in r.stderr, r


def test_copy_writes_a_preset_that_runs_from_config_dir(ptcli, tmp_path):
    dest = tmp_path / "myconf"
    r = ptcli("configs", "copy", "experiment/pretrain_mlm_long", str(dest))
    assert r.code == 0, r
    copied = dest / "experiment" / "pretrain_mlm_long_mine.yaml"  # the shipped name would be shadowed by ptcli's
    assert copied.read_text() == (CONF / "experiment" / "pretrain_mlm_long.yaml").read_text()
    assert f"ptcli pretrain --config-dir {dest} experiment=pretrain_mlm_long_mine" in r.stderr

    copied.write_text(copied.read_text().replace("max_steps: 2000", "max_steps: 7"))
    r = ptcli("pretrain", "--config-dir", str(dest), "experiment=pretrain_mlm_long_mine", "--cfg", "job")
    assert r.code == 0, r
    assert "max_steps: 7\n" in r.stdout

    r = ptcli("configs", "copy", "experiment/pretrain_mlm_long", str(dest))  # exists: refused, file kept
    assert r.code == 2 and "exists; pass --force" in r.stderr, r
    assert "max_steps: 7\n" in copied.read_text()
    r = ptcli("configs", "copy", "experiment/pretrain_mlm_long", str(dest), "--force")
    assert r.code == 0, r
    assert "max_steps: 7\n" not in copied.read_text()

    target = tmp_path / "wide.yaml"  # a file name of the user's choosing
    r = ptcli("configs", "copy", "model/transformer", str(target))
    assert r.code == 0 and target.read_text() == (CONF / "model" / "transformer.yaml").read_text(), r
    assert "--group model" in r.stderr
    r = ptcli("configs", "copy", "model/transformer", str(dest / "model" / "transformer.yaml"))
    assert r.code == 2 and "would be ignored" in r.stderr and "transformer_mine.yaml" in r.stderr, r
    assert not (dest / "model" / "transformer.yaml").exists()
    r = ptcli("configs", "copy", "model/nope", str(dest))
    assert r.code == 2 and "unknown option 'nope'" in r.stderr, r


@pytest.fixture(scope="module")
def run_config(tmp_path_factory) -> Path:
    """A fully resolved pretrain config, as a run directory's config.yaml holds it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import ptcli.config  # noqa: F401  (registers the schemas)
    import ptcli.rundir  # noqa: F401

    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose(config_name="pretrain", overrides=["debug=smoke"])
    path = tmp_path_factory.mktemp("run") / "config.yaml"
    OmegaConf.save(cfg, path, resolve=True)
    return path


def test_validate_a_run_config_and_name_the_bad_key(ptcli, run_config, tmp_path):
    r = ptcli("configs", "validate", str(run_config))
    assert r.code == 0, r
    assert "valid run config (ptcli pretrain)" in r.stdout
    text = run_config.read_text()
    cases = {
        "max_steps: 20": ("max_stpes: 20", "trainer.max_stpes"),
        "seed: 0": ("sed: 0", "unknown config key 'sed'. Did you mean 'seed'?"),
        "dim: 128": ("dim: wide", "model.dim"),
        "_target_: ptcli.models.transformer.TransformerEncoder": ("_target_: os.system", "model._target_"),
    }
    for old, (new, named) in cases.items():
        bad = tmp_path / f"bad_{len(list(tmp_path.iterdir()))}.yaml"
        assert old in text, old
        bad.write_text(text.replace(old, new, 1))
        r = ptcli("configs", "validate", str(bad))
        assert r.code == 2, (new, r)
        assert named in r.stderr and str(bad) in r.stderr, (new, r)
    (tmp_path / "broken.yaml").write_text("model: [1\n")
    r = ptcli("configs", "validate", str(tmp_path / "broken.yaml"))
    assert r.code == 2 and "not valid YAML" in r.stderr, r
    r = ptcli("configs", "validate", str(tmp_path / "missing.yaml"))
    assert r.code == 2 and "no such file" in r.stderr, r


def test_validate_an_option_file_composes_it_into_its_command(ptcli, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "experiment").mkdir()
    wide = tmp_path / "model" / "wide.yaml"
    wide.write_text("# Wider.\ndefaults:\n  - /schema/model/transformer@_here_\n  - _self_\ndim: 256\n")
    r = ptcli("configs", "validate", str(wide))
    assert r.code == 0 and "valid model option" in r.stdout, r
    wide.write_text(wide.read_text().replace("dim: 256", "dimm: 256"))
    r = ptcli("configs", "validate", str(wide))
    assert r.code == 2, r
    assert "unknown config key 'model.dimm'. Did you mean 'model.dim'?" in r.stderr
    # An experiment that uses the bad option: the error says where the key is.
    preset = tmp_path / "experiment" / "pretrain_wide.yaml"
    preset.write_text("# @package _global_\ndefaults:\n  - override /model: wide\n")
    r = ptcli("configs", "validate", str(preset))
    assert r.code == 2 and "model.dimm" in r.stderr and "in model/wide" in r.stderr, r
    wide.write_text(wide.read_text().replace("dimm: 256", "dim: 256"))
    preset.write_text(preset.read_text() + "trainer:\n  max_stepz: 3\n")
    r = ptcli("configs", "validate", str(preset))
    assert r.code == 2 and "trainer.max_stepz" in r.stderr and "'trainer.max_steps'" in r.stderr, r
    # Outside a group folder: --group says which; an option that extends no schema builds nothing.
    loose = tmp_path / "loose.yaml"
    loose.write_text("defaults:\n  - _self_\ndim: 3\n")
    r = ptcli("configs", "validate", str(loose))
    assert r.code == 2 and "Pass --group GROUP" in r.stderr, r
    r = ptcli("configs", "validate", str(loose), "--group", "model")
    assert r.code == 2 and "'model' has no _target_" in r.stderr, r
    r = ptcli("configs", "validate", str(loose), "--group", "modle")
    assert r.code == 2 and "unknown config group" in r.stderr, r


@pytest.mark.parametrize("preset", PRESETS)
def test_every_shipped_preset_validates(ptcli, preset):
    r = ptcli("configs", "validate", str(CONF / "experiment" / f"{preset}.yaml"))
    assert r.code == 0, r
    assert f"composed into `ptcli {preset.split('_', 1)[0]}`" in r.stdout

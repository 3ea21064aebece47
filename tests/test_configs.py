"""Every option of every config group composes and instantiates, for every command, in this process.

As lightning-hydra-template's config tests: Hydra's compose API on ``conf/``, then each component section
(a top-level section with a ``_target_``) built through ptcli's registry (``ptcli.build.instantiate``), with
tiny real files where a data source needs them. A new YAML option is covered the moment it is added; these
run in seconds, so most config coverage needs no subprocess.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict

import ptcli.config  # noqa: F401  (registers the schemas the YAML files extend, as the launcher does)
import ptcli.rundir  # noqa: F401  (registers ${ptcli.unique_dir:...}, used by hydra.run.dir)
from ptcli import build
from ptcli.launch import conf_dir

COMMANDS = ("pretrain", "finetune", "evaluate")
# Groups chosen with `+group=option` (in no command's defaults list) that apply to a command: the options of
# hparams_search are named after the command they search.
OPT_IN = ("hparams_search",)
# Presets (conf/experiment/) choose their own model/objective/data, so they are composed as a user runs them,
# without the text/image stack below, and only into the command their name begins with (pretrain_...).
PRESETS = ("experiment",)
# Options that need an image stack around them; every other option is composed with the text stack.
IMAGE_OPTIONS = {"model": {"convnet", "vit"}, "objective": {"simclr", "byol", "vicreg", "barlow_twins", "mae"},
                 "data": {"digits", "images"}}
TEXT_STACK = {"model": "transformer", "objective": "mlm", "data": "pydocs"}
IMAGE_STACK = {"model": "convnet", "objective": "simclr", "data": "digits"}
# Options that take only some partners: objective=mae masks patches, so it composes with model=vit.
PARTNERS = {("objective", "mae"): {"model": "vit"}}
TINY = {"model": {"dim": 32, "heads": 2, "layers": 2, "ffn_dim": 64}, "trainer": {"max_steps": 4}}
# Keys the YAML leaves null for the run to derive (the recipe's default learning rate): set as a run would.
DERIVED = {"optim": {"lr": 1e-3}}


def groups() -> dict[str, list[str]]:
    """conf/'s config groups and their options (hydra/ holds Hydra's own settings, not a ptcli concern)."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(conf_dir().iterdir()) if d.is_dir() and d.name != "hydra"}


@functools.cache
def default_choices(command: str) -> dict[str, str | None]:
    """The groups in ``command``'s defaults list and their default options (None: off by default)."""
    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = compose(config_name=command, overrides=["run_dir=/nonexistent"] if command == "evaluate" else [],
                      return_hydra_config=True)
    return {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith(("hydra", "schema"))}


def cases() -> list[tuple[str, str, str]]:
    out = []
    for command in COMMANDS:
        choices = default_choices(command)
        for group, options in groups().items():
            for option in options:
                if group in PRESETS:
                    if option.startswith(command + "_"):
                        out.append((command, group, option))
                elif group in choices or (group in OPT_IN and option.startswith(command)):
                    out.append((command, group, option))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Tiny real inputs for the sources that need them: a CSV, an image folder, a save_to_disk dataset."""
    import datasets
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rows = [{"text": f"a small example sentence number {i}", "label": "ab"[i % 2]} for i in range(20)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for c in ("cat", "dog"):
        (root / "images" / c).mkdir(parents=True)
        for i in range(6):
            pixels = np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / c / f"{i}.png")
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "hf"))
    return {"data.train": root / "train.jsonl", "data.path": root / "images", "data.name": root / "hf"}


def compose_case(command: str, group: str, option: str, files: dict[str, Path]) -> DictConfig:
    choices = default_choices(command)
    stack = IMAGE_STACK if option in IMAGE_OPTIONS.get(group, ()) else TEXT_STACK
    stack = {**stack, **PARTNERS.get((group, option), {})}
    overrides = [f"{g}={o}" for g, o in stack.items() if g in choices and g != group and group not in PRESETS]
    overrides.append(f"{group}={option}" if group in choices else f"+{group}={option}")
    overrides += ["debug=smoke"] if "debug" in choices and group != "debug" else []
    if command == "evaluate":
        overrides.append("run_dir=/nonexistent/run")
    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = compose(config_name=command, overrides=overrides)
    with open_dict(cfg):  # required keys (???) of the chosen data source, and a model small enough to build fast
        for key, path in files.items():
            section, _, leaf = key.partition(".")
            if leaf in cfg.get(section, {}) and OmegaConf.is_missing(cfg[section], leaf):
                cfg[section][leaf] = str(path)
        for section, values in TINY.items():
            for key, value in values.items():
                if key in cfg.get(section, {}):
                    cfg[section][key] = value
        for section, values in DERIVED.items():
            for key, value in values.items():
                if key in cfg.get(section, {}) and cfg[section][key] is None:
                    cfg[section][key] = value
    return cfg


def components(cfg: DictConfig) -> list[str]:
    return [k for k, v in cfg.items() if isinstance(v, DictConfig) and "_target_" in v]


def build_all(cfg: DictConfig) -> dict[str, object]:
    """Instantiate every component section, in dependency order, giving each only the arguments it requires
    and does not set itself (what a recipe passes: vocabulary size, the encoder, the optimizer, ...)."""
    built: dict[str, object] = {}
    given = {"vocab_size": 64, "mask_id": 4, "special_ids": [0, 1, 2, 3, 4], "seed": 0, "total_steps": 10}
    order = ["model", "objective", "data", "optim", "schedule"]
    for key in sorted(components(cfg), key=lambda k: order.index(k) if k in order else len(order)):
        node = cfg[key]
        pool = {**given, "encoder": built.get("model"), "model": built.get("objective") or built.get("model"),
                "optimizer": built.get("optim")}
        target = get_method(node._target_) if not inspect.isclass(_target(node)) else _target(node)
        params = inspect.signature(target).parameters.values()
        kwargs = {p.name: pool[p.name] for p in params if p.name in pool and p.name not in node
                  and p.default is inspect.Parameter.empty}
        built[key] = build.instantiate(node, key, **kwargs)
    return built


def _target(node: DictConfig) -> object:
    from hydra.utils import get_object

    return get_object(node._target_)


def test_every_group_option_is_covered():
    covered = {(g, o) for _, g, o in cases()}
    missing = [f"{g}={o}" for g, options in groups().items() for o in options if (g, o) not in covered]
    assert not missing, f"config options no command composes: {missing}"
    for group, options in IMAGE_OPTIONS.items():  # the table names options that exist
        assert options <= set(groups()[group]), (group, options)


@pytest.mark.parametrize(("command", "group", "option"), cases(), ids=lambda v: str(v))
def test_option_composes_and_instantiates(command, group, option, files):
    cfg = compose_case(command, group, option, files)
    assert cfg.command == command
    built = build_all(cfg)
    for key in ("model", "data", "optim", "schedule"):
        assert key in built or key not in cfg, f"{key} was not built"
    if command != "evaluate":
        assert isinstance(built["model"], torch.nn.Module)
        assert isinstance(built["optim"], torch.optim.Optimizer)
        assert isinstance(built["schedule"], torch.optim.lr_scheduler.LRScheduler)
    if command == "pretrain":
        assert isinstance(built["objective"], torch.nn.Module)
        assert any(p is q for p in built["objective"].parameters() for q in built["model"].parameters())


def test_every_preset_is_for_a_command_and_composes_as_shipped(files):
    """A preset keeps what it sets: debug=smoke and the tiny-model shrink above are the only changes."""
    presets = groups().get("experiment", [])
    assert presets, "conf/experiment/ ships presets (ptcli configs list)"
    for option in presets:
        command = option.split("_", 1)[0]
        assert command in COMMANDS, f"experiment/{option}: name it after its command (pretrain_..., finetune_...)"
        cfg = compose_case(command, "experiment", option, files)
        with initialize_config_dir(str(conf_dir()), version_base=None):
            plain = compose(config_name=command, overrides=[f"experiment={option}"])
        assert cfg.model._target_ == plain.model._target_ and cfg.data._target_ == plain.data._target_
        if command == "pretrain":
            assert cfg.objective._target_ == plain.objective._target_

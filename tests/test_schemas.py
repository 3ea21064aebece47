"""Defaults live in one place: each component's schema dataclass. The YAML options in conf/ set only what
differs from it, each data source refuses the keys of the others, and run directories written with the old
flat data schema still load. In-process and fast: Hydra's compose API, no subprocess.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from hydra.utils import get_method
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

import ptcli.config  # noqa: F401  (registers the schemas, as the launcher does)
from ptcli.build import load_run_config
from ptcli.config import PLAIN_SECTIONS, SCHEMAS, RunConfig, component_schemas
from ptcli.data.sources import SOURCE_SCHEMAS
from ptcli.errors import UsageError

CONF = Path(__file__).resolve().parents[1] / "conf"
DATA = Path(__file__).resolve().parent / "data"
GROUPS = ("model", "objective", "data", "optim", "schedule", "trainer")  # the groups that extend a schema
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
LEGACY_FIXTURES = sorted(DATA.glob("legacy_*_config.yaml"))  # config.yaml files of runs made before this schema


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node


def _option(group: str, name: str) -> tuple[Any, str, dict, dict]:
    """(schema node, section it fills, its explicit keys, keys it sets in other sections) of one YAML option."""
    text = (CONF / group / f"{name}.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    [entry] = [d for d in raw.pop("defaults") if isinstance(d, str) and d.startswith("/schema/")]
    path, _, package = entry.partition("@")
    _, _, schema_group, schema_name = path.split("/")
    schema = ConfigStore.instance().repo["schema"][schema_group][f"{schema_name}.yaml"].node
    if "@package _global_" in text:  # e.g. objective=simclr: its section under `objective:`, the rest global
        section = package
        explicit, extras = raw.pop(section, None) or {}, raw
    else:
        section, explicit, extras = group, raw, {}
    return schema, section, explicit, extras


def _compose(command: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=command, overrides=overrides)


@pytest.mark.parametrize(("group", "name"), OPTIONS, ids=[f"{g}={n}" for g, n in OPTIONS])
def test_yaml_sets_only_what_differs_from_the_schema(group: str, name: str) -> None:
    schema, section, explicit, extras = _option(group, name)
    defaults = _plain(schema)
    for key, value in explicit.items():
        assert key in defaults, f"conf/{group}/{name}.yaml sets {section}.{key}, which its schema lacks"
        assert value != defaults[key], (f"conf/{group}/{name}.yaml sets {section}.{key}={value!r}, the schema's "
                                        "default: leave it to the schema")
    run_defaults = OmegaConf.structured(RunConfig)
    for other, keys in extras.items():  # a global option's settings of other sections (simclr: trainer, optim)
        for key, value in keys.items():
            assert value != _plain(run_defaults[other][key]), (
                f"conf/{group}/{name}.yaml sets {other}.{key}={value!r}, the schema's default")


@pytest.mark.parametrize(("group", "name"), OPTIONS, ids=[f"{g}={n}" for g, n in OPTIONS])
def test_composed_section_is_schema_defaults_plus_explicit_keys(group: str, name: str) -> None:
    schema, section, explicit, _ = _option(group, name)
    # Without the objective (unless it is the option tested): objective=mlm also sets optim.lr.
    cfg = _compose("pretrain", [f"{group}={name}"] + ([] if group == "objective" else ["~objective"]))
    expected = OmegaConf.merge(schema, explicit)
    assert _plain(cfg[section]) == _plain(expected)
    assert OmegaConf.get_type(cfg[section]) is OmegaConf.get_type(schema)  # typed: unknown keys are refused
    if section in component_schemas():  # a component: its schema is the one registered for its target
        assert component_schemas()[section][cfg[section]._target_] is OmegaConf.get_type(schema)


def _schema_params() -> list[tuple[type, str, Any]]:
    out = []
    for schemas in SCHEMAS.values():
        for schema in schemas:
            for f in dataclasses.fields(schema):
                if f.name != "_target_" and f.default is not dataclasses.MISSING and f.default != "???":
                    out.append((schema, f.name, f.default))
    return out


@pytest.mark.parametrize(("schema", "key", "default"), _schema_params(),
                         ids=[f"{s.__name__}.{k}" for s, k, _ in _schema_params()])
def test_component_signature_defaults_are_the_schema_defaults(schema: type, key: str, default: Any) -> None:
    """A component called directly (tests, scripts) gets the same defaults as one built from the YAML."""
    target = get_method(schema._target_)
    params = inspect.signature(target).parameters
    if key not in params:  # keys the component reads from **options (data sources)
        assert any(p.kind is p.VAR_KEYWORD for p in params.values()), f"{schema._target_} does not take {key}"
        return
    param = params[key]
    assert param.default is inspect.Parameter.empty or param.default == default, (
        f"{schema._target_}({key}={param.default!r}) but {schema.__name__}.{key} = {default!r}")


FOREIGN = {  # a key of another source, and a value of the right type for it
    "num_labels": 5, "train": "x.txt", "name": "wikitext", "text_column": "body", "streaming": True,
    "val_fraction": 0.2, "test_fraction": 0.2, "path": "imgs/", "size": 64, "channels": 3, "on_error": "skip",
}


@pytest.mark.parametrize("source", sorted(SOURCE_SCHEMAS))
def test_a_key_of_another_source_is_refused(source: str) -> None:
    own = {f.name for f in dataclasses.fields(SOURCE_SCHEMAS[source])}
    foreign = {k: v for k, v in FOREIGN.items() if k not in own}
    assert foreign
    for key, value in foreign.items():
        with pytest.raises(ConfigKeyError, match=key):
            OmegaConf.merge(OmegaConf.structured(SOURCE_SCHEMAS[source]), {key: value})
    key = sorted(foreign)[0]  # and through Hydra's override grammar, as the command line does
    with pytest.raises(ConfigCompositionException):
        _compose("pretrain", [f"data={source}", f"data.{key}={foreign[key]}"])


def test_data_size_with_text_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    from ptcli.launch import launch

    assert launch("pretrain", ["data=text", "data.train=x.txt", "data.size=64"]) == 2
    err = capsys.readouterr().err
    assert "ptcli: error: unknown config key 'data.size'" in err
    assert "Valid keys in 'data':" in err and "train" in err


def test_shared_keys_exist_for_every_source() -> None:
    """debug=smoke sets data.block_size and data.max_train_examples whatever the source; finetune reads
    data.labels_per_class."""
    smoke = yaml.safe_load((CONF / "debug" / "smoke.yaml").read_text())
    for source, schema in SOURCE_SCHEMAS.items():
        keys = {f.name for f in dataclasses.fields(schema)}
        assert set(smoke["data"]) | {"labels_per_class"} <= keys, source


@pytest.mark.parametrize("fixture", LEGACY_FIXTURES, ids=[p.stem for p in LEGACY_FIXTURES])
def test_run_config_with_the_old_flat_data_section_loads(fixture: Path) -> None:
    old = yaml.safe_load(fixture.read_text())["data"]
    assert {"size", "channels", "num_labels", "path"} <= set(old)  # written by the one flat DataConfig
    cfg = load_run_config(fixture)
    schema = component_schemas()["data"][old["_target_"]]
    own = {f.name for f in dataclasses.fields(schema)}
    assert set(cfg.data) == own & set(old)  # the keys its source never read are dropped ...
    assert all(cfg.data[k] == old[k] for k in cfg.data)  # ... the rest kept as written (block_size 64 from smoke)
    assert cfg.data.block_size == 64 and cfg.data.max_train_examples == 2000
    for name, section_schema in PLAIN_SECTIONS.items():  # the other sections are untouched
        assert _plain(cfg[name]) == yaml.safe_load(fixture.read_text())[name], section_schema


def test_a_loaded_data_section_still_refuses_unknown_keys(tmp_path: Path) -> None:
    fixture = DATA / "legacy_pydocs_mlm_config.yaml"
    raw = yaml.safe_load(fixture.read_text())
    raw["data"]["sizee"] = 3  # not a key any ptcli wrote: edited, or another version
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UsageError, match="data.sizee"):
        load_run_config(tmp_path / "config.yaml")
    raw = yaml.safe_load(fixture.read_text())
    raw["data"]["block_size"] = "big"  # a kept key is still type-checked
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UsageError, match="block_size"):
        load_run_config(tmp_path / "config.yaml")

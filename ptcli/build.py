"""Safe instantiation: a config can build ptcli's registered components and nothing else.

A run directory may come from anyone, and Hydra's ``instantiate`` imports and calls whatever dotted name a
``_target_`` holds, resolving it through module attributes: ``ptcli.rundir.Path`` is ``pathlib.Path`` and
``ptcli.launch.os.system`` is ``os.system``. So a target is accepted only when it is

- exactly the ``_target_`` of a schema registered for that slot (``ptcli.config.SCHEMAS``), or
- in a package the user names as trusted: ``trusted_packages=[mylab]`` in the config of the command being
  run (e.g. their own experiment in ``--config-dir``), or ``PTCLI_TRUSTED_PACKAGES=mylab``. A loaded run
  directory's own ``trusted_packages`` counts for nothing: trust comes from the user (README: Safety).

A ``_target_`` anywhere but at the root of a component slot is refused (Hydra builds nested targets first,
so a payload in an unused key would run before anything else), and so are Hydra's other special keys.
``load_run_config`` reads a foreign ``config.yaml`` without resolving any ``${...}`` (an ``${oc.env:...}``
would copy the loader's secrets into the new run) and validates each section against its schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ptcli.errors import UsageError

TRUST_ENV = "PTCLI_TRUSTED_PACKAGES"
# The packages trusted by the command being run (``trust``); the environment's until a task sets them.
TRUSTED: tuple[str, ...] = ()
# Hydra's special keys besides _target_: _args_ passes positional arguments, _partial_/_recursive_/_convert_
# change how targets are called. ptcli's components need none of them.
HYDRA_KEYS = ("_args_", "_partial_", "_recursive_", "_convert_")


def trusted_packages(extra: Iterable[str] | None = None) -> tuple[str, ...]:
    """Packages the user trusts: ``PTCLI_TRUSTED_PACKAGES`` (comma-separated) plus ``extra``."""
    names = [n.strip() for n in os.environ.get(TRUST_ENV, "").split(",")]
    names += [str(n).strip() for n in (extra or [])]
    out = []
    for name in names:
        if not name:
            continue
        if name == "ptcli" or name.startswith("ptcli.") or not all(p.isidentifier() for p in name.split(".")):
            raise UsageError(f"trusted package {name!r} (trusted_packages / {TRUST_ENV}) must be the dotted name of "
                             "a Python package of your own, e.g. mylab.models; ptcli's components are always allowed.")
        out.append(name)
    return tuple(out)


def trust(cfg: DictConfig, where: str = "config") -> tuple[str, ...]:
    """At the start of a task: record the packages this command trusts and check its composed config, so a
    bad ``_target_`` is refused before the run directory is written."""
    global TRUSTED
    TRUSTED = trusted_packages(cfg.get("trusted_packages"))
    check_targets(cfg, where)
    # The run directories this command will load are checked now too, so a tampered one is refused
    # before anything is written (a missing or damaged one is the recipe's to report).
    for key in ("run_dir", "pretrained", "resume"):
        value = cfg.get(key)
        if value and not str(value).startswith("hf:") and (Path(str(value)) / "config.yaml").is_file():
            load_run_config(Path(str(value)) / "config.yaml", TRUSTED)
    return TRUSTED


def resolve(cfg: DictConfig) -> None:
    """Resolve the interpolations of the composed config in place, so a value that resolves to the wrong type
    (``data.size=${oc.env:HOME}``) is a config error naming the key, before the run directory is written."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        first = " ".join(str(exc).splitlines()[0].split())
        raise UsageError(f"{'config key ' + repr(key) + ': ' if key else ''}{first}") from None


def _in_package(target: str, packages: Iterable[str]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in packages)


def _container(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node


def check_targets(cfg: Any, where: str = "config", *, trusted: Iterable[str] | None = None) -> None:
    """Raise ``UsageError`` naming the key if ``cfg`` (a whole run config) names anything but a registered
    component at a component slot, or a component of a ``trusted`` package (default: ``TRUSTED``)."""
    from ptcli.config import component_schemas

    registry = component_schemas()
    node = _container(cfg)
    if not isinstance(node, dict):
        raise UsageError(f"{where}: expected a mapping of config sections, got {type(node).__name__}.")
    for key, value in node.items():
        if key == "_target_" or key in HYDRA_KEYS:
            raise UsageError(f"{where}: key '{key}' at the top level is not allowed; a _target_ may only name a "
                             "component of the model, objective, data, optim or schedule section.")
        if key in registry and isinstance(value, dict) and "_target_" in value:
            check_component(value, key, f"{where}: {key}", trusted=trusted)
        else:
            _refuse_nested(value, f"{where}: {key}", key)


def check_component(node: Any, slot: str, where: str, *, trusted: Iterable[str] | None = None) -> None:
    """Check one component section (the value of ``model``, ``objective``, ... in a run config)."""
    from ptcli.config import component_schemas

    trusted = (TRUSTED or trusted_packages()) if trusted is None else tuple(trusted)

    node = _container(node)
    if not isinstance(node, dict):
        raise UsageError(f"{where}: expected a mapping with a _target_, got {type(node).__name__}.")
    target = node.get("_target_")
    allowed = component_schemas()[slot]
    if not isinstance(target, str):
        raise UsageError(f"{where}._target_ must be a string naming a ptcli component, got {target!r}.")
    if target in allowed:
        for key, value in node.items():
            if key in HYDRA_KEYS:
                raise UsageError(f"{where}.{key}: Hydra's special key is not accepted in ptcli's components.")
            if key != "_target_":
                _refuse_nested(value, f"{where}.{key}", f"{slot}.{key}")
        return
    user_package = not (target == "ptcli" or target.startswith("ptcli."))
    if user_package and _in_package(target, trusted):
        return  # the user's own component: its sub-configs are the user's business
    choices = ", ".join(sorted(allowed))
    if user_package:
        pkg = target.split(".")[0]
        raise UsageError(f"{where}._target_ = '{target}' is not a ptcli component, and its package is not trusted. "
                         f"If '{pkg}' is your own (or from someone you trust) and installed, pass "
                         f"trusted_packages=[{pkg}] or set {TRUST_ENV}={pkg}. ptcli's {slot} components: {choices}.")
    raise UsageError(f"{where}._target_ = '{target}' is not a registered ptcli {slot} component ({choices}). The "
                     "config may have been tampered with.")


def _refuse_nested(node: Any, where: str, key: str) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_" or k in HYDRA_KEYS:
                raise UsageError(f"{where}: a '{k}' inside '{key}' is not allowed: only the model, objective, "
                                 "data, optim and schedule sections name components, at their top. The config may "
                                 "have been tampered with.")
            _refuse_nested(v, f"{where}.{k}", key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _refuse_nested(item, f"{where}[{i}]", key)


def _refuse_interpolations(node: Any, where: str, path: Path) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _refuse_interpolations(v, f"{where}.{k}" if where else str(k), path)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _refuse_interpolations(item, f"{where}[{i}]", path)
    elif isinstance(node, str) and "${" in node:
        raise UsageError(f"{path}: key '{where}' holds an interpolation ({node[:80]!r}); a run's config.yaml is "
                         "fully resolved when ptcli writes it, so this one was edited. ptcli does not resolve "
                         "interpolations from a loaded config (they can read environment variables and files).")


def _validate(node: dict[str, Any], schema: type, where: str) -> None:
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        first = str(exc).splitlines()[0]
        raise UsageError(f"{where}{'.' + key if key else ''}: {first}. The config does not match ptcli's "
                         f"schema {schema.__name__}; it was written by another version or edited.") from None


def load_run_config(path: str | Path, trusted: Iterable[str] | None = None) -> DictConfig:
    """A run directory's ``config.yaml``, checked before anything in it is used: no interpolations, only
    registered (or trusted) components at component slots, every section valid against its schema."""
    from dataclasses import fields

    from ptcli.config import LEGACY_KEYS, PLAIN_SECTIONS, component_schemas

    path = Path(path)
    try:
        cfg = OmegaConf.load(path)  # a safe YAML loader: no Python tags
    except Exception as exc:  # yaml's and OmegaConf's errors have no common base
        raise UsageError(f"cannot read '{path}': {' '.join(str(exc).split())[:300]}. The run directory is "
                         "damaged.") from None
    if not isinstance(cfg, DictConfig):
        raise UsageError(f"'{path}' is not a mapping of config sections; the run directory is damaged.")
    raw = OmegaConf.to_container(cfg, resolve=False)
    where = str(path)
    _refuse_interpolations(raw, "", path)
    check_targets(raw, where, trusted=trusted)
    registry = component_schemas()
    for slot, schemas in registry.items():
        section = raw.get(slot)
        if isinstance(section, dict) and section.get("_target_") in schemas:
            schema = schemas[section["_target_"]]
            known = {f.name for f in fields(schema)}
            # Written by an older ptcli: drop keys it wrote for every component of the slot (config.LEGACY_KEYS)
            # that this component's schema lacks; this component never read them.
            legacy = [k for k in section if k not in known and k in LEGACY_KEYS.get(slot, ())]
            if legacy:
                raw[slot] = section = {k: v for k, v in section.items() if k not in legacy}
                cfg = OmegaConf.create(raw)
            _validate(section, schema, f"{where}: {slot}")
        elif section is not None and not isinstance(section, dict):
            raise UsageError(f"{where}: {slot} must be a mapping, got {type(section).__name__}.")
    for name, schema in PLAIN_SECTIONS.items():
        section = raw.get(name)
        if section is not None:
            if not isinstance(section, dict):
                raise UsageError(f"{where}: {name} must be a mapping, got {type(section).__name__}.")
            _validate(section, schema, f"{where}: {name}")
    return cfg


def run_config(run: Any, trusted: Iterable[str] | None = ()) -> DictConfig:
    """A run directory's ``config.yaml`` (``run``: a ``RunDir``), checked as untrusted input: the directory may
    come from anyone. ``trusted``: packages besides ptcli whose components it may name."""
    return load_run_config(Path(run.path) / "config.yaml", trusted_packages(trusted))


def instantiate(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` of one component section, after checking its ``_target_``.

    The sections reaching here were composed by the user, or loaded through ``load_run_config``.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    check_component(node, where.split(".")[0], where)
    try:
        return hydra_instantiate(node, **kwargs, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UsageError):
            raise cause from None
        raise UsageError(f"{where}: cannot build {node.get('_target_')}: {exc}") from exc


def component_class(node: Any, slot: str) -> type:
    """The class a component section names, checked as ``instantiate`` checks it, without building it: what a
    component declares about itself (``modality``, ...) is read from its class, never from the target's text."""
    from hydra.utils import get_class

    check_component(node, slot, slot)
    target = _container(node)["_target_"]
    try:
        return get_class(target)
    except Exception as exc:  # a trusted package that is not installed, or a target that is no class
        raise UsageError(f"{slot}._target_ = '{target}': cannot import it ({' '.join(str(exc).split())[:200]}). "
                         "Install the package that provides it, or fix the name.") from None


def run_modality(cfg: DictConfig) -> str:
    """What a run works on (``"text"`` | ``"image"``), as its model class declares; its objective must agree."""
    model_cls = component_class(cfg.model, "model")
    kind = getattr(model_cls, "modality", None)
    if kind not in ("text", "image"):
        raise UsageError(f"model._target_ = '{cfg.model._target_}' declares no modality: give the class "
                         "modality = 'text' or 'image' (README: Extending ptcli).")
    if cfg.get("objective") is not None:
        objective_cls = component_class(cfg.objective, "objective")
        wants = getattr(objective_cls, "modality", None)
        if wants != kind:
            raise UsageError(f"objective={cfg.objective._target_} is for {wants} models, but model="
                             f"{cfg.model._target_} is a {kind} model; pick an objective for {kind} "
                             f"({'objective=mlm' if kind == 'text' else 'objective=simclr'}).")
    return kind

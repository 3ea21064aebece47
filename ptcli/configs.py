"""``ptcli configs``: what conf/ ships, one option's YAML, a copy of one to edit, and a schema check of a file.

``list``, ``show`` and ``copy`` only read files (no torch, no Hydra): they answer in a fraction of a second.
``validate`` checks a file the way a run would: an option file is composed by Hydra into the config of the
command it is for (so a bad key fails exactly as it would at ``ptcli pretrain``), a whole run config
(a run directory's ``config.yaml``) goes through ``ptcli.build.load_run_config`` and ``RunConfig``.
"""

from __future__ import annotations

import difflib
import functools
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ptcli.errors import UsageError
from ptcli.launch import conf_dir

COMMANDS = ("pretrain", "finetune", "evaluate")
# conf/hydra/ holds Hydra's own settings (run directories, logging): not a choice a user makes.
HIDDEN_GROUPS = ("hydra",)
# Groups whose options are named after the command they are for (``pretrain_...``), and apply to it only.
PER_COMMAND = ("experiment", "hparams_search")
ORDER = ("model", "objective", "data", "trainer", "optim", "schedule", "debug", "hparams_search", "experiment")
_PACKAGE = re.compile(r"#\s*@package\b")
_SCHEMA_GROUP = re.compile(r"^/?schema/([A-Za-z_]+)/")
# The name an option file is composed under by ``validate``: no shipped option has it, so it cannot be shadowed.
_PROBE = "ptcli_validate__"


@dataclass
class Option:
    """One YAML option of a config group."""

    group: str
    name: str
    path: Path
    description: str
    source: str = "ptcli"  # ptcli (shipped) | yours (--config-dir)
    default_for: list[str] = field(default_factory=list)  # the commands that choose it unless told otherwise

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def description(path: Path) -> str:
    """The first comment line of a YAML file (a ``# @package`` directive is not a description)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if not text:
                    continue
                if not text.startswith("#"):
                    break
                if not _PACKAGE.match(text):
                    return text.lstrip("#").strip()
    except (OSError, UnicodeDecodeError):
        pass
    return ""


@functools.cache
def _defaults(command: str, root: Path) -> dict[str, str | None]:
    """``{group: default option}`` from a primary config's defaults list (None: the group is off by default)."""
    import yaml

    try:
        cfg = yaml.safe_load((root / f"{command}.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, str | None] = {}
    for entry in cfg.get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                out[str(key).removeprefix("optional ").strip()] = value
    return out


def _scan(root: Path, source: str, defaults: dict[str, dict[str, str | None]]) -> dict[str, list[Option]]:
    groups: dict[str, list[Option]] = {}
    if not root.is_dir():
        return groups
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in HIDDEN_GROUPS and
                    not p.name.startswith((".", "_"))):
        options = []
        for path in sorted(d.glob("*.yaml")):
            default_for = [c for c in COMMANDS if defaults.get(c, {}).get(d.name) == path.stem]
            options.append(Option(d.name, path.stem, path, description(path), source, default_for))
        if options:
            groups[d.name] = options
    return groups


def catalog(config_dir: Path | None = None) -> dict[str, list[Option]]:
    """Every config group and its options: ptcli's, then those of ``config_dir`` (the user's ``--config-dir``)."""
    root = conf_dir()
    defaults = {c: _defaults(c, root) for c in COMMANDS}
    groups = _scan(root, "ptcli", defaults)
    if config_dir is not None:
        if not config_dir.is_dir():
            raise UsageError(f"--config-dir {config_dir}: not a directory. Pass the folder that holds your config "
                             "groups (e.g. myconf/ with myconf/experiment/NAME.yaml).")
        for group, options in _scan(config_dir, "yours", {}).items():
            shipped = {o.name for o in groups.get(group, [])}
            # A shipped option of the same name wins (Hydra searches conf/ first): say so rather than list both.
            for o in options:
                if o.name in shipped:
                    o.description = f"(shadowed by ptcli's {group}={o.name}: rename it) {o.description}"
            groups.setdefault(group, []).extend(options)
    return dict(sorted(groups.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER), kv[0])))


def group_commands(group: str) -> list[str]:
    """The commands a group applies to (the primary configs whose defaults list names it)."""
    root = conf_dir()
    return [c for c in COMMANDS if group in _defaults(c, root)]


def usage(option: Option) -> str:
    """How to choose ``option`` on the command line."""
    yours = f" --config-dir {_config_root(option)}" if option.source == "yours" else ""
    commands = _commands_for(option.group, option.name)
    plus = "+" if commands[0][1] else ""
    return f"ptcli {'|'.join(c for c, _ in commands)}{yours} {plus}{option.group}={option.name}"


def _config_root(option: Option) -> Path:
    return option.path.parent.parent


def format_catalog(groups: dict[str, list[Option]]) -> str:
    """``ptcli configs list``: groups, their options (defaults marked) and one line on each."""
    width = max((len(o.name) for opts in groups.values() for o in opts), default=10) + 2
    lines = [f"Config groups and options (ptcli's in {conf_dir()}); choose one with GROUP=NAME.", ""]
    for group, options in groups.items():
        if group in PER_COMMAND:
            how = (f"presets, for the command their name begins with: ptcli pretrain {group}=pretrain_..."
                   if group == "experiment" else f"opt-in: ptcli COMMAND +{group}=COMMAND_...")
        else:
            how = "used by " + (", ".join(group_commands(group)) or "no command's defaults list")
        lines.append(f"{group}  ({how})")
        for o in options:
            marks = [f"default: {', '.join(o.default_for)}"] if o.default_for else []
            marks += ["yours"] if o.source == "yours" else []
            suffix = f"  [{'; '.join(marks)}]" if marks else ""
            lines.append(f"  {o.name:<{width}}{o.description}{suffix}")
        lines.append("")
    lines.append("ptcli configs show GROUP/NAME prints one; ptcli configs copy GROUP/NAME DEST copies one to edit; "
                 "ptcli COMMAND GROUP=NAME --cfg job prints the whole config it composes to.")
    return "\n".join(lines)


def find(spec: str, config_dir: Path | None = None) -> Option:
    """The option named ``GROUP/NAME`` (or ``GROUP=NAME``), or a ``UsageError`` naming what exists."""
    group, sep, name = spec.replace("=", "/", 1).partition("/")
    name = name.removesuffix(".yaml")
    groups = catalog(config_dir)
    if not sep or not group or not name or "/" in name:
        raise UsageError(f"'{spec}': name an option as GROUP/NAME, e.g. model/transformer or "
                         f"experiment/pretrain_mlm_long. Groups: {', '.join(groups)} (ptcli configs list).")
    if group not in groups:
        close = difflib.get_close_matches(group, list(groups), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"unknown config group '{group}'.{hint} Groups: {', '.join(groups)} (ptcli configs list).")
    names = list(dict.fromkeys(o.name for o in groups[group]))
    match = next((o for o in groups[group] if o.name == name), None)  # ptcli's first: it wins, as in Hydra
    if match is None:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean '{group}/{close[0]}'?" if close else ""
        raise UsageError(f"unknown option '{name}' in config group '{group}'.{hint} Options: "
                         f"{', '.join(names)} (ptcli configs list).")
    return match


def show(spec: str, config_dir: Path | None = None) -> str:
    """The YAML text of one option, comments included."""
    return find(spec, config_dir).path.read_text(encoding="utf-8")


def copy(spec: str, dest: Path, *, force: bool = False, config_dir: Path | None = None) -> tuple[Path, str]:
    """Copy one option as a starting point for ``--config-dir``; return the file written and how to use it.

    ``dest``: a ``.yaml`` file, or a config directory (the copy goes to ``DEST/GROUP/NAME.yaml``). A copy that
    keeps the name of a shipped option in a ``GROUP/`` folder would be ignored (Hydra searches ptcli's conf/
    before ``--config-dir``), so that is refused with the name to use instead."""
    option = find(spec, config_dir)
    shipped = {o.name for o in catalog().get(option.group, [])}
    if dest.suffix in (".yaml", ".yml"):
        target = dest
    else:
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"{dest} exists and is not a directory. Give a directory (the copy goes to "
                             f"{dest}/{option.group}/{option.name}.yaml) or a .yaml file name.")
        # A suffix, not a prefix: a preset's name keeps the command it begins with.
        name = option.name if option.name not in shipped else f"{option.name}_mine"
        target = dest / option.group / f"{name}.yaml"
    in_group_dir = target.parent.name == option.group
    if in_group_dir and target.stem in shipped:
        raise UsageError(f"{target} would be ignored: ptcli's own {option.group}={target.stem} is found first "
                         f"(Hydra searches ptcli's conf/ before --config-dir). Give it another name, e.g. "
                         f"{target.with_name(target.stem + '_mine' + target.suffix)}.")
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to overwrite it, or choose another DEST.")
    if target.is_dir():
        raise UsageError(f"{target} is a directory; choose another DEST.")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(option.path, target)
    if in_group_dir:
        copied = Option(option.group, target.stem, target, option.description, "yours")
        hint = (f"Edit it, check it with `ptcli configs validate {target}`, then use it: {usage(copied)}")
    else:
        hint = (f"Edit it, check it with `ptcli configs validate {target} --group {option.group}`. To use it, put "
                f"it at DIR/{option.group}/NAME.yaml and pass --config-dir DIR {option.group}=NAME.")
    return target, hint


# ----------------------------------------------------------------------------------------------- validate


def validate(path: Path, group: str | None = None, config_dir: Path | None = None) -> str:
    """Schema-check a config file; return a one-line verdict, or raise ``UsageError`` naming the bad key.

    An option file (it has a ``defaults`` list or a ``# @package`` line, sits in a folder named after a group,
    or ``group`` is given) is composed into the config of the command it is for; anything else is taken as a
    whole run config (``config.yaml`` of a run directory, ``ptcli COMMAND --cfg job --resolve`` output)."""
    from omegaconf import DictConfig, OmegaConf

    if not path.is_file():
        raise UsageError(f"{path}: no such file. Pass a YAML config file (a run directory's config.yaml, or an "
                         "option file such as myconf/model/wide.yaml).")
    try:
        cfg = OmegaConf.load(path)  # a safe YAML loader
    except Exception as exc:  # yaml's and OmegaConf's errors have no common base
        raise UsageError(f"{path}: not valid YAML: {' '.join(str(exc).split())[:300]}") from None
    if not isinstance(cfg, DictConfig):
        raise UsageError(f"{path}: expected a mapping of config keys, got a {type(cfg).__name__}.")
    known = catalog()
    if group is not None and group not in known:
        raise UsageError(f"--group {group}: unknown config group. Groups: {', '.join(known)}.")
    group = group or _option_group(path, cfg, known)
    if group is None:
        return _validate_run_config(path)
    return _validate_option(path, group, config_dir)


def _option_group(path: Path, cfg: Any, known: dict[str, list[Option]]) -> str | None:
    """Which group an option file belongs to, or None when it looks like a whole run config."""
    text = path.read_text(encoding="utf-8")
    is_option = "defaults" in cfg or bool(_PACKAGE.search(text)) or path.parent.name in known
    if not is_option:
        return None
    if path.parent.name in known:
        return path.parent.name
    for entry in cfg.get("defaults") or []:
        m = _SCHEMA_GROUP.match(str(entry)) if isinstance(entry, str) else None
        if m and m.group(1) in known:
            return m.group(1)
    if re.search(r"#\s*@package\s+_global_", text):
        return "experiment"
    raise UsageError(f"{path}: cannot tell which config group this option file belongs to. Pass --group GROUP "
                     f"({', '.join(known)}), or keep it in a folder named after its group.")


def _commands_for(group: str, name: str) -> list[tuple[str, bool]]:
    """The commands an option of ``group`` may be composed into, most likely first, each with whether the
    group needs ``+`` there: a preset named after its command is for that one, else any that has the group."""
    root = conf_dir()
    defaults = {c: _defaults(c, root) for c in COMMANDS}
    named = [c for c in COMMANDS if name.startswith(c + "_")] if group in PER_COMMAND else []
    commands = named or [c for c in COMMANDS if group in defaults[c]] or ["pretrain"]
    return [(c, group not in defaults[c]) for c in commands]


def _validate_option(path: Path, group: str, config_dir: Path | None) -> str:
    from omegaconf import OmegaConf

    from ptcli import build

    probe = Path(tempfile.mkdtemp(prefix="ptcli-validate-"))
    try:
        (probe / group).mkdir()
        shutil.copyfile(path, probe / group / f"{_PROBE}.yaml")
        # The file's own config directory (and --config-dir) too: it may name the user's other options.
        search = [probe] + ([path.resolve().parent.parent] if path.parent.name == group else [])
        search += [config_dir.resolve()] if config_dir is not None else []
        first_error: UsageError | None = None
        for command, plus in _commands_for(group, path.stem):
            try:
                cfg = _compose(command, [f"{'+' if plus else ''}{group}={_PROBE}"], search, path)
                break
            except UsageError as exc:
                first_error = first_error or exc
        else:
            assert first_error is not None
            raise first_error
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    trusted = build.trusted_packages(cfg.get("trusted_packages"))
    build.check_targets(cfg, str(path), trusted=trusted)
    _require_targets(OmegaConf.to_container(cfg, resolve=False), path)
    return f"{path}: valid {group} option (composed into `ptcli {command}` with ptcli's schemas)."


def _compose(command: str, overrides: list[str], search: list[Path], path: Path) -> Any:
    """``command``'s config composed by Hydra with ``overrides``, ``search`` added to its search path."""
    from hydra import compose, initialize_config_dir

    import ptcli.config  # noqa: F401  (registers the schemas option files extend)
    import ptcli.rundir  # noqa: F401  (registers the resolver of the default hydra.run.dir)
    from ptcli.errors import is_config_error

    searchpath = ",".join("'file://" + str(p).replace("\\", "/").replace("'", "\\'") + "'" for p in search)
    overrides = [f"hydra.searchpath=[{searchpath}]", *overrides]
    if command == "evaluate":
        overrides.append("run_dir=RUN_DIR")
    try:
        with initialize_config_dir(str(conf_dir()), version_base=None):
            return compose(config_name=command, overrides=overrides)
    except Exception as exc:
        if not is_config_error(exc):
            raise
        raise UsageError(_explain(path, exc)) from None


def _validate_run_config(path: Path) -> str:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ptcli import build
    from ptcli.config import RunConfig

    build.load_run_config(path, build.trusted_packages())  # sections against their schemas, targets, no ${...}
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    try:  # the top level: every key a RunConfig field, of its type
        OmegaConf.merge(OmegaConf.structured(RunConfig), raw)
    except OmegaConfBaseException as exc:
        raise UsageError(_explain(path, exc)) from None
    _require_targets(raw, path)
    command = raw.get("command")
    return f"{path}: valid run config{f' (ptcli {command})' if command else ''}."


def _require_targets(raw: dict[str, Any], path: Path) -> None:
    """A component section must name its component: without ``_target_`` the run could not build it."""
    from ptcli.config import SCHEMAS

    for slot in SCHEMAS:
        section = raw.get(slot)
        if isinstance(section, dict) and "_target_" not in section:
            raise UsageError(f"{path}: '{slot}' has no _target_, so no {slot} could be built. Choose an option "
                             f"({slot}=NAME: ptcli configs list) or extend a schema in its defaults list "
                             f"(defaults: [/schema/{slot}/NAME@_here_]).")


def _explain(path: Path, exc: BaseException) -> str:
    """One paragraph naming the bad key, with the schema's keys and the closest one."""
    from dataclasses import fields, is_dataclass

    cause = exc if getattr(exc, "full_key", None) else (exc.__cause__ or exc.__context__ or exc)
    key = str(getattr(cause, "full_key", "") or "")
    schema = getattr(cause, "object_type", None)
    first = " ".join(str(cause).split("full_key:")[0].split())
    # Hydra names the file it was composing: say so when it is another one the file uses (model/wide).
    m = re.match(r"In '([^']+)'", str(exc))
    where = f" (in {m.group(1)}, which it uses)" if m and _PROBE not in m.group(1) else ""
    if not key:
        text = " ".join(str(exc).split())
        text = text.replace(f"'{_PROBE}'", "this file").replace(_PROBE, path.stem)
        return f"{path}: {text[:400]}"
    if "not in" in first and is_dataclass(schema):
        parent, _, leaf = key.rpartition(".")
        valid = sorted(f.name for f in fields(schema) if not f.name.startswith("_"))
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
        return (f"{path}: unknown config key '{key}'{where}.{hint} Valid keys in '{parent or '<root>'}' "
                f"({schema.__name__}): {', '.join(valid)}.")
    return f"{path}: config key '{key}'{where}: {first[:300]}"

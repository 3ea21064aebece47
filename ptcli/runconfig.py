"""The one step that turns a composed config into a run's final config, before its run directory is written.

A command line composes a config; some of its values are not the user's to set but follow from elsewhere: the
architecture of a ``pretrained=`` run or ``hf:`` checkpoint, a learning rate left null, the images an image
fine-tune takes from its pre-training run, the side images are resized to (``data.size=null``).
``resolve_run_config`` derives them all here, once, so ``config.yaml`` is written once (``RunDir.start``) with
what the run really uses, and recipes read a config they cannot change (it is made read-only). ``DERIVED`` lists
those keys next to their defaults; on resume the same derivation runs again, except for the keys in
``RESUME_ADOPTS``, which come from the resumed run as they were (no hub access on resume), so ``RunDir.resume``
compares two finished configs and knows nothing about recipes. It also names the modality the recipe table
(``ptcli.tasks.RECIPES``) routes on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptcli.build import component_class, instantiate, run_config, run_modality
from ptcli.errors import UsageError

# optim.lr=null (conf/finetune.yaml): the model class's own ``finetune_lr`` (measured for each of ptcli's), else
# this by modality (a model that declares none: transformers checkpoints, a trusted package's).
FINETUNE_LR = {"text": 3e-4, "image": 1e-4}
# optim.lr=null (conf/objective/mlm.yaml): from scratch, 2e-3 gave the largest head start after the default
# pre-training (README "Measured"); a trained transformers checkpoint wants the small steps of domain-adaptive
# pre-training.
MLM_LR = {"scratch": 2e-3, "hf": 1e-4}
# Model keys a fine-tune may set although the architecture comes from the pretrained run: they change no
# weight shapes (model.dropout=0.1 regularizes fine-tuning on few labels).
TUNABLE_MODEL_KEYS = ("model.dropout",)
# init_from=hf: copies the checkpoint's config and tokenizer here, in the run directory (the model points there).
HF_MODEL_DIR = "hf_model"
MAX_SEED = 2**62
# A fine-tune of a transformers checkpoint reads at most this many tokens per example.
HF_FINETUNE_MAX_LEN = 128

DERIVED: dict[str, str] = {
    "model": "pretrained=RUN: the pretrained run's model (TUNABLE_MODEL_KEYS may be overridden); pretrained=hf:"
             " / init_from=hf: the checkpoint's architecture (ptcli.models.hf.HFEncoder)",
    "optim.lr": "null: the model class's finetune_lr, else FINETUNE_LR[modality] (finetune), MLM_LR['scratch' | "
                "'hf'] (text pretrain)",
    "data": "an image fine-tune of an image pretrain run without data=...: the pretrain run's data "
            "(data.labels_per_class kept)",
    "data.size": "null (data=images): the size the encoder was trained at (finetune pretrained=RUN, evaluate "
                 "RUN data=...), otherwise the images' own size when they all share one square size",
}
# On resume these come from the run being resumed, not derived again (init_from=hf: would read the hub).
RESUME_ADOPTS = ("model",)


def _user_set(overrides: Iterable[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def recipe_modality(cfg: DictConfig, command: str) -> str:
    """The modality that picks the recipe: the run's own, or for ``evaluate`` that of the run it scores."""
    if command == "evaluate":
        from ptcli.rundir import RunDir

        return run_modality(run_config(RunDir.load(cfg.run_dir), cfg.trusted_packages))
    return run_modality(cfg)


def resolve_run_config(cfg: DictConfig, command: str, run_dir: Path, overrides: list[str]) -> DictConfig:
    """The final config of a ``command`` run that will live in ``run_dir``, from the composed (resolved,
    trust-checked) ``cfg`` and the user's ``overrides``; ``cfg`` itself is not changed."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_struct(out, True)
    seed = out.get("seed", 0)
    if not 0 <= seed < MAX_SEED:  # torch generators take 64-bit seeds, and recipes seed some with seed + k
        raise UsageError(f"seed={seed}: choose a seed between 0 and {MAX_SEED - 1}.")
    if out.get("resume"):
        _adopt_from_resumed(out)
    if command == "pretrain":
        _pretrain(out, Path(run_dir), overrides)
    elif command == "finetune":
        _finetune(out, overrides)
    elif command == "evaluate":
        _evaluate(out, overrides)
    return out


def _pretrain(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> None:
    if cfg.pretrained:
        raise UsageError("pretrained= is a finetune option; to continue a pretrain run use resume=RUN_DIR.")
    kind = run_modality(cfg)
    if kind == "text" and cfg.objective is None:
        raise UsageError("ptcli pretrain on text needs an objective: objective=mlm or objective=electra.")
    if cfg.init_from:
        spec = str(cfg.init_from)
        if not spec.startswith("hf:"):
            raise UsageError(f"init_from={spec}: expected hf:NAME_OR_DIR (a transformers masked-LM checkpoint). To "
                             "continue a ptcli pretrain run use resume=RUN_DIR.")
        if any(o.split("=", 1)[0].lstrip("+~").startswith("model") for o in overrides):
            raise UsageError(f"init_from={spec} fixes the architecture; drop the model override.")
        if not cfg.get("resume"):  # (resume adopts the run's own model: RESUME_ADOPTS)
            cfg.model = _hf_model(spec[3:], run_dir / HF_MODEL_DIR)
    if kind == "text" and cfg.optim.lr is None:
        cfg.optim.lr = MLM_LR["hf" if cfg.init_from else "scratch"]
    if kind == "image":
        _image_size(cfg)
    if kind == "text" and cfg.model.get("max_len") is not None and cfg.data.block_size > cfg.model.max_len:
        source = f"the positions of {cfg.init_from}" if cfg.init_from else "model.max_len"
        raise UsageError(f"data.block_size={cfg.data.block_size} exceeds {source} ({cfg.model.max_len}); "
                         f"set data.block_size<={cfg.model.max_len}"
                         f"{'' if cfg.init_from else ' or raise model.max_len'}.")


def _hf_model(path: str, local: Path | None, random_init: bool = False) -> DictConfig:
    """``model`` for a transformers checkpoint: its own architecture. ``local`` (``init_from=hf:``): the run's
    copy of its config, where the run's model lives from then on (the weights come from ptcli checkpoints)."""
    from ptcli.models.hf import load_hf_config, position_limit

    limit = position_limit(load_hf_config(path))
    if local is None:  # pretrained=hf: fine-tunes read at most HF_FINETUNE_MAX_LEN tokens
        return OmegaConf.create({"_target_": "ptcli.models.hf.HFEncoder", "path": path,
                                 "max_len": min(HF_FINETUNE_MAX_LEN, limit), "random_init": random_init})
    return OmegaConf.create({"_target_": "ptcli.models.hf.HFEncoder", "path": str(local.resolve()),
                             "max_len": limit, "random_init": True, "source": path})


def _finetune(cfg: DictConfig, overrides: list[str]) -> None:
    if cfg.init not in ("pretrained", "random"):
        raise UsageError(f"init must be 'pretrained' or 'random', got {cfg.init!r}")
    src_cfg = None
    spec = str(cfg.pretrained or "")
    if spec.startswith("hf:"):
        cfg.model = _hf_model(spec[3:], None, random_init=cfg.init == "random")
    elif cfg.pretrained:
        src_cfg = _pretrained_config(spec, overrides, cfg.trusted_packages)
        tuned = {key: OmegaConf.select(cfg, key) for key in TUNABLE_MODEL_KEYS if _user_set(overrides, key)}
        cfg.model = src_cfg.model
        for key, value in tuned.items():
            if OmegaConf.select(cfg, key) is not None:
                OmegaConf.update(cfg, key, value)
    elif cfg.init == "pretrained" and cfg.freeze_encoder:
        raise UsageError("freeze_encoder=true without pretrained=RUN_DIR would train a head on random features.")
    kind = run_modality(cfg)
    _check_head(cfg, kind, src_cfg)
    if cfg.optim.lr is None:
        cfg.optim.lr = getattr(component_class(cfg.model, "model"), "finetune_lr", None) or FINETUNE_LR[kind]
    from_images = src_cfg is not None and run_modality(src_cfg) == "image"
    if kind == "image" and from_images and not _user_set(overrides, "data"):
        # Fine-tune on the pre-training images' labels unless told otherwise (data=...).
        budget = cfg.data.labels_per_class
        cfg.data = src_cfg.data
        cfg.data.labels_per_class = budget
    if kind == "image":
        _image_size(cfg, src_cfg.data if from_images else None)


def _check_head(cfg: DictConfig, kind: str, src_cfg: DictConfig | None) -> None:
    """``head=cloze`` needs a text model with an MLM head to read; refuse what it cannot honour, before any work."""
    from ptcli.models.cloze import HEADS, VERBALIZER_MODES, check_pattern

    head = cfg.get("head", "classifier")
    if head not in HEADS:
        raise UsageError(f"head={head!r}: choose one of {', '.join(HEADS)}.")
    if head != "cloze":
        return
    if kind != "text":
        raise UsageError("head=cloze fills a [MASK] slot with words: it is for text models (use head=classifier).")
    if cfg.freeze_encoder or (cfg.finetune.lora.r or 0) > 0:
        raise UsageError("head=cloze fine-tunes the whole masked LM; drop freeze_encoder / finetune.lora.r, or use "
                         "head=classifier.")
    if not cfg.finetune.cloze.patterns:
        raise UsageError("finetune.cloze.patterns is empty; give at least one, e.g. '[MASK] : {text}'.")
    for pattern in cfg.finetune.cloze.patterns:
        check_pattern(pattern)
    verbalizer = cfg.finetune.cloze.verbalizer
    if verbalizer is not None and verbalizer not in VERBALIZER_MODES and not (
            isinstance(verbalizer, DictConfig) and all(
                isinstance(v, str) or (OmegaConf.is_list(v) and v and all(isinstance(w, str) for w in v))
                for v in verbalizer.values())):
        shown = OmegaConf.to_container(verbalizer) if OmegaConf.is_config(verbalizer) else verbalizer
        raise UsageError(f"finetune.cloze.verbalizer={shown!r}: give "
                         "{label: [word, ...]} (e.g. '{pos:[great],neg:[terrible]}'), null (or auto) to choose the "
                         "words from the training examples, or names to use each label's own name where it is one "
                         "token.")
    if src_cfg is not None and src_cfg.get("objective") is not None:
        from ptcli.objectives.mlm import MaskedLM

        objective_cls = component_class(src_cfg.objective, "objective")
        if not (isinstance(objective_cls, type) and issubclass(objective_cls, MaskedLM)):
            raise UsageError(f"head=cloze reads the pre-trained MLM head, and pretrained={cfg.pretrained} was "
                             f"pre-trained with objective={src_cfg.objective._target_}, which has none; use "
                             "head=classifier.")


def _evaluate(cfg: DictConfig, overrides: list[str]) -> None:
    """``evaluate RUN data=...``: images resized as the evaluated run's were, unless data.size says otherwise."""
    if not any(o.lstrip("+~").split("=", 1)[0].split(".")[0] == "data" for o in overrides):
        return  # (the run's own data, as its config.yaml holds it: ptcli.evaluation)
    if cfg.get("data") is None or "size" not in cfg.data or cfg.data.size is not None:
        return
    from ptcli.rundir import RunDir

    target = run_config(RunDir.load(cfg.run_dir), cfg.trusted_packages)
    _image_size(cfg, target.data if "data" in target else None)


def trained_image_size(data_cfg: Any) -> int | None:
    """The side a run's images had: its ``data.size``, or its image source's fixed size (digits: 8); None for
    text."""
    cls = component_class(data_cfg, "data")
    if getattr(cls, "modality", "text") != "image":
        return None
    return data_cfg.get("size") or getattr(cls, "size", None)


def _image_size(cfg: DictConfig, trained_on: Any = None) -> None:
    """``data.size=null`` of an image source -> a number, so config.yaml holds the size the run used (and a
    resume, ``evaluate`` or ``embed`` resizes alike): ``trained_on``'s (the data of the run whose encoder this
    run loads) when given, otherwise the images' own size (``ImageFiles.image_size``)."""
    if "size" not in cfg.data or cfg.data.size is not None:
        return
    if getattr(component_class(cfg.data, "data"), "modality", "text") != "image":
        return
    size = trained_image_size(trained_on) if trained_on is not None else None
    cfg.data.size = size or instantiate(cfg.data, "data", seed=cfg.get("seed", 0)).image_size()


def _pretrained_config(path: str, overrides: list[str], trusted: Any) -> DictConfig:
    """The config of the pretrain run ``pretrained=`` names, refusing model overrides that conflict with it."""
    from ptcli.rundir import RunDir

    source = RunDir.load(path)
    if source.manifest.get("command") != "pretrain":
        raise UsageError(f"pretrained={path} is a '{source.manifest.get('command')}' run; pass a pretrain run "
                         "directory (outputs/pretrain/<timestamp>).")
    src_cfg = run_config(source, trusted)
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if key in TUNABLE_MODEL_KEYS:
            continue
        if key == "model" or key.startswith("model."):
            current = OmegaConf.select(src_cfg, key) if key != "model" else None
            if key == "model" or str(current) != value:
                raise UsageError(f"override '{ov}' conflicts with pretrained={path}, whose architecture is fixed "
                                 f"({key}={current}). Drop the model override: the architecture comes from the "
                                 "pretrained run.")
    return src_cfg


def _adopt_from_resumed(cfg: DictConfig) -> None:
    """``RESUME_ADOPTS``: the resumed run's own values, when it derived them (``init_from=hf:``)."""
    from ptcli.rundir import RunDir

    if not cfg.get("init_from"):
        return
    try:
        old = run_config(RunDir.load(cfg.resume), cfg.trusted_packages)
    except UsageError:
        return  # a missing or damaged run: RunDir.resume reports it
    for key in RESUME_ADOPTS:
        cfg[key] = old[key]

"""The run's top-level schema, the registry of component schemas, and their registration in Hydra's ConfigStore.

Each component's defaults live in its schema dataclass beside it (``TransformerConfig`` in
ptcli/models/transformer.py, the data sources' in ptcli/data/sources.py, ...); every YAML option in conf/
extends one (``defaults: [/schema/<group>/<name>@_here_]``) and sets only what differs, so a misspelled key,
a key the chosen component lacks, or a value of the wrong type fails at composition, before any work is done.
Importing this module imports the component modules (and so torch): about 2 s, paid at composition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ptcli.data.sources import (
    LEGACY_FLAT_KEYS,
    SOURCE_SCHEMAS,
    DataSourceConfig,
    DigitsConfig,
    HubDatasetConfig,
    ImageFilesConfig,
    PydocsConfig,
    TextFilesConfig,
)
from ptcli.models.cloze import ClozeConfig
from ptcli.models.convnet import ConvNetConfig
from ptcli.models.hf import HFEncoderConfig
from ptcli.models.lora import LoraConfig
from ptcli.models.transformer import TransformerConfig
from ptcli.models.vit import ViTConfig
from ptcli.objectives.barlow_twins import BarlowTwinsConfig
from ptcli.objectives.byol import BYOLConfig
from ptcli.objectives.electra import ElectraConfig
from ptcli.objectives.mae import MAEConfig
from ptcli.objectives.mlm import MLMConfig
from ptcli.objectives.simclr import SimCLRConfig
from ptcli.objectives.vicreg import VICRegConfig
from ptcli.optim import AdamWConfig, ScheduleConfig
from ptcli.tokenizer import TokenizerConfig
from ptcli.trainer import TrainerConfig

__all__ = [
    "RunConfig", "SCHEMAS", "PLAIN_SECTIONS", "LEGACY_KEYS", "component_schemas", "register", "AdamWConfig",
    "BarlowTwinsConfig", "BYOLConfig", "ClozeConfig", "ConvNetConfig", "DataSourceConfig", "DigitsConfig",
    "ElectraConfig", "FinetuneConfig",
    "HFEncoderConfig", "HubDatasetConfig", "ImageFilesConfig", "LoraConfig", "MAEConfig", "MLMConfig", "PydocsConfig",
    "ScheduleConfig", "SimCLRConfig", "TextFilesConfig", "TokenizerConfig", "TrainerConfig", "TransformerConfig",
    "VICRegConfig", "ViTConfig",
]


@dataclass
class FinetuneConfig:
    """``finetune``: fine-tuning options grouped under one key (``finetune.lora.r=8``: LoRA adapters, see
    ptcli/models/lora.py). The older fine-tuning keys (pretrained, init, freeze_encoder, pooling) stay top-level."""

    lora: LoraConfig = field(default_factory=LoraConfig)
    # head=cloze: patterns and verbalizer (ptcli/models/cloze.py)
    cloze: ClozeConfig = field(default_factory=ClozeConfig)
    # Re-initialize the top N encoder blocks before fine-tuning (Zhang et al. 2021, "Revisiting Few-sample BERT
    # Fine-tuning": the top layers are the most specific to the pre-training task).
    reinit_layers: int = 0


@dataclass
class RunConfig:
    """The top-level schema shared by every command."""

    command: str = MISSING
    seed: int = 0
    # Component sections: typed by the schema of the option chosen (model=..., data=...), see SCHEMAS.
    model: Any = MISSING
    objective: Any = None
    data: Any = MISSING
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: AdamWConfig = field(default_factory=AdamWConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # finetune / evaluate
    pretrained: str | None = None
    init: str = "pretrained"  # pretrained | random
    freeze_encoder: bool = False
    # finetune (text): mean over tokens (the best measured head start after MLM), or cls (dense-tanh-linear on
    # the first token, as transformers' *ForSequenceClassification; needed for `ptcli export` of the run).
    pooling: str = "mean"
    # finetune (text): classifier (a new head on the pooled encoder) or cloze (the pre-trained MLM head fills a
    # pattern's [MASK] slot with label words: finetune.cloze.*, ptcli/models/cloze.py).
    head: str = "classifier"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    resume: str | None = None
    init_from: str | None = None
    # Extra metric loggers beside metrics.jsonl: tensorboard, mlflow, wandb, or a list of them.
    logger: Any = None
    # evaluate: the run directory being scored
    run_dir: str | None = None
    # Python packages (besides ptcli) whose components a *loaded* run directory may name: a colleague's
    # run built with their own model package. Also PTCLI_TRUSTED_PACKAGES=pkg1,pkg2. README: Safety.
    trusted_packages: list[str] = field(default_factory=list)


# The one registry of what a config may instantiate: for each component slot of RunConfig, the schema of
# every ptcli component that may fill it, keyed by the schema's ``_target_``. ``ptcli/build.py`` refuses
# any other ``ptcli.*`` target (Hydra resolves dotted names through module attributes, so a prefix test
# would let ``ptcli.rundir.Path`` through), and validates loaded sections against these schemas.
SCHEMAS: dict[str, list[type]] = {
    "model": [TransformerConfig, ConvNetConfig, ViTConfig, HFEncoderConfig],
    "objective": [MLMConfig, ElectraConfig, SimCLRConfig, BYOLConfig, VICRegConfig, BarlowTwinsConfig, MAEConfig],
    "data": list(SOURCE_SCHEMAS.values()),
    "optim": [AdamWConfig],
    "schedule": [ScheduleConfig],
}
# Sections with a fixed schema and no component: validated when loaded, never instantiated.
PLAIN_SECTIONS: dict[str, type] = {"tokenizer": TokenizerConfig, "trainer": TrainerConfig}
# Keys that an older ptcli wrote into every section of a slot, whatever the component: a loaded section drops
# those its schema lacks (``ptcli.build.load_run_config``). data: the one flat DataConfig before each source
# had its own schema (ptcli/data/sources.py: LEGACY_FLAT_KEYS).
LEGACY_KEYS: dict[str, frozenset[str]] = {"data": LEGACY_FLAT_KEYS}

# The ConfigStore names (``schema/<group>/<name>``) that conf/ extends. Hydra instantiates the model,
# objective, data, optim and schedule groups; trainer's schema is plain.
_STORE: dict[str, dict[str, type]] = {
    "model": {"transformer": TransformerConfig, "convnet": ConvNetConfig, "vit": ViTConfig},
    "objective": {"mlm": MLMConfig, "electra": ElectraConfig, "simclr": SimCLRConfig, "byol": BYOLConfig,
                  "vicreg": VICRegConfig, "barlow_twins": BarlowTwinsConfig, "mae": MAEConfig},
    "data": dict(SOURCE_SCHEMAS),
    "optim": {"adamw": AdamWConfig},
    "schedule": {"schedule": ScheduleConfig},
    "trainer": {"trainer": TrainerConfig},
}


def component_schemas() -> dict[str, dict[str, type]]:
    """``{slot: {target: schema}}`` from ``SCHEMAS``."""
    return {slot: {schema._target_: schema for schema in schemas} for slot, schemas in SCHEMAS.items()}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, options in _STORE.items():
        for name, schema in options.items():
            cs.store(group=f"schema/{group}", name=name, node=schema)


register()

"""Structured-config schemas, registered in Hydra's ConfigStore.

Every YAML option in conf/ extends one of these schemas (``defaults: [/schema/<group>/<name>@_here_]``),
so a misspelled key or a value of the wrong type fails at composition, before any work is done.
Importing this module is cheap (no torch): the CLI imports it on every training command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TransformerConfig:
    _target_: str = "ptcli.models.transformer.TransformerEncoder"
    dim: int = 128
    layers: int = 4
    heads: int = 4
    ffn_dim: int = 512
    max_len: int = 128
    dropout: float = 0.0
    bias: bool = False
    position: str = "rotary"  # rotary | learned


@dataclass
class MLMConfig:
    _target_: str = "ptcli.objectives.mlm.MaskedLM"
    mask_rate: float = 0.15
    # Of the selected tokens: this share becomes [MASK], this share a random token, the rest stay.
    mask_token_share: float = 0.8
    random_token_share: float = 0.1
    whole_word: bool = False


@dataclass
class DataConfig:
    _target_: str = MISSING
    # data=pydocs
    num_labels: int = 20
    # data=text: file paths (csv, tsv, json, jsonl, parquet or txt, by extension)
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    # data=hf: a datasets hub name or local dataset directory
    name: str | None = None
    config: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    # Share of train held out (seeded) for validation/test when the source has no such split.
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    # Fine-tuning: stratified, seeded subsample of the training split; null = all.
    labels_per_class: int | None = None
    # Keep at most this many training examples (quick experiments and CI); null = all.
    max_train_examples: int | None = None
    block_size: int = 128
    # data=text / data=hf, ptcli pretrain: stream the training corpus (read -> tokenize -> pack on the fly,
    # sharded by rank and data.num_workers, resumable) instead of loading it; memory stays flat. Needs
    # trainer.max_steps. See ptcli/data/streaming.py.
    streaming: bool = False
    # Streaming: blocks shuffled together (seeded, per chunk of this many blocks); 1 = corpus order.
    shuffle_buffer: int = 10000
    # Streaming: validation blocks kept in memory (from the validation split, or held out from train:
    # every round(1/val_fraction)-th document until there are this many blocks).
    val_blocks: int = 512
    # Streaming: data-loader worker processes that read and tokenize (0 = in the training process).
    num_workers: int = 0
    # data=images: a folder (class sub-folders or flat) or an .npz file; images resized to size x size
    path: str | None = None
    size: int = 32
    channels: int = 1
    on_error: str = "fail"  # fail | skip (unreadable image files)


@dataclass
class PydocsData(DataConfig):
    _target_: str = "ptcli.data.sources.Pydocs"


@dataclass
class TextData(DataConfig):
    _target_: str = "ptcli.data.sources.TextFiles"


@dataclass
class HubData(DataConfig):
    _target_: str = "ptcli.data.sources.HubDataset"


@dataclass
class DigitsData(DataConfig):
    _target_: str = "ptcli.data.sources.Digits"


@dataclass
class ImageData(DataConfig):
    _target_: str = "ptcli.data.sources.ImageFiles"


@dataclass
class HFEncoderConfig:
    """``pretrained=hf:...`` / ``init_from=hf:...``: written by the recipe, never chosen with ``model=``."""

    _target_: str = "ptcli.models.hf.HFEncoder"
    path: str = MISSING
    max_len: int = 128
    random_init: bool = False
    # init_from=hf:NAME: the checkpoint the run started from (``path`` is the run's own hf_model/ copy).
    source: str | None = None


@dataclass
class ConvNetConfig:
    _target_: str = "ptcli.models.convnet.ConvNet"
    in_channels: int = 1
    width: int = 32
    stages: int = 3
    blocks_per_stage: int = 1


@dataclass
class SimCLRConfig:
    _target_: str = "ptcli.objectives.simclr.SimCLR"
    # Ordered augmentation ops applied batched on tensors; null = defaults for small images.
    augment: list[Any] | None = None
    proj_dim: int = 128
    proj_hidden: int = 256
    temperature: float = 0.2


@dataclass
class TokenizerConfig:
    kind: str = "wordpiece"  # wordpiece | bpe
    vocab_size: int = 8192
    lowercase: bool = True
    min_frequency: int = 2
    # An existing tokenizer.json (or a directory holding one) instead of training.
    path: str | None = None
    # Train on at most this many training documents (the first ones); null = all (with
    # data.streaming=true: the first 100,000).
    train_examples: int | None = None


@dataclass
class AdamWConfig:
    _target_: str = "ptcli.optim.build_adamw"
    lr: float | None = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    # Fine-tuning: learning rate of the freshly initialized head (null = same as lr).
    head_lr: float | None = None
    # Fine-tuning: layer-wise lr decay (ELECTRA, BEiT): the top block gets lr, each block below it
    # layer_decay x the one above, the embeddings the smallest. null = one lr for the whole encoder.
    layer_decay: float | None = None


@dataclass
class ScheduleConfig:
    _target_: str = "ptcli.optim.warmup_schedule"
    decay: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0


@dataclass
class TrainerConfig:
    max_steps: int | None = 1000
    # Used when max_steps is null: whole passes over the training blocks.
    max_epochs: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    clip_grad: float | None = 1.0
    log_every: int = 25
    eval_every: int = 250
    # Validation batches per evaluation; null = the whole validation split.
    eval_batches: int | None = None
    # Also write checkpoints/last every N steps (0 = only at evaluations and at the end).
    checkpoint_every: int = 0
    keep_last: int = 1
    # Early stopping: stop after this many evaluations without improvement (null = never).
    patience: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    strategy: str = "single"  # single | ddp | fsdp (under torchrun)
    compile: bool = False  # torch.compile the training forward/backward
    num_threads: int | None = None
    progress: str = "auto"  # auto | bar | log | none


@dataclass
class RunConfig:
    """The top-level schema shared by every command."""

    command: str = MISSING
    seed: int = 0
    model: Any = MISSING
    objective: Any = None
    data: DataConfig = MISSING
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: AdamWConfig = field(default_factory=AdamWConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # finetune / evaluate
    pretrained: str | None = None
    init: str = "pretrained"  # pretrained | random
    freeze_encoder: bool = False
    pooling: str = "mean"  # finetune (text): mean | cls (the exportable transformers head)
    resume: str | None = None
    init_from: str | None = None
    # Extra metric loggers beside metrics.jsonl: tensorboard, mlflow, or a list of both.
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
    "model": [TransformerConfig, ConvNetConfig, HFEncoderConfig],
    "objective": [MLMConfig, SimCLRConfig],
    "data": [PydocsData, TextData, HubData, DigitsData, ImageData],
    "optim": [AdamWConfig],
    "schedule": [ScheduleConfig],
}
# Sections with a fixed schema and no component: validated when loaded, never instantiated.
PLAIN_SECTIONS: dict[str, type] = {"tokenizer": TokenizerConfig, "trainer": TrainerConfig}


def component_schemas() -> dict[str, dict[str, type]]:
    """``{slot: {target: schema}}`` from ``SCHEMAS``."""
    return {slot: {schema._target_: schema for schema in schemas} for slot, schemas in SCHEMAS.items()}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/model", name="transformer", node=TransformerConfig)
    cs.store(group="schema/objective", name="mlm", node=MLMConfig)
    cs.store(group="schema/objective", name="simclr", node=SimCLRConfig)
    cs.store(group="schema/model", name="convnet", node=ConvNetConfig)
    cs.store(group="schema/data", name="data", node=DataConfig)
    cs.store(group="schema/optim", name="adamw", node=AdamWConfig)
    cs.store(group="schema/schedule", name="schedule", node=ScheduleConfig)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)


register()

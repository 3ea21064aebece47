"""Recipe: fine-tune a classifier on labeled text, from a pretrain run or from random init.

``pretrained=RUN_DIR`` supplies architecture, tokenizer and weights; ``init=random`` keeps that
architecture and tokenizer with fresh weights (the fair baseline). Without ``pretrained`` the model
comes from ``model=`` and a tokenizer is trained on the labeled training split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ptcli import distributed as dist
from ptcli.build import instantiate
from ptcli.checkpoint import is_complete, load_into, load_weights, resume_checkpoint
from ptcli.data.labels import LabelMap, stratified_subsample
from ptcli.data.text import SeededBatches, pad_batch, tokenize_texts
from ptcli.errors import UsageError
from ptcli.metrics import classification_report, split_metrics
from ptcli.models.classifier import SequenceClassifier
from ptcli.recipes.pretrain import configure_torch, is_image_run
from ptcli.rundir import RunDir
from ptcli.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer, special_ids
from ptcli.trainer import BestTracker, Trainer, check_trainer_config, pick_device, seed_everything

FINETUNE_LR = {"text": 3e-4, "image": 1e-4}
# Model keys a fine-tune may set although the architecture comes from the pretrained run: they change
# no weight shapes (model.dropout=0.1 regularizes fine-tuning on few labels).
TUNABLE_MODEL_KEYS = ("model.dropout",)


class ClassBatches(SeededBatches):
    def __init__(self, seqs: list[list[int]], labels: np.ndarray, batch_size: int, seed: int, pad_id: int) -> None:
        super().__init__(len(seqs), min(batch_size, len(seqs)), seed, what="labeled training examples")
        self.seqs, self.labels, self.pad_id = seqs, torch.from_numpy(labels), pad_id

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.next_indices().tolist()
        ids, mask = pad_batch([self.seqs[i] for i in idx], self.pad_id)
        return ids, mask, self.labels[idx]


def source_checkpoint(run: RunDir) -> Path:
    for name in ("best", "last"):
        path = run.checkpoints / name
        if is_complete(path):
            return path
    raise UsageError(f"pretrained={run.path}: no complete checkpoint in {run.checkpoints} "
                     f"(run status: {run.manifest.get('status')}).")


def prepare_encoder(model: torch.nn.Module, cfg: DictConfig, run: RunDir, source: RunDir | None,
                    device: torch.device) -> None:
    """Load the pretrained encoder weights (init=pretrained), freeze it for a linear probe, move to device."""
    if source is not None and cfg.init == "pretrained" and not cfg.resume:
        ckpt = source_checkpoint(source)
        missing = load_into(model.encoder, ckpt, strict=False, prefix="encoder.")
        if missing:
            raise UsageError(f"pretrained={cfg.pretrained}: checkpoint {ckpt} lacks encoder weights {missing[:5]}.")
        run.update(pretrained={"run": str(source.path), "checkpoint": str(ckpt)})
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    model.to(device)


def hf_model_config(path: str, random_init: bool) -> DictConfig:
    """``model`` config for ``pretrained=hf:PATH``: the architecture is the checkpoint's own."""
    from ptcli.models.hf import _transformers

    try:
        config = _transformers().AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"pretrained=hf:{path}: cannot load its config ({str(exc).splitlines()[0][:200]}). "
                         "Offline, pass a local directory saved with save_pretrained.") from exc
    limit = int(getattr(config, "max_position_embeddings", 512)) - (2 if config.model_type == "roberta" else 0)
    return OmegaConf.create({"_target_": "ptcli.models.hf.HFEncoder", "path": path, "max_len": min(128, limit),
                             "random_init": random_init})


def load_pretrained(path: str, overrides: list[str], trusted: Any = ()) -> tuple[RunDir, DictConfig]:
    """The pretrain run and its config, refusing foreign ``_target_``s and conflicting model overrides."""
    source = RunDir.load(path)
    if source.manifest.get("command") != "pretrain":
        raise UsageError(f"pretrained={path} is a '{source.manifest.get('command')}' run; pass a pretrain run "
                         "directory (outputs/pretrain/<timestamp>).")
    src_cfg = source.config(trusted)
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
    return source, src_cfg


def load_labeled_splits(cfg: DictConfig, run: RunDir) -> tuple[dict[str, Any], LabelMap]:
    splits = instantiate(cfg.data, "data", seed=cfg.seed).load()
    where = f"data.label_column='{cfg.data.get('label_column', 'label')}'"  # pydocs has no such key
    if "label" not in splits["train"].column_names:
        raise UsageError(f"{where}: the training data has no label column; columns are "
                         f"{', '.join(splits['train'].column_names)}. Set data.label_column=<column>.")
    # Unlabeled rows (e.g. pydocs packages outside the top N) are not part of the task.
    splits = {name: ds.filter(lambda b: [v is not None for v in b["label"]], batched=True)
              for name, ds in splits.items() if "label" in ds.column_names}
    labels = run_labels(cfg, run, lambda: LabelMap.fit(splits["train"]["label"], where))
    if cfg.data.labels_per_class is not None:
        y = labels.encode(splits["train"]["label"], f"{where} [train]")
        keep = run_subsample(cfg, run, y)
        splits["train"] = splits["train"].select(keep.tolist())
    return splits, labels


def run_labels(cfg: DictConfig, run: RunDir, fit: Any) -> LabelMap:
    """The run's label map: on resume the one it started with (``labels.json``: its ids are the trained head's
    rows), else ``fit()``, saved."""
    path = run.path / "labels.json"
    if cfg.resume and path.is_file():
        return LabelMap.load(path)
    labels = fit()
    if run.writable:
        labels.save(path)
    return labels


def run_subsample(cfg: DictConfig, run: RunDir, y: np.ndarray) -> np.ndarray:
    """Indices of the training examples under ``data.labels_per_class``: on resume the ones the run started
    with (``subsample.json``), so it goes on training on the same examples, else a stratified seeded draw, saved."""
    path = run.path / "subsample.json"
    if cfg.resume and path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            keep = stored["train_indices"]
            same = stored.get("labels_per_class") == cfg.data.labels_per_class and stored.get("seed") == cfg.seed
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"resume={run.path}: cannot read {path}: {exc}. Restore the file, or start a new run "
                             "instead of resuming.") from exc
        if not same:
            raise UsageError(f"resume={run.path}: {path} was drawn with labels_per_class="
                             f"{stored.get('labels_per_class')} and seed={stored.get('seed')}, but the run's config "
                             f"has {cfg.data.labels_per_class} and {cfg.seed}. Restore the file, or start a new run "
                             "instead of resuming.")
        if not (isinstance(keep, list) and keep and all(type(i) is int and 0 <= i < len(y) for i in keep)):
            raise UsageError(f"resume={run.path}: {path}: 'train_indices' must be a non-empty list of indices into "
                             f"the {len(y)} training examples. Restore the file, or start a new run.")
        return np.array(keep, dtype=np.int64)
    keep = stratified_subsample(y, int(cfg.data.labels_per_class), cfg.seed)
    run.write_text("subsample.json", json.dumps({"labels_per_class": cfg.data.labels_per_class, "seed": cfg.seed,
                                                 "train_indices": keep.tolist()}) + "\n")
    return keep


@torch.no_grad()
def predict(model: SequenceClassifier, seqs: list[list[int]], pad_id: int, device: torch.device,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits for ``seqs`` in order (sorted by length inside, so padding stays small)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    logits = torch.empty(len(seqs), model.num_classes)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
        logits[idx] = model(ids.to(device), mask.to(device)).float().cpu()
    return logits.numpy(), logits.argmax(-1).numpy()


def score(model: SequenceClassifier, seqs: list[list[int]], y: np.ndarray, labels: LabelMap, pad_id: int,
          device: torch.device) -> dict[str, Any]:
    logits, pred = predict(model, seqs, pad_id, device)
    report = classification_report(y, pred, labels.names)
    report["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item())
    return report


def build_classifier(model_cfg: DictConfig, vocab_size: int, num_classes: int,
                     pooling: str = "mean") -> SequenceClassifier:
    encoder = instantiate(model_cfg, "model", vocab_size=vocab_size)
    return SequenceClassifier(encoder, num_classes, pooling=pooling)


def finetune(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    check_trainer_config(cfg.trainer)
    configure_torch(cfg)
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    if cfg.init not in ("pretrained", "random"):
        raise UsageError(f"init must be 'pretrained' or 'random', got {cfg.init!r}")

    # Backbone: architecture + tokenizer from the pretrain run, or from this config.
    source: RunDir | None = None
    hf_path = str(cfg.pretrained)[3:] if str(cfg.pretrained or "").startswith("hf:") else None
    if hf_path:
        cfg.model = hf_model_config(hf_path, random_init=cfg.init == "random")
    elif cfg.pretrained:
        source, src_cfg = load_pretrained(cfg.pretrained, run.manifest["overrides"], cfg.trusted_packages)
        tuned = {key: OmegaConf.select(cfg, key) for key in TUNABLE_MODEL_KEYS
                 if any(o.lstrip("+").split("=", 1)[0] == key for o in run.manifest["overrides"])}
        cfg.model = src_cfg.model
        for key, value in tuned.items():
            if OmegaConf.select(cfg, key) is not None:
                OmegaConf.update(cfg, key, value)
    elif cfg.init == "pretrained" and cfg.freeze_encoder:
        raise UsageError("freeze_encoder=true without pretrained=RUN_DIR would train a head on random features.")
    if cfg.optim.lr is None:  # the encoder's default: measured best head start at 16 (text) / 5 (images) labels
        cfg.optim.lr = FINETUNE_LR["image" if is_image_run(cfg) else "text"]
    run.write_text("config.yaml", OmegaConf.to_yaml(cfg, resolve=True))  # the real architecture
    if is_image_run(cfg):
        from ptcli.recipes.finetune_images import finetune_images

        chose_data = any(o.split("=", 1)[0] == "data" for o in run.manifest["overrides"])
        if source is not None and not chose_data and is_image_run(src_cfg):
            # Fine-tune on the pre-training images' labels unless told otherwise (data=...).
            budget = cfg.data.labels_per_class
            cfg.data = src_cfg.data  # its own source's schema, not the composed one's
            cfg.data.labels_per_class = budget
            run.write_text("config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        return finetune_images(cfg, run, source, device)
    if hf_path:
        from ptcli.models.hf import load_hf_tokenizer

        tok = load_hf_tokenizer(hf_path)
    elif source is not None:
        tok = load_tokenizer(source.tokenizer_dir)
    splits, labels = load_labeled_splits(cfg, run)
    if source is None and not hf_path:
        tok = build_tokenizer(cfg.tokenizer, splits["train"])
    if run.writable:
        save_tokenizer(tok, run.tokenizer_dir)

    max_len = int(cfg.model.max_len)
    pad_id = special_ids(tok)["pad"]
    seqs = {s: tokenize_texts(ds, tok, max_len, f"data {s} split") for s, ds in splits.items()}
    ys = {s: labels.encode(ds["label"], f"data.label_column [{s}]") for s, ds in splits.items()}
    if "validation" not in seqs or len(seqs["validation"]) == 0:
        raise UsageError("no labeled validation examples; pass data.validation=FILE or more data.")

    model = build_classifier(cfg.model, tok.get_vocab_size(), len(labels.names), cfg.pooling)
    prepare_encoder(model, cfg, run, source, device)
    net = dist.parallelize(model, cfg.trainer.strategy, device, cfg.trainer.compile)

    optimizer = instantiate(cfg.optim, "optim", model=model)
    total = int(cfg.trainer.max_steps or cfg.trainer.max_epochs * max(1, len(seqs["train"]) // cfg.trainer.batch_size))
    scheduler = instantiate(cfg.schedule, "schedule", optimizer=optimizer, total_steps=total)
    batches = ClassBatches(seqs["train"], ys["train"], cfg.trainer.batch_size, cfg.seed, pad_id)
    run.update(data={"train_examples": len(seqs["train"]), "val_examples": len(seqs["validation"]),
                     "test_examples": len(seqs.get("test", [])), "classes": len(labels.names)})

    def step_fn(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        ids, mask, y = (dist.to_device(t, device) for t in dist.shard_rows(batch))
        if cfg.freeze_encoder:
            model.encoder.eval()  # a linear probe: no dropout noise in frozen features
        return {"loss": F.cross_entropy(net(ids, mask).float(), y)}

    def eval_fn() -> dict[str, float]:
        r = score(model, seqs["validation"], ys["validation"], labels, pad_id, device)
        return {"loss": r["loss"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}

    trainer = Trainer(model, optimizer, scheduler, run, cfg.trainer, device, total,
                      BestTracker("val/accuracy", "max"),
                      extra_state=lambda: {"batches": batches.state_dict()})
    if cfg.resume:
        state = trainer.resume(resume_checkpoint(run))
        batches.load_state_dict(state["batches"])
    metrics = trainer.fit(batches, step_fn, eval_fn)

    # Final scores come from the best checkpoint, on validation and (when present) test.
    dist.load_full_model_state(model, load_weights(run.checkpoints / "best"))
    model.eval()
    for split in ("validation", "test"):
        if split in seqs and len(seqs[split]):
            r = score(model, seqs[split], ys[split], labels, pad_id, device)
            metrics.update(split_metrics(r, split))
            if split == "test":
                run.write_text("test_report.json", json.dumps(r, indent=2) + "\n")
    return metrics

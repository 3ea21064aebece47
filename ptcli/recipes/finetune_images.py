"""Recipe: fine-tune an image classifier, from a SimCLR run or from random init (the image twin of
``finetune.py``: same label budgets, run files, early stopping and best-checkpoint scoring)."""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ptcli import distributed as dist
from ptcli.build import instantiate
from ptcli.checkpoint import load_weights, resume_checkpoint
from ptcli.data.labels import LabelMap
from ptcli.data.text import SeededBatches
from ptcli.errors import UsageError
from ptcli.metrics import classification_report, split_metrics
from ptcli.models.classifier import ImageClassifier
from ptcli.recipes.simclr import load_image_data
from ptcli.rundir import RunDir
from ptcli.trainer import BestTracker, Trainer


class LabeledImageBatches(SeededBatches):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> None:
        super().__init__(len(x), min(batch_size, len(x)), seed, what="labeled training images")
        self.x, self.y = x, y

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.next_indices()
        return self.x[idx], self.y[idx]


def build_image_classifier(model_cfg: DictConfig, num_classes: int) -> ImageClassifier:
    return ImageClassifier(instantiate(model_cfg, "model"), num_classes)


@torch.no_grad()
def score_images(model: ImageClassifier, x: torch.Tensor, y: torch.Tensor, names: list[str],
                 device: torch.device) -> dict[str, Any]:
    model.eval()
    logits = torch.cat([model(x[i : i + 512].to(device)).float().cpu() for i in range(0, len(x), 512)])
    report = classification_report(y.numpy(), logits.argmax(-1).numpy(), names)
    report["loss"] = float(F.cross_entropy(logits, y))
    return report


def labeled_image_splits(cfg: DictConfig, run: RunDir) -> tuple[dict[str, tuple[Any, Any]], LabelMap]:
    splits, names = load_image_data(cfg, cfg.seed)
    if splits["train"][1] is None:
        raise UsageError(f"data.path={cfg.data.get('path')}: the images have no labels (a flat folder, or an .npz "
                         "without y). Fine-tuning needs one sub-folder per class or an .npz with y.")
    from ptcli.recipes.finetune import run_labels, run_subsample

    labels = run_labels(cfg, run, lambda: LabelMap(names))
    if labels.names != names:
        raise UsageError(f"resume={run.path}: labels.json names the classes {labels.names[:10]}, but the images "
                         f"have {names[:10]}. Restore labels.json, or start a new run instead of resuming.")
    if cfg.data.labels_per_class is not None:
        keep = run_subsample(cfg, run, splits["train"][1].numpy())
        x, y = splits["train"]
        splits["train"] = (x[torch.from_numpy(keep)], y[torch.from_numpy(keep)])
    return splits, labels


def finetune_images(cfg: DictConfig, run: RunDir, source: RunDir | None, device: torch.device) -> dict[str, float]:
    from ptcli.recipes.finetune import prepare_encoder

    splits, labels = labeled_image_splits(cfg, run)
    model = build_image_classifier(cfg.model, len(labels.names))
    prepare_encoder(model, cfg, run, source, device)
    net = dist.parallelize(model, cfg.trainer.strategy, device, cfg.trainer.compile)
    optimizer = instantiate(cfg.optim, "optim", model=model)
    batches = LabeledImageBatches(*splits["train"], cfg.trainer.batch_size, cfg.seed)
    total = int(cfg.trainer.max_steps or cfg.trainer.max_epochs * batches.batches_per_epoch)
    scheduler = instantiate(cfg.schedule, "schedule", optimizer=optimizer, total_steps=total)
    run.update(data={"train_examples": len(splits["train"][0]), "val_examples": len(splits["validation"][0]),
                     "test_examples": len(splits["test"][0]), "classes": len(labels.names)})

    def step_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = (dist.to_device(t, device) for t in dist.shard_rows(batch))
        if cfg.freeze_encoder:
            model.encoder.eval()  # a linear probe: frozen BatchNorm statistics too
        return {"loss": F.cross_entropy(net(x).float(), y)}

    def eval_fn() -> dict[str, float]:
        r = score_images(model, *splits["validation"], labels.names, device)
        model.train()
        return {"loss": r["loss"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}

    trainer = Trainer(model, optimizer, scheduler, run, cfg.trainer, device, total,
                      BestTracker("val/accuracy", "max"), extra_state=lambda: {"batches": batches.state_dict()})
    if cfg.resume:
        state = trainer.resume(resume_checkpoint(run))
        batches.load_state_dict(state["batches"])
    metrics = trainer.fit(batches, step_fn, eval_fn)
    dist.load_full_model_state(model, load_weights(run.checkpoints / "best"))
    for split in ("validation", "test"):
        if len(splits[split][0]):
            r = score_images(model, *splits[split], labels.names, device)
            metrics.update(split_metrics(r, split))
            if split == "test":
                run.write_text("test_report.json", json.dumps(r, indent=2) + "\n")
    return metrics

"""Recipe: fine-tune an image classifier, from a SimCLR run or from random init (the image twin of
``finetune.py``: same label budgets, run files, early stopping and best-checkpoint scoring)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ptcli import distributed as dist
from ptcli.build import instantiate
from ptcli.builders import build_image_classifier, load_image_data
from ptcli.checkpoint import pretrained_checkpoint, resume_checkpoint
from ptcli.data.labels import LabelMap, run_labels, run_subsample
from ptcli.data.text import SeededBatches
from ptcli.errors import UsageError
from ptcli.metrics import score_best, score_logits
from ptcli.models.classifier import image_logits, init_encoder
from ptcli.models.lora import lora_settings
from ptcli.rundir import RunDir
from ptcli.trainer import BestTracker, Trainer, prepare_run, total_steps


class LabeledImageBatches(SeededBatches):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> None:
        super().__init__(len(x), min(batch_size, len(x)), seed, what="labeled training images")
        self.x, self.y = x, y

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.next_indices()
        return self.x[idx], self.y[idx]


def labeled_image_splits(cfg: DictConfig, run: RunDir) -> tuple[dict[str, tuple[Any, Any]], LabelMap]:
    splits, names = load_image_data(cfg.data, cfg.seed)
    if splits["train"][1] is None:
        where = f"data.train={cfg.data.get('train')}" if cfg.data.get("train") else f"data.path={cfg.data.get('path')}"
        raise UsageError(f"{where}: the images have no labels (a flat folder, or an .npz without y). Fine-tuning "
                         "needs one sub-folder per class or an .npz with y.")
    labels = run_labels(cfg, run, lambda: LabelMap(names))
    if labels.names != names:
        raise UsageError(f"resume={run.path}: labels.json names the classes {labels.names[:10]}, but the images "
                         f"have {names[:10]}. Restore labels.json, or start a new run instead of resuming.")
    if cfg.data.labels_per_class is not None:
        keep = run_subsample(cfg, run, splits["train"][1].numpy())
        x, y = splits["train"]
        splits["train"] = (x[torch.from_numpy(keep)], y[torch.from_numpy(keep)])
    return splits, labels


def finetune_images(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    device = prepare_run(cfg)
    if lora_settings(cfg) is not None:
        raise UsageError("finetune.lora: LoRA adapts text encoders (model=transformer, pretrained=hf:...); set "
                         "finetune.lora.r=0 to fine-tune this image encoder in full.")
    source = RunDir.load(cfg.pretrained) if cfg.pretrained else None  # (image encoders have no hf: checkpoints)

    splits, labels = labeled_image_splits(cfg, run)
    model = build_image_classifier(cfg.model, len(labels.names))
    init_encoder(model, pretrained_checkpoint(cfg, run, source), cfg.freeze_encoder, f"pretrained={cfg.pretrained}")
    model.to(device)
    net = dist.parallelize(model, cfg.trainer.strategy, device, cfg.trainer.compile)
    optimizer = instantiate(cfg.optim, "optim", model=model)
    batches = LabeledImageBatches(*splits["train"], cfg.trainer.batch_size, cfg.seed)
    total = total_steps(cfg.trainer, batches.batches_per_epoch)
    scheduler = instantiate(cfg.schedule, "schedule", optimizer=optimizer, total_steps=total)
    run.update(data={"train_examples": len(splits["train"][0]), "val_examples": len(splits["validation"][0]),
                     "test_examples": len(splits["test"][0]), "classes": len(labels.names),
                     "image_shape": list(splits["train"][0].shape[1:]),
                     "splits": instantiate(cfg.data, "data", seed=cfg.seed).origins()})

    def step_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = (dist.to_device(t, device) for t in dist.shard_rows(batch))
        if cfg.freeze_encoder:
            model.encoder.eval()  # a linear probe: frozen BatchNorm statistics too
        return {"loss": F.cross_entropy(net(x).float(), y)}

    def score(split: str) -> dict[str, Any]:
        x, y = splits[split]
        return score_logits(image_logits(model, x, device), y, labels.names)

    def eval_fn() -> dict[str, float]:
        r = score("validation")
        model.train()
        return {"loss": r["loss"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}

    trainer = Trainer(model, optimizer, scheduler, run, cfg.trainer, device, total,
                      BestTracker("val/accuracy", "max"), extra_state=lambda: {"batches": batches.state_dict()})
    if cfg.resume:
        state = trainer.resume(resume_checkpoint(run))
        batches.load_state_dict(state["batches"])
    metrics = trainer.fit(batches, step_fn, eval_fn)
    return {**metrics, **score_best(run, model, [s for s in ("validation", "test") if len(splits[s][0])], score)}

"""Recipe: score a finished image run on held-out images: a pre-training run by the frozen-feature probes its
objective declares (kNN, linear), a fine-tuned classifier by accuracy and macro-F1.

The run's own ``config.yaml`` rebuilds the model and its best checkpoint is loaded; the images are the run's
own unless ``data...`` overrides point elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ptcli.builders import build_image_classifier, build_image_objective, load_image_data
from ptcli.checkpoint import load_into, trained_checkpoint
from ptcli.data.labels import LabelMap
from ptcli.errors import UsageError
from ptcli.evaluation import evaluated_run, report
from ptcli.metrics import score_logits, split_metrics
from ptcli.models.classifier import image_logits
from ptcli.probes import PROTOCOLS, describe, probe_accuracy
from ptcli.rundir import RunDir
from ptcli.trainer import pick_device, seed_everything

PROBE_METRICS = {"knn": "knn_acc", "linear": "linear_acc"}


def evaluate_images(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    target, target_cfg, data_cfg = evaluated_run(cfg, run)
    evaluate = _evaluate_pretrained if target.manifest.get("command") == "pretrain" else _evaluate_classifier
    return report(run, *evaluate(target, target_cfg, data_cfg, device, cfg.seed))


def _split(splits: dict[str, Any]) -> str:
    return "test" if len(splits["test"][0]) else "validation"


def _evaluate_pretrained(target: RunDir, tcfg: DictConfig, data_cfg: DictConfig, device: torch.device, seed: int):
    model = build_image_objective(tcfg)
    ckpt = trained_checkpoint(target)
    load_into(model, ckpt)
    model.to(device).eval()
    splits, names = load_image_data(data_cfg, seed)
    split = _split(splits)
    if splits["train"][1] is None or splits[split][1] is None:
        raise UsageError("kNN and linear-probe evaluation need labeled images (class sub-folders, .npz with y).")
    short = "test" if split == "test" else "val"
    probes = type(model).probes  # declared by the objective
    metrics = {f"{short}/{PROBE_METRICS[p]}": probe_accuracy(p, model.encoder, splits["train"], splits[split],
                                                            len(names), device) for p in probes}
    details = {"run": str(target.path), "checkpoint": str(ckpt), "split": split, "examples": len(splits[split][0]),
               "train_examples": len(splits["train"][0]), "protocol": {p: PROTOCOLS[p] for p in probes},
               "protocols": {PROBE_METRICS[p]: describe(p) for p in probes}, "metrics": metrics}
    return metrics, details


def _evaluate_classifier(target: RunDir, tcfg: DictConfig, data_cfg: DictConfig, device: torch.device, seed: int):
    labels = LabelMap.load(target.path / "labels.json")
    model = build_image_classifier(tcfg.model, len(labels.names))
    ckpt = trained_checkpoint(target)
    load_into(model, ckpt)
    model.to(device).eval()
    splits, names = load_image_data(data_cfg, seed)
    split = _split(splits)
    x, y = splits[split]
    if y is None:
        raise UsageError(f"the {split} images have no labels; evaluation needs labeled images.")
    y = torch.from_numpy(labels.encode([names[i] for i in y.tolist()], f"data [{split}] labels"))
    scores = score_logits(image_logits(model, x, device), y, labels.names)
    metrics = split_metrics(scores, split)
    details = {"run": str(target.path), "checkpoint": str(ckpt), "split": split, "examples": len(x),
               "metrics": metrics, **scores}
    return metrics, details

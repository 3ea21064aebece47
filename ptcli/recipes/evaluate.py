"""Recipe: score a finished run on held-out data.

The run's own ``config.yaml`` rebuilds the model (only ptcli ``_target_``s are accepted), its
``tokenizer/`` and ``labels.json`` are reused, and its best checkpoint is loaded. The data is the
run's own unless ``data...`` overrides point elsewhere (``data=text data.test=FILE``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from omegaconf import DictConfig

from ptcli.build import instantiate
from ptcli.checkpoint import is_complete, load_into
from ptcli.data.labels import LabelMap
from ptcli.data.text import pack_blocks, tokenize_texts
from ptcli.errors import UsageError
from ptcli.metrics import split_metrics
from ptcli.recipes.pretrain import is_image_run
from ptcli.rundir import RunDir
from ptcli.tokenizer import load_tokenizer, special_ids
from ptcli.trainer import pick_device, seed_everything

HUB_DATASET = "ptcli.data.sources.HubDataset"


def _checkpoint(target: RunDir):
    for name in ("best", "last"):
        if is_complete(target.checkpoints / name):
            return target.checkpoints / name
    raise UsageError(f"{target.path}: no complete checkpoint (checkpoints/best or checkpoints/last).")


def _data_config(cfg: DictConfig, target_cfg: DictConfig, overrides: list[str], run_path: Any) -> DictConfig:
    """The evaluated run's data, unless the user pointed ``data`` elsewhere on this command line."""
    if any(o.lstrip("+~").split("=", 1)[0].split(".")[0] == "data" for o in overrides):
        return cfg.data
    if target_cfg.data.get("_target_") == HUB_DATASET:
        # A hub name in someone else's config would make this machine download (and, with old datasets
        # versions, run) whatever it names: the user must ask for it on their own command line.
        name = target_cfg.data.get("name")
        raise UsageError(f"the evaluated run was trained on the datasets hub dataset '{name}' (data.name in "
                         f"{run_path}/config.yaml). ptcli does not load a dataset named only by a loaded run; to "
                         f"evaluate on it, say so: data=hf data.name={name}"
                         f"{' data.config=' + str(target_cfg.data.config) if target_cfg.data.get('config') else ''}.")
    return target_cfg.data


def _eval_split(splits: dict[str, Any]) -> str:
    for name in ("test", "validation"):
        if name in splits and len(splits[name]):
            return name
    raise UsageError("no test or validation data to evaluate on; pass data.test=FILE")


def evaluate(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    target = RunDir.load(cfg.run_dir)
    target_cfg = target.config(cfg.trusted_packages)
    command = target.manifest.get("command")
    data_cfg = _data_config(cfg, target_cfg, run.manifest["overrides"], target.path)
    run.update(evaluated_run=str(target.path), evaluated_command=command)
    if command == "pretrain" and is_image_run(target_cfg):
        metrics, details = _evaluate_simclr(target, target_cfg, data_cfg, device, cfg.seed)
    elif command == "finetune" and is_image_run(target_cfg):
        metrics, details = _evaluate_image_classifier(target, target_cfg, data_cfg, device, cfg.seed)
    elif command == "pretrain":
        metrics, details = _evaluate_mlm(target, target_cfg, data_cfg, device, cfg.seed)
    elif command == "finetune":
        metrics, details = _evaluate_classifier(target, target_cfg, data_cfg, device, cfg.seed)
    else:
        raise UsageError(f"{target.path} is a '{command}' run; evaluate takes a pretrain or finetune run.")
    run.write_text("evaluation.json", json.dumps(details, indent=2) + "\n")
    _print_table(metrics, details)
    return metrics


def _evaluate_mlm(target: RunDir, tcfg: DictConfig, data_cfg: DictConfig, device: torch.device, seed: int):
    from ptcli.recipes.pretrain import build_mlm, evaluate_mlm

    tok = load_tokenizer(target.tokenizer_dir)
    model = build_mlm(tcfg, tok)
    ckpt = _checkpoint(target)
    load_into(model, ckpt)
    model.to(device).eval()
    if data_cfg.get("streaming"):  # bounded: at most data.val_blocks blocks of the test or validation split
        from ptcli.data.streaming import streaming_eval_blocks

        split, blocks = streaming_eval_blocks(data_cfg, seed, tok, int(tcfg.data.block_size))
    else:
        splits = instantiate(data_cfg, "data", seed=seed).load()
        split = _eval_split(splits)
        blocks = pack_blocks(splits[split], tok, int(tcfg.data.block_size), f"data {split} split")
    m = evaluate_mlm(model, blocks, int(tcfg.trainer.batch_size), device)
    short = "test" if split == "test" else "val"
    metrics = {f"{short}/{k}": v for k, v in m.items()}
    details = {"run": str(target.path), "checkpoint": str(ckpt), "split": split, "blocks": len(blocks),
               "protocol": {"mask_rate": float(tcfg.objective.mask_rate), "mask_seed": "fixed (1234)",
                            "block_size": int(tcfg.data.block_size)}, "metrics": metrics}
    return metrics, details


def _evaluate_classifier(target: RunDir, tcfg: DictConfig, data_cfg: DictConfig, device: torch.device, seed: int):
    from ptcli.recipes.finetune import build_classifier, score

    tok = load_tokenizer(target.tokenizer_dir)
    labels = LabelMap.load(target.path / "labels.json")
    model = build_classifier(tcfg.model, tok.get_vocab_size(), len(labels.names), tcfg.get("pooling", "mean"))
    ckpt = _checkpoint(target)
    load_into(model, ckpt)
    model.to(device).eval()
    splits = instantiate(data_cfg, "data", seed=seed).load()
    split = _eval_split(splits)
    ds = splits[split]
    if "label" not in ds.column_names:
        column = data_cfg.get("label_column", "label")  # pydocs has no such key
        raise UsageError(f"the {split} data has no label column '{column}'; set data.label_column.")
    ds = ds.filter(lambda b: [v is not None for v in b["label"]], batched=True)
    y = labels.encode(ds["label"], f"data.label_column [{split}]")
    seqs = tokenize_texts(ds, tok, int(tcfg.model.max_len), f"data {split} split")
    report = score(model, seqs, y, labels, special_ids(tok)["pad"], device)
    metrics = split_metrics(report, split)
    details = {"run": str(target.path), "checkpoint": str(ckpt), "split": split, "examples": len(seqs),
               "metrics": metrics, **report}
    return metrics, details


def _image_splits(data_cfg: DictConfig, target_cfg: DictConfig, seed: int):
    from omegaconf import OmegaConf

    from ptcli.recipes.simclr import load_image_data

    return load_image_data(OmegaConf.create({"data": data_cfg, "model": target_cfg.model}), seed)


def _evaluate_simclr(target: RunDir, tcfg: DictConfig, data_cfg: DictConfig, device: torch.device, seed: int):
    from ptcli.probes import PROTOCOLS, describe
    from ptcli.recipes.simclr import build_simclr, knn_accuracy, linear_probe_accuracy

    model = build_simclr(tcfg)
    ckpt = _checkpoint(target)
    load_into(model, ckpt)
    model.to(device).eval()
    splits, names = _image_splits(data_cfg, tcfg, seed)
    split = "test" if len(splits["test"][0]) else "validation"
    if splits["train"][1] is None or splits[split][1] is None:
        raise UsageError("kNN and linear-probe evaluation need labeled images (class sub-folders, .npz with y).")
    short = "test" if split == "test" else "val"
    metrics = {f"{short}/knn_acc": knn_accuracy(model.encoder, splits["train"], splits[split], len(names), device),
               f"{short}/linear_acc": linear_probe_accuracy(model.encoder, splits["train"], splits[split],
                                                            len(names), device)}
    protocols = {"knn_acc": describe("knn"), "linear_acc": describe("linear")}
    details = {"run": str(target.path), "checkpoint": str(ckpt), "split": split, "examples": len(splits[split][0]),
               "train_examples": len(splits["train"][0]), "protocol": {k: PROTOCOLS[k] for k in ("knn", "linear")},
               "protocols": protocols, "metrics": metrics}
    return metrics, details


def _evaluate_image_classifier(target: RunDir, tcfg: DictConfig, data_cfg: DictConfig, device: torch.device,
                               seed: int):
    from ptcli.recipes.finetune_images import build_image_classifier, score_images

    labels = LabelMap.load(target.path / "labels.json")
    model = build_image_classifier(tcfg.model, len(labels.names))
    ckpt = _checkpoint(target)
    load_into(model, ckpt)
    model.to(device).eval()
    splits, names = _image_splits(data_cfg, tcfg, seed)
    split = "test" if len(splits["test"][0]) else "validation"
    x, y = splits[split]
    if y is None:
        raise UsageError(f"the {split} images have no labels; evaluation needs labeled images.")
    y = torch.from_numpy(labels.encode([names[i] for i in y.tolist()], f"data [{split}] labels"))
    report = score_images(model, x, y, labels.names, device)
    metrics = split_metrics(report, split)
    details = {"run": str(target.path), "checkpoint": str(ckpt), "split": split, "examples": len(x),
               "metrics": metrics, **report}
    return metrics, details


def _print_table(metrics: dict[str, float], details: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)  # stdout is reserved for --json
    table = Table(title=f"evaluate {details['run']} ({details['split']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    protocols = details.get("protocols", {})
    if protocols:
        table.add_column("protocol")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}", *([protocols.get(k.split("/", 1)[1], "")] if protocols else []))
    console.print(table)
    if "per_class" in details:
        pc = Table(title="per class")
        for col in ("class", "precision", "recall", "f1", "support"):
            pc.add_column(col, justify="left" if col == "class" else "right")
        for name, r in details["per_class"].items():
            pc.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
        console.print(pc)
    sys.stderr.flush()

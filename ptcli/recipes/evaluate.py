"""Recipe: score a finished text run on held-out data (an MLM pretrain run, or a fine-tuned classifier).

The run's own ``config.yaml`` rebuilds the model (only ptcli ``_target_``s are accepted), its
``tokenizer/`` and ``labels.json`` are reused, and its best checkpoint is loaded. The data is the
run's own unless ``data...`` overrides point elsewhere (``data=text data.test=FILE``).
"""

from __future__ import annotations

import json

import torch
from omegaconf import DictConfig

from ptcli.build import instantiate
from ptcli.builders import build_classifier, build_cloze_classifier, build_text_objective
from ptcli.checkpoint import load_into, trained_checkpoint
from ptcli.data.labels import LabelMap
from ptcli.data.text import pack_blocks, tokenize_texts
from ptcli.errors import UsageError
from ptcli.evaluation import eval_split, evaluated_run, report
from ptcli.metrics import score_logits, split_metrics
from ptcli.models.classifier import text_logits
from ptcli.models.cloze import VERBALIZER, encode_with_patterns, label_token_ids, pattern_logits
from ptcli.objectives.mlm import EVAL_SEED, evaluate_mlm
from ptcli.rundir import RunDir
from ptcli.tokenizer import load_tokenizer, special_ids
from ptcli.trainer import pick_device, seed_everything


def evaluate(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    target, target_cfg, data_cfg = evaluated_run(cfg, run)
    if target.manifest.get("command") == "pretrain":  # (any text objective: its own metrics)
        metrics, details = _evaluate_mlm(target, target_cfg, data_cfg, device, cfg.seed)
    else:
        metrics, details = _evaluate_classifier(target, target_cfg, data_cfg, device, cfg.seed)
    return report(run, metrics, details)


def _evaluate_mlm(target: RunDir, tcfg: DictConfig, data_cfg: DictConfig, device: torch.device, seed: int):
    tok = load_tokenizer(target.tokenizer_dir)
    model = build_text_objective(tcfg, tok)
    ckpt = trained_checkpoint(target)
    load_into(model, ckpt)
    model.to(device).eval()
    if data_cfg.get("streaming"):  # bounded: at most data.val_blocks blocks of the test or validation split
        from ptcli.data.streaming import streaming_eval_blocks

        source = instantiate(data_cfg, "data", seed=seed)
        split, blocks = streaming_eval_blocks(source, data_cfg, seed, tok, int(tcfg.data.block_size))
    else:
        splits = instantiate(data_cfg, "data", seed=seed).load()
        split = eval_split(splits)
        blocks = pack_blocks(splits[split], tok, int(tcfg.data.block_size), f"data {split} split")
    m = evaluate_mlm(model, blocks, int(tcfg.trainer.batch_size), device)
    short = "test" if split == "test" else "val"
    metrics = {f"{short}/{k}": v for k, v in m.items()}
    details = {"run": str(target.path), "checkpoint": str(ckpt), "split": split, "blocks": len(blocks),
               "protocol": {"mask_rate": float(tcfg.objective.mask_rate), "mask_seed": f"fixed ({EVAL_SEED})",
                            "block_size": int(tcfg.data.block_size)}, "metrics": metrics}
    return metrics, details


def _evaluate_classifier(target: RunDir, tcfg: DictConfig, data_cfg: DictConfig, device: torch.device, seed: int):
    tok = load_tokenizer(target.tokenizer_dir)
    labels = LabelMap.load(target.path / "labels.json")
    cloze = tcfg.get("head", "classifier") == "cloze"
    if cloze:
        verbalizer = json.loads((target.path / VERBALIZER).read_text(encoding="utf-8"))
        model = build_cloze_classifier(tcfg.model, tok, label_token_ids(tok, verbalizer, labels.names))
    else:
        model = build_classifier(tcfg.model, tok.get_vocab_size(), len(labels.names), tcfg.get("pooling", "mean"))
    ckpt = trained_checkpoint(target)
    load_into(model, ckpt)
    model.to(device).eval()
    splits = instantiate(data_cfg, "data", seed=seed).load()
    split = eval_split(splits)
    ds = splits[split]
    if "label" not in ds.column_names:
        column = data_cfg.get("label_column", "label")  # pydocs has no such key
        raise UsageError(f"the {split} data has no label column '{column}'; set data.label_column.")
    ds = ds.filter(lambda b: [v is not None for v in b["label"]], batched=True)
    y = labels.encode(ds["label"], f"data.label_column [{split}]")
    pad_id = special_ids(tok)["pad"]
    if cloze:
        pseqs = encode_with_patterns(tok, ds["text"], list(tcfg.finetune.cloze.patterns), int(tcfg.model.max_len))
        seqs, logits = pseqs[0], pattern_logits(model, pseqs, pad_id, device)
    else:
        seqs = tokenize_texts(ds, tok, int(tcfg.model.max_len), f"data {split} split")
        logits = text_logits(model, seqs, pad_id, device)
    scores = score_logits(logits, y, labels.names)
    metrics = split_metrics(scores, split)
    details = {"run": str(target.path), "checkpoint": str(ckpt), "split": split, "examples": len(seqs),
               "metrics": metrics, **scores}
    return metrics, details

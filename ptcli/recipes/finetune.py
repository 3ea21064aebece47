"""Recipe: fine-tune a classifier on labeled text, from a pretrain run or from random init.

``pretrained=RUN_DIR`` supplies architecture, tokenizer and weights; ``init=random`` keeps that
architecture and tokenizer with fresh weights (the fair baseline). Without ``pretrained`` the model
comes from ``model=`` and a tokenizer is trained on the labeled training split. ``finetune.lora.r=N`` trains
LoRA adapters and the head instead of every weight (ptcli/models/lora.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ptcli import distributed as dist
from ptcli.build import instantiate
from ptcli.builders import build_classifier, build_cloze_classifier
from ptcli.checkpoint import pretrained_checkpoint, resume_checkpoint
from ptcli.data.labels import LabelMap, run_labels, run_subsample
from ptcli.data.text import SeededBatches, pad_batch, tokenize_texts
from ptcli.errors import UsageError
from ptcli.metrics import score_best, score_logits
from ptcli.models.classifier import init_encoder, text_logits
from ptcli.models.cloze import (
    VERBALIZER,
    choose_verbalizer,
    encode_with_patterns,
    label_token_ids,
    load_masked_lm,
    name_words,
    pattern_logits,
    reinit_top_blocks,
)
from ptcli.models.lora import apply_lora, lora_settings, parameter_counts
from ptcli.rundir import RunDir
from ptcli.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer, special_ids
from ptcli.trainer import BestTracker, Trainer, prepare_run, total_steps

log = logging.getLogger(__name__)


class ClassBatches(SeededBatches):
    def __init__(self, seqs: list[list[int]], labels: np.ndarray, batch_size: int, seed: int, pad_id: int) -> None:
        super().__init__(len(seqs), min(batch_size, len(seqs)), seed, what="labeled training examples")
        self.seqs, self.labels, self.pad_id = seqs, torch.from_numpy(labels), pad_id

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.next_indices().tolist()
        ids, mask = pad_batch([self.seqs[i] for i in idx], self.pad_id)
        return ids, mask, self.labels[idx]


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


def finetune(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    device = prepare_run(cfg)
    lora = lora_settings(cfg)

    # Backbone: the architecture is in cfg.model already (ptcli.runconfig); the tokenizer comes from the
    # pretrained run or checkpoint, or is trained on the labeled training split.
    source = RunDir.load(cfg.pretrained) if cfg.pretrained and not str(cfg.pretrained).startswith("hf:") else None
    if str(cfg.pretrained or "").startswith("hf:"):
        from ptcli.models.hf import load_hf_tokenizer

        tok = load_hf_tokenizer(str(cfg.pretrained)[3:])
    elif source is not None:
        tok = load_tokenizer(source.tokenizer_dir)
    splits, labels = load_labeled_splits(cfg, run)
    if not cfg.pretrained:
        tok = build_tokenizer(cfg.tokenizer, splits["train"])
    if run.writable:
        save_tokenizer(tok, run.tokenizer_dir)

    max_len = int(cfg.model.max_len)
    pad_id = special_ids(tok)["pad"]
    ys = {s: labels.encode(ds["label"], f"data.label_column [{s}]") for s, ds in splits.items()}
    if "validation" not in ys or len(ys["validation"]) == 0:
        raise UsageError("no labeled validation examples; pass data.validation=FILE or more data.")
    what = f"pretrained={cfg.pretrained}"
    if cfg.head == "cloze":
        # Every example under each pattern: pseqs[split][pattern][example]; training sees them all.
        pseqs = {s: encode_with_patterns(tok, ds["text"], list(cfg.finetune.cloze.patterns), max_len)
                 for s, ds in splits.items()}
        seqs = {s: [x for per_pattern in p for x in per_pattern] for s, p in pseqs.items()}
        train_y = np.tile(ys["train"], len(pseqs["train"]))
        model = build_cloze_classifier(cfg.model, tok, [[0]] * len(labels.names))  # label words: below
        checkpoint = pretrained_checkpoint(cfg, run, source)
        if checkpoint is not None:
            load_masked_lm(model.mlm, checkpoint, what)
        reinit_top_blocks(model.encoder, int(cfg.finetune.reinit_layers))
        model.to(device)
        fixed = name_words(tok, labels.names) if cfg.finetune.cloze.verbalizer == "names" else None
        verbalizer = run_verbalizer(cfg, run, lambda: choose_verbalizer(
            model, pseqs["train"][0], torch.from_numpy(ys["train"]), labels.names, tok, pad_id, device, fixed=fixed))
        model.set_label_ids(label_token_ids(tok, verbalizer, labels.names))
        log.info("cloze: patterns %s, verbalizer %s", list(cfg.finetune.cloze.patterns), verbalizer)
    else:
        seqs = {s: tokenize_texts(ds, tok, max_len, f"data {s} split") for s, ds in splits.items()}
        train_y = ys["train"]
        model = build_classifier(cfg.model, tok.get_vocab_size(), len(labels.names), cfg.pooling)
        init_encoder(model, pretrained_checkpoint(cfg, run, source), cfg.freeze_encoder, what)
        reinit_top_blocks(model.encoder, int(cfg.finetune.reinit_layers))
    weights_metadata = apply_lora(model, lora) if lora is not None else None  # (on the loaded pre-trained weights)
    counts = parameter_counts(model)
    log.info("trainable parameters: %s of %s (%.2f%%)%s", f"{counts['trainable']:,}", f"{counts['total']:,}",
             100 * counts["trainable"] / max(counts["total"], 1),
             f" (LoRA r={lora.r} alpha={lora.alpha} on {weights_metadata['lora_targets']}, and the head)"
             if weights_metadata else "")
    model.to(device)
    net = dist.parallelize(model, cfg.trainer.strategy, device, cfg.trainer.compile)

    optimizer = instantiate(cfg.optim, "optim", model=model)
    batches = ClassBatches(seqs["train"], train_y, cfg.trainer.batch_size, cfg.seed, pad_id)
    total = total_steps(cfg.trainer, batches.batches_per_epoch)
    scheduler = instantiate(cfg.schedule, "schedule", optimizer=optimizer, total_steps=total)
    run.update(data={"train_examples": len(ys["train"]), "val_examples": len(ys["validation"]),
                     "test_examples": len(ys.get("test", [])), "classes": len(labels.names)}, parameters=counts)

    def step_fn(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        ids, mask, y = (dist.to_device(t, device) for t in dist.shard_rows(batch))
        if cfg.freeze_encoder:
            model.encoder.eval()  # a linear probe: no dropout noise in frozen features
        return {"loss": F.cross_entropy(net(ids, mask).float(), y)}

    def score(split: str) -> dict[str, Any]:
        if cfg.head == "cloze":
            return score_logits(pattern_logits(model, pseqs[split], pad_id, device), ys[split], labels.names)
        return score_logits(text_logits(model, seqs[split], pad_id, device), ys[split], labels.names)

    def eval_fn() -> dict[str, float]:
        r = score("validation")
        return {"loss": r["loss"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}

    trainer = Trainer(model, optimizer, scheduler, run, cfg.trainer, device, total,
                      BestTracker("val/accuracy", "max"),
                      extra_state=lambda: {"batches": batches.state_dict()}, weights_metadata=weights_metadata)
    if cfg.resume:
        state = trainer.resume(resume_checkpoint(run))
        batches.load_state_dict(state["batches"])
    metrics = trainer.fit(batches, step_fn, eval_fn)

    # Final scores come from the best checkpoint, on validation and (when present) test.
    return {**metrics, **score_best(run, model, [s for s in ("validation", "test") if len(ys.get(s, []))], score)}


def run_verbalizer(cfg: DictConfig, run: RunDir, choose: Callable[[], dict[str, list[str]]]) -> dict[str, list[str]]:
    """head=cloze: the verbalizer configured, or on resume the one the run started with, or ``choose()``; kept in
    the run directory (``verbalizer.json``: evaluate and export read it)."""
    path = run.path / VERBALIZER
    configured = cfg.finetune.cloze.verbalizer
    if cfg.resume and path.is_file():
        verbalizer = json.loads(path.read_text(encoding="utf-8"))
    elif configured is not None and not isinstance(configured, str):  # a str is a mode: auto | names
        verbalizer = {str(k): [v] if isinstance(v, str) else list(v) for k, v in configured.items()}
    else:
        verbalizer = choose()
    if run.writable:
        path.write_text(json.dumps(verbalizer, indent=2) + "\n", encoding="utf-8")
    return verbalizer


"""Recipe: pre-train a text encoder with a text objective (masked language modeling, ELECTRA).

config -> data source -> tokenizer -> packed blocks -> encoder + objective -> optimizer/schedule ->
trainer -> run directory. Reads top to bottom.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ptcli import distributed as dist
from ptcli.build import instantiate
from ptcli.builders import build_text_objective
from ptcli.checkpoint import resume_checkpoint
from ptcli.data.text import BlockBatches, pack_blocks
from ptcli.objectives.mlm import evaluate_mlm
from ptcli.rundir import RunDir
from ptcli.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from ptcli.trainer import BestTracker, Trainer, prepare_run, total_steps


def pretrain(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    device = prepare_run(cfg)

    # Data and tokenizer (rank 0 first: it fills the caches the other ranks then read)
    dist.main_goes_first()
    stream = None
    if cfg.data.get("streaming"):  # read -> tokenize -> pack on the fly (ptcli/data/streaming.py)
        from ptcli.data.streaming import open_streaming

        stream = open_streaming(cfg, instantiate(cfg.data, "data", seed=cfg.seed))
        trains_tokenizer = not (cfg.resume or cfg.init_from or cfg.tokenizer.path)  # on a bounded sample
        splits = {"train": stream.tokenizer_sample(cfg.tokenizer.get("train_examples")) if trains_tokenizer else None}
    else:
        splits = instantiate(cfg.data, "data", seed=cfg.seed).load()
    if cfg.resume:
        tok = load_tokenizer(run.tokenizer_dir)
    elif cfg.init_from:
        tok = copy_hf_checkpoint(cfg, run)
    else:
        tok = build_tokenizer(cfg.tokenizer, splits["train"])
        if run.writable:
            save_tokenizer(tok, run.tokenizer_dir)
    if stream is not None:
        from ptcli.data.streaming import streaming_batches

        train_blocks = None  # streamed: never materialized
        val_blocks = stream.validation_blocks(tok)
        batches = streaming_batches(cfg, stream, tok)
    else:
        train_blocks = pack_blocks(splits["train"], tok, cfg.data.block_size, "data train split")
        val_blocks = pack_blocks(splits["validation"], tok, cfg.data.block_size, "data validation split")
        batches = BlockBatches(train_blocks, cfg.trainer.batch_size, cfg.seed)

    dist.main_done()

    # Model, objective, optimizer
    # init_from=hf: starts from the checkpoint's weights; resumes from ptcli's (the model in config.yaml).
    model = build_text_objective(cfg, tok, weights_from=cfg.model.source if cfg.init_from and not cfg.resume else None)
    model.to(device)
    net = dist.parallelize(model, cfg.trainer.strategy, device, cfg.trainer.compile)
    optimizer = instantiate(cfg.optim, "optim", model=model)
    total = total_steps(cfg.trainer, batches.batches_per_epoch)
    scheduler = instantiate(cfg.schedule, "schedule", optimizer=optimizer, total_steps=total)
    run.update(data={"train_blocks": len(train_blocks) if train_blocks is not None else None,
                     "val_blocks": len(val_blocks),
                     "vocab_size": tok.get_vocab_size(), "parameters": sum(p.numel() for p in model.parameters())})

    # Train: masks (and whatever else the objective draws: ELECTRA's sampling uniforms) are redrawn every batch
    # from a dedicated, checkpointed generator. model.mask gives the arguments of the objective's forward.
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1)

    def step_fn(block: torch.Tensor) -> dict[str, torch.Tensor]:
        args = model.mask(block, generator=mask_gen)  # on the global batch, as one process would
        if not getattr(batches, "per_rank", False):
            args = dist.shard_rows(tuple(args))
        return net(*(dist.to_device(t, device) for t in args))

    def eval_fn() -> dict[str, float]:  # the metrics the objective's eval-mode forward reports (its "ratios")
        return evaluate_mlm(model, val_blocks, cfg.trainer.batch_size, device, cfg.trainer.eval_batches)

    trainer = Trainer(model, optimizer, scheduler, run, cfg.trainer, device, total, BestTracker("val/loss", "min"),
                      tokens_per_batch=cfg.trainer.batch_size * cfg.data.block_size,
                      extra_state=lambda: {"batches": batches.state_dict(), "mask_rng": mask_gen.get_state()})
    if cfg.resume:
        state = trainer.resume(resume_checkpoint(run))
        batches.load_state_dict(state["batches"])
        mask_gen.set_state(state["mask_rng"])
    return trainer.fit(batches, step_fn, eval_fn)


def copy_hf_checkpoint(cfg: DictConfig, run: RunDir) -> Any:
    """``init_from=hf:NAME_OR_DIR``: copy the checkpoint's config and tokenizer into the run (``model.path``,
    decided by ``ptcli.runconfig``), so fine-tuning from this run, resuming it and exporting it need no hub
    access and do not depend on the original directory. Returns the tokenizer."""
    from ptcli.models.hf import _transformers, load_hf_config, load_hf_tokenizer

    source = cfg.model.source
    tok = load_hf_tokenizer(source)
    if run.writable:
        load_hf_config(source).save_pretrained(cfg.model.path)
        _transformers().AutoTokenizer.from_pretrained(source).save_pretrained(cfg.model.path)
        save_tokenizer(tok, run.tokenizer_dir)
    return tok

"""Recipe: pre-train a text encoder with masked language modeling.

config -> data source -> tokenizer -> packed blocks -> encoder + objective -> optimizer/schedule ->
trainer -> run directory. Reads top to bottom.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ptcli import distributed as dist
from ptcli.build import instantiate
from ptcli.checkpoint import resume_checkpoint
from ptcli.data.text import BlockBatches, pack_blocks
from ptcli.errors import UsageError
from ptcli.objectives.mlm import MaskedLM, word_start_table
from ptcli.rundir import RunDir
from ptcli.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer, special_ids
from ptcli.trainer import BestTracker, Trainer, check_trainer_config, pick_device, seed_everything

# MLM learning rates when optim.lr is null (conf/objective/mlm.yaml): from scratch, 2e-3 gave the largest
# head start after the default pre-training (README "Measured"); a trained transformers checkpoint
# wants the small steps of domain-adaptive pre-training.
MLM_LR = {"scratch": 2e-3, "hf": 1e-4}
EVAL_SEED = 1234  # validation masks are the same at every evaluation, so scores are comparable


def configure_torch(cfg: DictConfig) -> None:
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def build_mlm(cfg: DictConfig, tok: Any) -> MaskedLM:
    ids = special_ids(tok)
    head = None
    if cfg.model._target_ == "ptcli.models.hf.HFEncoder":  # init_from=hf:...: the checkpoint's own MLM head
        from ptcli.models.hf import HFEncoder, load_hf_masked_lm

        backbone, head, _ = load_hf_masked_lm(cfg.model.path, random_init=cfg.model.random_init)
        encoder = HFEncoder(cfg.model.path, cfg.model.max_len, model=backbone)
    else:
        encoder = instantiate(cfg.model, "model", vocab_size=tok.get_vocab_size())
    objective = instantiate(
        cfg.objective, "objective", encoder=encoder, mask_id=ids["mask"], head=head,
        special_ids=[i for i in ids.values() if i is not None], word_start=word_start_table(tok),
    )
    if not isinstance(objective, MaskedLM):
        raise UsageError(f"objective={cfg.objective._target_} does not fit model=transformer; use objective=mlm.")
    return objective


@torch.no_grad()
def evaluate_mlm(model: MaskedLM, blocks: torch.Tensor, batch_size: int, device: torch.device,
                 max_batches: int | None = None) -> dict[str, float]:
    """Masked-token loss, accuracy and perplexity over ``blocks`` with fixed (seeded) masks."""
    gen = torch.Generator(device="cpu").manual_seed(EVAL_SEED)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct, count = 0, 0
    for i, start in enumerate(range(0, len(blocks), batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        inputs, labels = model.mask(blocks[start : start + batch_size], generator=gen)
        out = model(inputs.to(device), labels.to(device))
        loss_sum += out["loss_sum"].double().cpu()
        correct += int(out["correct"])
        count += int(out["count"])
    loss = float(loss_sum) / max(count, 1)
    return {"loss": loss, "mlm_acc": correct / max(count, 1), "ppl": math.exp(min(loss, 50.0))}


def is_image_run(cfg: DictConfig) -> bool:
    targets = f"{cfg.model.get('_target_', '')} {(cfg.objective or {}).get('_target_', '')}"
    return "convnet" in targets.lower() or "simclr" in targets.lower()


def pretrain(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    check_trainer_config(cfg.trainer)
    if cfg.pretrained:
        raise UsageError("pretrained= is a finetune option; to continue a pretrain run use resume=RUN_DIR.")
    configure_torch(cfg)
    if is_image_run(cfg):
        from ptcli.recipes.simclr import pretrain_simclr

        return pretrain_simclr(cfg, run)
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    if cfg.objective is None or "mlm" not in str(cfg.objective.get("_target_", "")).lower():
        raise UsageError("ptcli pretrain on text needs objective=mlm.")

    if cfg.init_from and not str(cfg.init_from).startswith("hf:"):
        raise UsageError(f"init_from={cfg.init_from}: expected hf:NAME_OR_DIR (a transformers masked-LM "
                         "checkpoint). To continue a ptcli pretrain run use resume=RUN_DIR.")
    if cfg.optim.lr is None:  # conf/objective/mlm.yaml: the default depends on where the weights start
        cfg.optim.lr = MLM_LR["hf" if cfg.init_from else "scratch"]
        run.write_text("config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    # Data and tokenizer (rank 0 first: it fills the caches the other ranks then read)
    dist.main_goes_first()
    stream = None
    if cfg.data.get("streaming"):  # read -> tokenize -> pack on the fly (ptcli/data/streaming.py)
        from ptcli.data.streaming import open_streaming

        stream = open_streaming(cfg)
        trains_tokenizer = not (cfg.resume or cfg.init_from or cfg.tokenizer.path)  # on a bounded sample
        splits = {"train": stream.tokenizer_sample(cfg.tokenizer.get("train_examples")) if trains_tokenizer else None}
    else:
        splits = instantiate(cfg.data, "data", seed=cfg.seed).load()
    if cfg.resume:
        tok = load_tokenizer(run.tokenizer_dir)
    elif cfg.init_from:
        tok = start_from_hf(cfg, run)
    else:
        tok = build_tokenizer(cfg.tokenizer, splits["train"])
        if run.writable:
            save_tokenizer(tok, run.tokenizer_dir)
    if cfg.data.block_size > cfg.model.max_len:
        raise UsageError(f"data.block_size={cfg.data.block_size} exceeds model.max_len={cfg.model.max_len}; "
                         "lower data.block_size or raise model.max_len.")
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
    model = build_mlm(cfg, tok).to(device)
    net = dist.parallelize(model, cfg.trainer.strategy, device, cfg.trainer.compile)
    optimizer = instantiate(cfg.optim, "optim", model=model)
    total = total_steps(cfg, batches.batches_per_epoch)
    scheduler = instantiate(cfg.schedule, "schedule", optimizer=optimizer, total_steps=total)
    run.update(data={"train_blocks": len(train_blocks) if train_blocks is not None else None,
                     "val_blocks": len(val_blocks),
                     "vocab_size": tok.get_vocab_size(), "parameters": sum(p.numel() for p in model.parameters())})

    # Train: masks are redrawn every batch from a dedicated, checkpointed generator.
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1)

    def step_fn(block: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs, labels = model.mask(block, generator=mask_gen)  # on the global batch, as one process would
        if not getattr(batches, "per_rank", False):
            inputs, labels = dist.shard_rows((inputs, labels))
        return net(dist.to_device(inputs, device), dist.to_device(labels, device))

    def eval_fn() -> dict[str, float]:
        return evaluate_mlm(model, val_blocks, cfg.trainer.batch_size, device, cfg.trainer.eval_batches)

    trainer = Trainer(model, optimizer, scheduler, run, cfg.trainer, device, total, BestTracker("val/loss", "min"),
                      tokens_per_batch=cfg.trainer.batch_size * cfg.data.block_size,
                      extra_state=lambda: {"batches": batches.state_dict(), "mask_rng": mask_gen.get_state()})
    if cfg.resume:
        state = trainer.resume(resume_checkpoint(run))
        batches.load_state_dict(state["batches"])
        mask_gen.set_state(state["mask_rng"])
    return trainer.fit(batches, step_fn, eval_fn)


HF_MODEL_DIR = "hf_model"


def start_from_hf(cfg: DictConfig, run: RunDir) -> Any:
    """``init_from=hf:NAME_OR_DIR``: continue MLM pre-training from a transformers checkpoint.

    The checkpoint's config and tokenizer are copied into the run (``hf_model/``), and ``model`` is rewritten
    to point there, so fine-tuning from this run, resuming it and exporting it need no hub access and do
    not depend on the original directory. Weights come from the checkpoint now, from ptcli checkpoints later.
    Returns the tokenizer.
    """
    from ptcli.models.hf import _transformers, load_hf_config, load_hf_tokenizer

    spec = str(cfg.init_from)
    if any(o.split("=", 1)[0].lstrip("+~").startswith("model") for o in run.manifest.get("overrides", [])):
        raise UsageError(f"init_from={spec} fixes the architecture; drop the model override.")
    path = spec[3:]
    config = load_hf_config(path)
    tok = load_hf_tokenizer(path)
    local = run.path / HF_MODEL_DIR
    if run.writable:
        config.save_pretrained(local)
        _transformers().AutoTokenizer.from_pretrained(path).save_pretrained(local)
    limit = int(getattr(config, "max_position_embeddings", 512)) - (2 if config.model_type == "roberta" else 0)
    cfg.model = OmegaConf.create({"_target_": "ptcli.models.hf.HFEncoder", "path": str(local.resolve()),
                                  "max_len": limit, "random_init": True, "source": path})
    if cfg.data.block_size > limit:
        raise UsageError(f"data.block_size={cfg.data.block_size} exceeds the {limit} positions of hf:{path}; "
                         f"set data.block_size<={limit}.")
    run.write_text("config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if run.writable:
        save_tokenizer(tok, run.tokenizer_dir)
    # Built from the original checkpoint this time; from hf_model's config (+ ptcli weights) on resume.
    cfg.model.path, cfg.model.random_init = path, False
    return tok


def total_steps(cfg: DictConfig, batches_per_epoch: int) -> int:
    t = cfg.trainer
    if t.max_steps is not None:
        if t.max_steps <= 0:
            raise UsageError(f"trainer.max_steps must be positive, got {t.max_steps}")
        return int(t.max_steps)
    if t.max_epochs is None or t.max_epochs <= 0:
        raise UsageError("set trainer.max_steps or trainer.max_epochs to a positive number")
    return max(1, int(t.max_epochs) * batches_per_epoch // int(t.grad_accum))

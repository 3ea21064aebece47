"""MLM training, side by side: ptcli vs transformers' BertForMaskedLM + Trainer vs ModernBertForMaskedLM with
sparse prediction in a plain PyTorch loop.

The three sides train the same size (hidden 256, 4 layers, 4 heads, MLP matmuls of a 1024-wide GELU MLP, sequence
128, batch 32, a vocab-8192 WordPiece trained on pydocs) on the same packed pydocs blocks in the same order, with
masking at rate 0.15 (80% [MASK], 10% random, 10% kept), fp32 (``--precision bf16``: every side under a bf16
autocast, weights and optimizer in fp32, each transformers side with its fastest attention kernel in bf16:
``ATTENTION``), dropout 0, and what a competent user of each would set: fused AdamW (lr 5e-4 unless ``--lr`` says
otherwise, betas 0.9/0.999, eps 1e-8, constant lr) with weight decay 0.01 on matrices only (not on biases, norms or
other 1-d parameters; ptcli's ``build_adamw`` rule, applied to every side), gradient clipping 1.0, a fresh seed per
round (data masks, shuffling), and the training loss read once every ``--log-every`` steps on every side (ptcli's
Trainer and HF's Trainer log the mean over those steps; the plain loop does the same).

Architectural differences (``DIFFERENCES``, printed and recorded):

    ptcli       pre-LN; no biases in the blocks or their LayerNorms; no embedding LayerNorm (--embed-norm adds
                one: model.embed_norm=true); no token types;
                GELU MLP 256->1024->256; rotary positions (the default; --position learned gives learned
                absolute positions, the "BERT twin"); MLM head (dense with bias, GELU, LayerNorm, tied decoder +
                bias) at masked positions only, and the last block's queries, attention output and MLP at masked
                positions only (keys and values everywhere).
    hf_bert     BertForMaskedLM (sdpa) + Trainer + DataCollatorForLanguageModeling: post-LN; biases everywhere;
                embedding LayerNorm; token-type embeddings (all type 0); GELU MLP 256->1024->256; learned
                absolute positions; MLM head (dense, GELU, LayerNorm, tied decoder + bias) at every position.
    modernbert  ModernBertForMaskedLM (sdpa, sparse_prediction=True, every layer global attention), plain loop +
                DataCollatorForLanguageModeling: pre-LN; no biases except the decoder's; embedding LayerNorm; no
                token types; GeGLU MLP (Wi 256->2x683, Wo 683->256: 3 x 683 x 256 matmul MACs per token, the
                2 x 1024 x 256 of the others to 0.05%); rotary positions (theta 160,000); MLM head (dense, GELU,
                LayerNorm, tied decoder + bias) at masked positions only, the whole last layer everywhere.

Each side lives in a worker process of its own (as for a user: no heap or cache state shared with another library);
the parent runs one side at a time, rotating which goes first each round, and a dead worker ends the run with an
error naming it. Each round continues the same model and optimizer, so after all rounds every side has seen the same
tokens; a fixed validation set (pydocs validation blocks, masks drawn once with one seed) scores all of them.

Two figures, one definition each (per token x tokens/s / measured matmul rate):

    MFU      minimal training FLOPs the loss needs: the encoder with its last block at masked positions only
             (keys and values everywhere), the vocabulary projection at masked positions only; forward + backward
             = 3 x forward. The same work for every side, so MFU ratios are tokens/s ratios.
    HW util  FLOPs the side actually executes: HF BERT its whole head at every position; ModernBERT its whole last
             layer, head at masked positions; ptcli its last block's queries, attention and output projection at
             the masked positions padded to the widest row, MLP and head at masked positions.

The denominator is the measured matmul rate: the best fp32 (bf16 with --precision bf16) GEMM rate of several
square sizes, with the same thread
count, before and after the run (the larger of the two); not a data-sheet peak.

Modes:

    python scripts/bench_mlm.py --rounds 5 --steps 25 --warmup 3      # tokens/s, alternating rounds
    python scripts/bench_mlm.py --time-to-quality --budget 600        # wall time to a validation loss

``--time-to-quality``: every side trains from the same seed on the same blocks for ``--budget`` seconds of training
time (evaluation excluded), in chunks of ``--eval-every`` steps that alternate between the sides so that machine
noise is shared, and scores the validation set after each chunk. The target is the validation loss that the side
with the highest loss at the end of the budget reaches; each side's time to the target is interpolated between its
evaluations. The budget is in seconds, not steps: wall time to a quality is the question, and a step budget would
spend most of the run on the slowest side.

Every run writes its raw figures as JSON (default scripts/results/bench/mlm.json or mlm_ttq.json; ``--out``);
``scripts/bench_table.py`` renders the README's table from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ptcli from this checkout (also in the workers)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import (  # noqa: E402
    RESULTS,
    Worker,
    matmul_rate_gflops,
    mlm_minimal_forward_flops,
    result_header,
    run_main,
    write_json,
)

# Model and batch sizes: hidden, layers, heads, MLP width, sequence, batch. "tiny" runs every code path at a small
# fraction of the cost (the test suite's smoke run; its figures are not benchmark figures, and on a CPU without
# native bf16 a full-size bf16 step takes minutes). Read from the environment: the spawned workers import this
# module afresh and must build what the parent chose (``--size`` sets it and restarts the parent).
SIZES = {"full": (256, 4, 4, 1024, 128, 32), "tiny": (64, 2, 2, 256, 64, 8)}
SIZE_ENV = "PTCLI_BENCH_MLM_SIZE"
SIZE = os.environ.get(SIZE_ENV, "full")
if SIZE not in SIZES:
    sys.exit(f"{SIZE_ENV}={SIZE}: choose one of {', '.join(SIZES)}")
DIM, LAYERS, HEADS, FFN, SEQ, BATCH = SIZES[SIZE]
VOCAB, MASK = 8192, 0.15
MATMUL_SIZES = (512, 1024, 2048) if SIZE == "full" else (256,)  # the denominator's square GEMMs
GEGLU = round(2 * FFN / 3)  # ModernBERT's intermediate size: 3 x GEGLU x DIM matmul MACs = 2 x FFN x DIM
LR, WD, BETAS, EPS, CLIP = 5e-4, 0.01, (0.9, 0.999), 1e-8, 1.0
VAL_SEED = 1234
SIDES = ("ptcli", "hf_bert", "modernbert")
# The transformers sides' attention kernel per precision: each one's fastest here (scripts/bench_kernels.py, raw
# scripts/results/bench/kernels.txt, tokens/s fp32 / bf16: BertForMaskedLM sdpa 4,423 / 4,902, eager 4,521 / 6,645;
# ModernBertForMaskedLM sdpa 6,817 / 7,662, eager 7,048 / 9,665: torch's CPU sdpa kernel is slow in bf16).
# fp32 keeps sdpa on both, as the issue set it (eager within 3% of it there, faster in one run, slower in another).
ATTENTION = {"hf_bert": {"fp32": "sdpa", "bf16": "eager"}, "modernbert": {"fp32": "sdpa", "bf16": "eager"}}

DIFFERENCES = {
    "ptcli": "pre-LN; no biases in blocks or their LayerNorms; no embedding LayerNorm; no token types; GELU MLP "
             f"{DIM}->{FFN}->{DIM}; rotary positions by default (learned: the BERT twin); head (dense+bias, GELU, "
             "LayerNorm, tied decoder+bias) at masked positions only; last block's queries, attention output and MLP "
             "at masked positions only (keys/values everywhere)",
    "hf_bert": "BertForMaskedLM + Trainer: post-LN; biases everywhere; embedding LayerNorm; token-type "
               f"embeddings (type 0); GELU MLP {DIM}->{FFN}->{DIM}; learned absolute positions; head (dense, GELU, "
               "LayerNorm, tied decoder+bias) at every position",
    "modernbert": "ModernBertForMaskedLM (sparse_prediction, all layers global) + plain loop: pre-LN; no "
                  "biases except the decoder's; embedding LayerNorm; no token types; GeGLU MLP "
                  f"{DIM}->2x{GEGLU}, {GEGLU}->{DIM}; rotary positions (theta 160,000); head (dense, GELU, LayerNorm, "
                  "tied decoder+bias) at masked positions only; whole last layer at every position",
}


# -- FLOPs -------------------------------------------------------------------------------------------------------------

def mlp_flops(side: str) -> float:
    """Forward MLP matmul FLOPs per token at one position."""
    return 2 * 3 * GEGLU * DIM if side == "modernbert" else 2 * 2 * FFN * DIM


def forward_flops(side: str, vocab: int, mask: float, query: float, minimal: bool) -> tuple[float, float]:
    """Forward FLOPs per token, as (weight matmuls, attention scores QK^T + AV).

    ``mask``: the share of positions the loss reads; ``query``: the share at which ptcli's last block computes
    queries, attention and the output projection (the masked positions padded to the widest row of the batch).
    ``minimal``: what the loss needs for this side's architecture, instead of what the side executes."""
    proj, attn, mlp = 2 * 4 * DIM * DIM, 2 * 2 * SEQ * DIM, mlp_flops(side)
    head = 2 * DIM * DIM + 2 * DIM * vocab  # dense transform + vocabulary projection
    kv = 2 * 2 * DIM * DIM  # the last block's keys and values: every position
    if minimal:
        return mlm_minimal_forward_flops(DIM, LAYERS, mlp, SEQ, vocab, mask)
    if side == "hf_bert":
        return LAYERS * (proj + mlp) + head, LAYERS * attn
    if side == "modernbert":
        return LAYERS * (proj + mlp) + mask * head, LAYERS * attn
    return (LAYERS - 1) * (proj + mlp) + kv + query * kv + mask * (mlp + head), (LAYERS - 1 + query) * attn


def training_flops(side: str, vocab: int, mask: float, query: float, minimal: bool) -> float:
    """Training FLOPs per token: forward + backward = 3 x forward."""
    return 3 * sum(forward_flops(side, vocab, mask, query, minimal))


# -- data --------------------------------------------------------------------------------------------------------------

def load_data(val_blocks: int):
    """The tokenizer, the training blocks and up to ``val_blocks`` validation blocks (pydocs)."""
    from omegaconf import OmegaConf

    from ptcli.data.sources import Pydocs
    from ptcli.data.text import pack_blocks
    from ptcli.tokenizer import build_tokenizer

    splits = Pydocs().load()
    tcfg = OmegaConf.create({"path": None, "kind": "wordpiece", "vocab_size": VOCAB, "lowercase": True,
                             "min_frequency": 2})
    tok = build_tokenizer(tcfg, splits["train"])
    val = pack_blocks(splits["validation"], tok, SEQ, where="validation")
    return tok, pack_blocks(splits["train"], tok, SEQ), val[:val_blocks]


def special_table(tok) -> tuple[torch.Tensor, int]:
    from ptcli.tokenizer import special_ids

    ids = special_ids(tok)
    table = torch.zeros(tok.get_vocab_size(), dtype=torch.bool)
    table[[i for i in ids.values() if i is not None]] = True
    return table, ids["mask"]


def mask_blocks(tok, blocks: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ptcli's masking (rate 0.15, 80/10/10) with a seed of its own: the fixed validation inputs and labels."""
    from ptcli.objectives.mlm import mask_tokens

    special, mask_id = special_table(tok)
    return mask_tokens(blocks, mask_rate=MASK, mask_id=mask_id, vocab_size=tok.get_vocab_size(), special=special,
                       generator=torch.Generator().manual_seed(seed))


def mask_shares(tok, blocks: torch.Tensor, batches: int = 100) -> tuple[float, float]:
    """(share of positions masked, share of positions at which ptcli's last block computes queries) over up to
    ``batches`` batches: the rates the FLOP counts use."""
    masked = queried = 0.0
    n = min(batches, len(blocks) // BATCH)
    for i in range(n):
        _, labels = mask_blocks(tok, blocks[i * BATCH : (i + 1) * BATCH], seed=i)
        where = labels != -100
        masked += where.float().mean().item()
        queried += where.sum(1).max().item() / SEQ
    return masked / n, queried / n


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the sides (each built inside its own worker process) -------------------------------------------------------------

def decay_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """ptcli's ``build_adamw`` rule for the HF sides: weight decay on matrices only (ndim >= 2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": WD},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


class Side:
    """What every side answers: ``train`` a chunk, ``evaluate`` the validation set, ``count_flops`` of one step."""

    name = ""
    model: torch.nn.Module

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks  # the training blocks in the order every side reads them

    def chunk(self, offset: int, steps: int) -> torch.Tensor:
        idx = torch.arange(offset, offset + steps * BATCH) % len(self.blocks)
        return self.blocks[idx]

    def info(self) -> dict[str, Any]:
        return {"params": sum(p.numel() for p in self.model.parameters()), "torch_threads": torch.get_num_threads()}

    def masked_loss_sum(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """Mean MLM loss over the masked positions of the fixed validation set."""
        self.model.eval()
        total = sum(self.masked_loss_sum(inputs[i : i + BATCH], labels[i : i + BATCH])
                    for i in range(0, len(inputs), BATCH))
        self.model.train()
        return total / int((labels != -100).sum())

    def training_batch(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def count_flops(self, offset: int) -> dict[str, float]:
        """One training step's forward + backward under torch's FlopCounterMode, on a copy of the model (the run's
        own weights and optimizer are untouched), with the batch's own masked and queried shares. The counter sees
        the weight matmuls, and attention's only where it runs eager (``counts_attention``; CPU SDPA is opaque to
        it), so it checks the weight-matmul part of the FLOP formulas (and the attention part for eager sides)."""
        import copy

        from torch.utils.flop_counter import FlopCounterMode

        torch.manual_seed(0)
        inputs, labels = self.training_batch(self.chunk(offset, 1))
        model = copy.deepcopy(self.model).train()
        with FlopCounterMode(display=False) as counter:
            self.loss(model, inputs, labels).backward()
        where = labels != -100
        return {"counted": counter.get_total_flops() / inputs.numel(), "mask": where.float().mean().item(),
                "query": where.sum(1).max().item() / SEQ}

    def close(self) -> None:
        shutil.rmtree(getattr(self, "tmp", ""), ignore_errors=True)


class PtcliSide(Side):
    """ptcli's TransformerEncoder + MaskedLM trained by its own Trainer (ptcli/trainer.py), as ``ptcli pretrain``."""

    name = "ptcli"

    def __init__(self, tok_json: str, blocks: torch.Tensor, position: str, seed: int, log_every: int,
                 precision: str, lr: float, embed_norm: bool = False) -> None:
        from omegaconf import OmegaConf
        from tokenizers import Tokenizer

        from ptcli.config import TrainerConfig
        from ptcli.models.transformer import TransformerEncoder
        from ptcli.objectives.mlm import MaskedLM
        from ptcli.optim import build_adamw, warmup_schedule
        from ptcli.rundir import RunDir
        from ptcli.tokenizer import special_ids
        from ptcli.trainer import BestTracker, Trainer

        super().__init__(blocks)
        tok = Tokenizer.from_str(tok_json)
        torch.manual_seed(seed)
        ids = special_ids(tok)
        enc = TransformerEncoder(tok.get_vocab_size(), DIM, LAYERS, HEADS, FFN, SEQ, position=position,
                                 embed_norm=embed_norm)
        self.model = MaskedLM(enc, special_ids=[i for i in ids.values() if i is not None], mask_id=ids["mask"],
                              mask_rate=MASK)
        opt = build_adamw(self.model, lr, WD, list(BETAS), EPS)  # fused, decay on matrices only
        sched = warmup_schedule(opt, 10**9, "constant", 0)
        self.tmp = tempfile.mkdtemp(prefix="bench-ptcli-")
        self.run = RunDir.start(Path(self.tmp) / "run", OmegaConf.create({"seed": seed}), "pretrain", [])
        tcfg = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {
            "precision": precision, "grad_accum": 1, "batch_size": BATCH, "log_every": log_every,
            "eval_every": 10**9, "clip_grad": CLIP, "checkpoint_every": 0, "progress": "none", "max_steps": 1,
            "max_epochs": None, "keep_last": 1, "patience": None, "eval_batches": None})
        # The Trainer calls a model's after_step hook right after each optimizer step: the end of a step. (A plain
        # function, not a bound method: deep copies of the model must not copy this side along.)
        ends = self.ends = [0.0]
        self.model.after_step = lambda step, total_steps: ends.__setitem__(0, time.perf_counter())
        self.trainer = Trainer(self.model, opt, sched, self.run, tcfg, torch.device("cpu"), 0,
                               BestTracker("val/loss", "min"), tokens_per_batch=BATCH * SEQ)

    def training_batch(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.mask(block)

    def loss(self, model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model(inputs, labels)["loss"]

    def masked_loss_sum(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        return float(self.model(inputs, labels)["loss_sum"])

    def train(self, offset: int, steps: int, seed: int) -> dict[str, Any]:
        start = self.trainer.step
        self.trainer.total_steps = start + steps
        model, gen = self.model, torch.Generator().manual_seed(seed)
        starts: list[float] = []

        def step_fn(block: torch.Tensor) -> dict[str, torch.Tensor]:
            starts.append(time.perf_counter())
            inputs, labels = model.mask(block, generator=gen)
            return model(inputs, labels)

        self.trainer.fit(iter(self.chunk(offset, steps).split(BATCH)), step_fn, lambda: {})
        events = [json.loads(x) for x in (self.run.path / "metrics.jsonl").read_text().splitlines()]
        losses = [e["loss"] for e in events if e["split"] == "train" and e["step"] > start]
        return {"starts": starts, "end": self.ends[0], "losses": losses, "peak_rss_mb": peak_rss_mb()}


class HFSide(Side):
    """What the two transformers sides share: the tokenizer wrapped for transformers, its MLM data collator (masks
    as transformers' docs show), fused AdamW with ptcli's decay groups, a constant lr."""

    def __init__(self, tok_json: str, blocks: torch.Tensor, seed: int, log_every: int, precision: str,
                 lr: float) -> None:
        from tokenizers import Tokenizer
        from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

        super().__init__(blocks)
        self.log_every, self.precision, self.lr = log_every, precision, lr
        self.hf_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok_json), unk_token="[UNK]",
                                              pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                              mask_token="[MASK]")
        self.collator = DataCollatorForLanguageModeling(self.hf_tok, mlm_probability=MASK)
        torch.manual_seed(seed)

    def set_model(self, model: torch.nn.Module) -> None:
        self.model = model
        self.opt = torch.optim.AdamW(decay_groups(model), lr=self.lr, betas=BETAS, eps=EPS, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)

    def training_batch(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.collator([{"input_ids": row} for row in block.tolist()])
        return batch["input_ids"], batch["labels"]

    def loss(self, model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model(input_ids=inputs, labels=labels).loss

    def masked_loss_sum(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        return float(self.loss(self.model, inputs, labels)) * int((labels != -100).sum())


class HFBertSide(HFSide):
    """BertForMaskedLM trained by transformers' Trainer with its MLM data collator, as its docs show."""

    name = "hf_bert"

    def __init__(self, tok_json: str, blocks: torch.Tensor, position: str, seed: int, log_every: int,
                 precision: str, lr: float) -> None:
        # The Trainer needs accelerate: importing it here makes a missing one fail the worker at start.
        from transformers import BertConfig, BertForMaskedLM, Trainer  # noqa: F401

        super().__init__(tok_json, blocks, seed, log_every, precision, lr)
        config = BertConfig(vocab_size=len(self.hf_tok), hidden_size=DIM, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=SEQ,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.set_model(BertForMaskedLM._from_config(config, attn_implementation=ATTENTION["hf_bert"][precision]))
        self.tmp = tempfile.mkdtemp(prefix="bench-hf-")

    def train(self, offset: int, steps: int, seed: int) -> dict[str, Any]:
        import datasets
        from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

        starts: list[float] = []
        losses: list[float] = []
        end = [0.0]

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                starts.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):  # after the optimizer step
                end[0] = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    losses.append(float(logs["loss"]))

        data = datasets.Dataset.from_dict({"input_ids": self.chunk(offset, steps).tolist()})
        # sequential: the blocks in the order the other sides read them (they are shuffled once, by the parent)
        args = TrainingArguments(output_dir=self.tmp, per_device_train_batch_size=BATCH, max_steps=steps,
                                 logging_steps=self.log_every, save_strategy="no", report_to=[], use_cpu=True,
                                 dataloader_num_workers=0, max_grad_norm=CLIP, disable_tqdm=True, seed=seed,
                                 train_sampling_strategy="sequential", bf16=self.precision == "bf16")
        trainer = Trainer(model=self.model, args=args, train_dataset=data, data_collator=self.collator,
                          optimizers=(self.opt, self.sched), callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # (with tqdm off it prints every log dict)
        trainer.train()
        return {"starts": starts, "end": end[0], "losses": losses, "peak_rss_mb": peak_rss_mb()}


class ModernBertSide(HFSide):
    """ModernBertForMaskedLM with sparse prediction, trained by a plain PyTorch loop with the MLM data collator."""

    name = "modernbert"

    def __init__(self, tok_json: str, blocks: torch.Tensor, position: str, seed: int, log_every: int,
                 precision: str, lr: float) -> None:
        from transformers import ModernBertConfig, ModernBertForMaskedLM

        super().__init__(tok_json, blocks, seed, log_every, precision, lr)
        tok = self.hf_tok
        # layer_types is the installed release's key for what global_attn_every_n_layers=1 meant before it.
        config = ModernBertConfig(
            vocab_size=len(tok), hidden_size=DIM, intermediate_size=GEGLU, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, max_position_embeddings=SEQ, layer_types=["full_attention"] * LAYERS,
            attention_dropout=0.0, embedding_dropout=0.0, mlp_dropout=0.0, classifier_dropout=0.0,
            sparse_prediction=True, pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
        assert config.layer_types == ["full_attention"] * LAYERS and not config.attention_bias and not config.mlp_bias
        self.set_model(ModernBertForMaskedLM._from_config(config,
                                                          attn_implementation=ATTENTION["modernbert"][precision]))

    def train(self, offset: int, steps: int, seed: int) -> dict[str, Any]:
        torch.manual_seed(seed)  # the collator's masks
        loader = torch.utils.data.DataLoader([{"input_ids": row} for row in self.chunk(offset, steps).tolist()],
                                             batch_size=BATCH, shuffle=False, collate_fn=self.collator)
        model, opt, sched = self.model.train(), self.opt, self.sched
        starts: list[float] = []
        losses: list[float] = []
        running, n = torch.zeros(()), 0
        end = 0.0
        batches = iter(loader)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")
        for _ in range(steps):
            starts.append(time.perf_counter())
            batch = next(batches)
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            end = time.perf_counter()
            running += loss.detach()
            n += 1
            if n == self.log_every:  # the mean over the last log_every steps, read once, as the Trainers do
                losses.append(running.item() / n)
                running.zero_()
                n = 0
        return {"starts": starts, "end": end, "losses": losses, "peak_rss_mb": peak_rss_mb()}


def parse_lr(text: str) -> dict[str, float]:
    """``--lr``: ``1e-3`` (every side) or ``ptcli=1e-3,modernbert=5e-4`` (the others keep ``LR``)."""
    if "=" not in text:
        return dict.fromkeys(SIDES, float(text))
    lrs = dict.fromkeys(SIDES, LR)
    for item in filter(None, (x.strip() for x in text.split(","))):
        side, _, value = item.partition("=")
        if side not in SIDES:
            raise argparse.ArgumentTypeError(f"unknown side {side!r} (sides: {', '.join(SIDES)})")
        lrs[side] = float(value)
    return lrs


def build_side(name: str, ptcli_options: dict[str, Any], *args: Any) -> Side:
    """``ptcli_options``: keyword arguments of ptcli's side alone (``--embed-norm``)."""
    if name == "ptcli":
        return PtcliSide(*args, **ptcli_options)
    return {"hf_bert": HFBertSide, "modernbert": ModernBertSide}[name](*args)


# -- the runs ----------------------------------------------------------------------------------------------------------

def step_gaps(starts: list[float], warmup: int) -> list[float]:
    """Seconds between consecutive step starts after the first ``warmup``: each gap is one whole step (data,
    masking, forward, backward, clipping, optimizer, logging)."""
    return [b - a for a, b in zip(starts[warmup:], starts[warmup + 1 :], strict=False)]


def start_workers(args, tok, blocks: torch.Tensor) -> dict[str, Worker]:
    workers: dict[str, Worker] = {}
    try:
        # All at once (nothing is timed yet): the imports and model builds overlap.
        print(f"starting the {', '.join(args.sides)} workers ...", flush=True)
        for name in args.sides:
            workers[name] = Worker(name, build_side, name, {"embed_norm": args.embed_norm}, tok.to_str(), blocks,
                                   args.position, args.seed,
                                   args.log_every, args.precision, args.lr[name], wait=False)
        for w in workers.values():
            w.ready()
    except BaseException:
        for w in workers.values():
            w.kill()
        raise
    return workers


def rotated(names: list[str], i: int) -> list[str]:
    return names[i % len(names) :] + names[: i % len(names)]


def throughput(args, workers: dict[str, Worker], val: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in workers}
    for i in range(args.rounds):
        for name in rotated(list(workers), i):
            out = workers[name].call("train", i * args.steps * BATCH, args.steps, args.seed + 1 + i)
            gaps = step_gaps(out["starts"], args.warmup)
            tps = BATCH * SEQ / statistics.median(gaps) if gaps else float("nan")
            rounds[name].append({"tokens_per_s": tps, "step_seconds": gaps, "losses": out["losses"],
                                 "peak_rss_mb": out["peak_rss_mb"]})
            loss = f"{statistics.fmean(out['losses'][-2:]):.3f}" if out["losses"] else "-"
            print(f"round {i + 1} {name:>10}: {tps:8,.0f} tokens/s  train loss {loss}", flush=True)
    val_loss = {name: w.call("evaluate", *val) for name, w in workers.items()}
    return {"rounds": rounds, "val_loss": val_loss}


def interpolate_time(curve: list[dict[str, float]], target: float) -> float | None:
    """Training seconds at which the validation loss first reaches ``target`` (linear between evaluations)."""
    for a, b in zip(curve, curve[1:], strict=False):
        if b["val_loss"] <= target:
            if a["val_loss"] <= target:
                return a["seconds"]
            frac = (a["val_loss"] - target) / (a["val_loss"] - b["val_loss"])
            return a["seconds"] + frac * (b["seconds"] - a["seconds"])
    return curve[0]["seconds"] if curve and curve[0]["val_loss"] <= target else None


def loss_at(curve: list[dict[str, float]], seconds: float) -> float:
    """The validation loss at ``seconds`` of training (linear between evaluations; the last one past the end)."""
    for a, b in zip(curve, curve[1:], strict=False):
        if b["seconds"] >= seconds:
            frac = (seconds - a["seconds"]) / max(b["seconds"] - a["seconds"], 1e-9)
            return a["val_loss"] + frac * (b["val_loss"] - a["val_loss"])
    return curve[-1]["val_loss"]


def time_to_quality(args, workers: dict[str, Worker], val: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    curves: dict[str, list[dict[str, float]]] = {}
    for name, w in workers.items():
        curves[name] = [{"step": 0, "seconds": 0.0, "val_loss": w.call("evaluate", *val)}]
    chunk_seconds: dict[str, list[float]] = {name: [] for name in workers}
    losses: dict[str, list[float]] = {name: [] for name in workers}
    active, i = list(workers), 0
    while active:
        for name in rotated(active, i):
            done = curves[name][-1]
            chunk = len(chunk_seconds[name])
            out = workers[name].call("train", done["step"] * BATCH, args.eval_every, args.seed + 1 + chunk)
            seconds = out["end"] - out["starts"][0]
            chunk_seconds[name].append(seconds)
            losses[name] += out["losses"]
            point = {"step": done["step"] + args.eval_every, "seconds": done["seconds"] + seconds,
                     "val_loss": workers[name].call("evaluate", *val)}
            curves[name].append(point)
            print(f"{name:>10}: step {point['step']:5d}  {point['seconds']:7.1f} s  val loss {point['val_loss']:.3f}",
                  flush=True)
            if point["seconds"] >= args.budget:
                active.remove(name)
        i += 1
    at_budget = {name: loss_at(curve, args.budget) for name, curve in curves.items()}
    slowest = max(at_budget, key=at_budget.get)
    target = at_budget[slowest]
    reach = {name: interpolate_time(curve, target) for name, curve in curves.items()}
    return {"curves": curves, "chunk_seconds": chunk_seconds, "train_losses": losses, "loss_at_budget": at_budget,
            "slowest": slowest, "target_val_loss": target, "seconds_to_target": reach}


def counts_attention(name: str, precision: str) -> bool:
    """Whether torch's FLOP counter sees this side's attention matmuls: eager attention is two matmuls per head;
    the CPU sdpa kernel is opaque to the counter."""
    return ATTENTION.get(name, {}).get(precision) == "eager"


def side_label(name: str, position: str, versions: dict[str, Any], precision: str, embed_norm: bool = False) -> str:
    hf = f"transformers {versions.get('transformers')}"
    attn = {side: kernels[precision] for side, kernels in ATTENTION.items()}
    norm = ", embedding LayerNorm" if embed_norm else ""
    return {"ptcli": f"ptcli `TransformerEncoder` ({position} positions{norm}) + `MaskedLM`, its `Trainer`",
            "hf_bert": f"{hf} `BertForMaskedLM` ({attn['hf_bert']}) + `Trainer`",
            "modernbert": f"{hf} `ModernBertForMaskedLM` ({attn['modernbert']}, sparse prediction) + plain loop"}[name]


def main() -> None:
    from ptcli.models.transformer import TransformerConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="throughput: rounds per side")
    ap.add_argument("--steps", type=int, default=25, help="throughput: training steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="throughput: steps not timed at the start of each round")
    ap.add_argument("--log-every", type=int, default=5, help="every side reads its training loss this often")
    ap.add_argument("--position", default=TransformerConfig.position, choices=["rotary", "learned"],
                    help="ptcli's positions (default: ptcli's own default; learned = the BERT twin)")
    ap.add_argument("--embed-norm", action="store_true",
                    help="ptcli's encoder with model.embed_norm=true (a LayerNorm on the token embeddings, as BERT and "
                         "ModernBERT have; off in ptcli's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-blocks", type=int, default=256, help="validation blocks (pydocs validation split)")
    ap.add_argument("--time-to-quality", action="store_true", help="wall time to a validation loss instead")
    ap.add_argument("--budget", type=float, default=300, help="time to quality: training seconds per side")
    ap.add_argument("--eval-every", type=int, default=25, help="time to quality: steps between evaluations")
    ap.add_argument("--matmul-seconds", type=float, default=0.5, help="length of each timing of the matmul rate")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="every side's compute precision: bf16 = autocast (ptcli trainer.precision=bf16, the HF "
                         "Trainer's bf16=True, torch.autocast in the plain loop); weights and optimizer stay fp32")
    ap.add_argument("--lr", default=str(LR), type=parse_lr,
                    help=f"constant learning rate: one for every side (default {LR}), or per side, e.g. "
                         "'ptcli=1e-3,modernbert=5e-4' (sides not named keep the default)")
    ap.add_argument("--sides", default=",".join(SIDES),
                    help=f"comma-separated sides to run, ptcli among them (default: all of {', '.join(SIDES)})")
    ap.add_argument("--size", default=SIZE, choices=list(SIZES),
                    help="full (the benchmark: hidden 256, 4 layers, seq 128, batch 32) or tiny (hidden 64, 2 layers, "
                         "seq 64, batch 8: a smoke run of every code path, not a benchmark figure)")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default scripts/results/bench/mlm.json, or mlm_ttq.json)")
    args = ap.parse_args()
    if args.size != SIZE:  # the sizes are module constants (also in the workers): start again with them set
        os.environ[SIZE_ENV] = args.size
        os.execv(sys.executable, [sys.executable, *sys.argv])
    args.sides = [name.strip() for name in args.sides.split(",") if name.strip()]
    unknown = sorted(set(args.sides) - set(SIDES))
    if unknown or "ptcli" not in args.sides:
        ap.error(f"--sides {','.join(args.sides)}: choose ptcli and any of {', '.join(SIDES[1:])}"
                 + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    suffix = "" if args.precision == "fp32" else f"_{args.precision}"
    out_path = args.out or RESULTS / (f"mlm_ttq{suffix}.json" if args.time_to_quality else f"mlm{suffix}.json")

    header = result_header("mlm_ttq" if args.time_to_quality else "mlm")
    tok, train_blocks, val_blocks = load_data(args.val_blocks)
    vocab = tok.get_vocab_size()
    # One order for every side: shuffled once here, read in that order by all.
    blocks = train_blocks[torch.randperm(len(train_blocks), generator=torch.Generator().manual_seed(args.seed))]
    val = mask_blocks(tok, val_blocks, VAL_SEED)
    mask_share, query_share = mask_shares(tok, blocks)
    rate_before = matmul_rate_gflops(MATMUL_SIZES, seconds=args.matmul_seconds, dtype=args.precision)
    workers = start_workers(args, tok, blocks)
    try:
        info = {name: w.call("info") for name, w in workers.items()}
        checks = {name: w.call("count_flops", 0) for name, w in workers.items()}
        measured = time_to_quality(args, workers, val) if args.time_to_quality else throughput(args, workers, val)
    finally:
        for w in workers.values():
            w.close()
    rate_after = matmul_rate_gflops(MATMUL_SIZES, seconds=args.matmul_seconds, dtype=args.precision)
    rate = max(rate_before["best"], rate_after["best"])

    flops: dict[str, dict[str, float]] = {}
    for name in workers:
        c = checks[name]
        flops[name] = {
            "minimal": training_flops(name, vocab, mask_share, query_share, minimal=True),
            "executed": training_flops(name, vocab, mask_share, query_share, minimal=False),
            # the weight-matmul part of the formula at that batch's own shares, and what FlopCounterMode counted
            "check_formula_matmuls": 3 * sum(forward_flops(name, vocab, c["mask"], c["query"], minimal=False)[
                : 2 if counts_attention(name, args.precision) else 1]),
            "check_counted": c["counted"],
        }
    result: dict[str, Any] = {
        **header,
        "mode": "time_to_quality" if args.time_to_quality else "throughput",
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "dim": DIM, "layers": LAYERS,
                     "heads": HEADS, "ffn": FFN, "modernbert_intermediate": GEGLU, "seq": SEQ, "batch": BATCH,
                     "vocab": vocab, "mask_rate": MASK, "lr": args.lr, "weight_decay": WD, "betas": list(BETAS),
                     "eps": EPS, "clip": CLIP, "optimizer": "torch.optim.AdamW(fused=True), decay on ndim >= 2",
                     "train_blocks": len(train_blocks), "val_blocks": len(val_blocks),
                     "val_masked_tokens": int((val[1] != -100).sum())},
        "differences": {name: DIFFERENCES[name] for name in args.sides},
        "sides": {name: {"label": side_label(name, args.position, header["versions"], args.precision,
                                             args.embed_norm), **info[name],
                         "flops_per_token": flops[name]} for name in workers},
        "mask_share": mask_share, "query_share": query_share,
        "matmul_rate_gflops": {"before": rate_before, "after": rate_after, "used": rate},
    }
    print()
    print(f"machine: {header['machine']['cpu']}, {header['machine']['usable_cpus']} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; measured matmul rate ({args.precision}) "
          f"{rate_before['best']:.1f} / {rate_after['best']:.1f} GFLOP/s before / after")
    print(f"model: hidden {DIM}, layers {LAYERS}, heads {HEADS}, MLP {FFN} (ModernBERT GeGLU {GEGLU}), seq {SEQ}, "
          f"batch {BATCH}, vocab {vocab}, ptcli positions {args.position}; masked share {mask_share:.3f}, ptcli "
          f"query share {query_share:.3f}")
    if args.embed_norm:
        result["differences"]["ptcli"] = result["differences"]["ptcli"].replace(
            "no embedding LayerNorm", "embedding LayerNorm (--embed-norm: model.embed_norm=true)")
    for name, text in result["differences"].items():
        print(f"  {name}: {text}")
    if args.time_to_quality:
        result.update(measured)
        report_time_to_quality(args, result)
    else:
        report_throughput(args, result, measured, rate)
    write_json(out_path, result)
    print(f"raw results: {out_path}")


def report_throughput(args, result: dict[str, Any], measured: dict[str, Any], rate: float) -> None:
    print(f"{'':>10} {'tokens/s median':>16} {'min':>8} {'max':>8} {'MFU':>6} {'HW util':>8} {'MFLOP/tok':>10} "
          f"{'exec':>6} {'val loss':>9} {'peak RSS':>9}")
    for name, rounds in measured["rounds"].items():
        side = result["sides"][name]
        tps = [r["tokens_per_s"] for r in rounds]
        med = statistics.median(tps)
        f = side["flops_per_token"]
        side.update({"rounds": rounds, "median_tokens_per_s": med, "mfu": f["minimal"] * med / (rate * 1e9),
                     "hw_util": f["executed"] * med / (rate * 1e9), "val_loss": measured["val_loss"][name],
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds)})
        print(f"{name:>10} {med:>16,.0f} {min(tps):>8,.0f} {max(tps):>8,.0f} {side['mfu']:>6.1%} "
              f"{side['hw_util']:>8.1%} {f['minimal'] / 1e6:>10.1f} {f['executed'] / 1e6:>6.1f} "
              f"{side['val_loss']:>9.3f} {side['peak_rss_mb']:>6,.0f} MB")
    print("MFU: minimal training FLOPs per token (last block and vocabulary projection at masked positions only) x "
          "tokens/s / measured matmul rate; HW util: FLOPs the side executes / the same rate")
    ratios = {}
    for other in [name for name in result["sides"] if name != "ptcli"]:
        per_round = [a["tokens_per_s"] / b["tokens_per_s"]
                     for a, b in zip(measured["rounds"]["ptcli"], measured["rounds"][other], strict=True)]
        ratios[f"ptcli/{other}"] = {"per_round": per_round, "median": statistics.median(per_round)}
        print(f"ratio ptcli/{other} per round: {', '.join(f'{r:.2f}' for r in per_round)}; "
              f"median {statistics.median(per_round):.2f}")
    result["ratios"] = ratios
    print(f"same tokens seen: {args.rounds * args.steps * BATCH * SEQ:,} per side; val loss on "
          f"{result['settings']['val_masked_tokens']:,} masked validation tokens")


def report_time_to_quality(args, result: dict[str, Any]) -> None:
    target = result["target_val_loss"]
    print(f"budget {args.budget:g} s of training per side; target = {result['slowest']}'s validation loss at the "
          f"budget: {target:.3f}")
    print(f"{'':>10} {'steps':>6} {'val loss @ budget':>18} {'s to target':>12} {'vs ptcli':>9}")
    mine = result["seconds_to_target"]["ptcli"]
    for name, curve in result["curves"].items():
        reach = result["seconds_to_target"][name]
        vs = f"{mine / reach:.2f}" if reach and mine else "-"
        print(f"{name:>10} {curve[-1]['step']:>6} {result['loss_at_budget'][name]:>18.3f} "
              f"{reach if reach is not None else float('nan'):>12.1f} {vs:>9}")
    print("s to target: training seconds (evaluation excluded) until the validation loss first reaches the target, "
          "interpolated between evaluations; vs ptcli: ptcli's time / that side's")


if __name__ == "__main__":
    sys.exit(run_main(main))

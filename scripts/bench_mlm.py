"""MLM training throughput: ptcli vs the Hugging Face Trainer on the same work, side by side.

Both train the same model size (hidden 256, 4 layers, 4 heads, FFN 1024, sequence 128, batch 32, vocab
8192 WordPiece trained on pydocs, mask rate 0.15 with 80/10/10, fp32, AdamW, dropout 0) on the same
packed pydocs blocks. Each side lives in a worker process of its own (as it would for a user: no heap
or cache state shared with the other library); the parent alternates rounds A B A B ..., and only one
side runs at a time. Each round continues the same model and optimizer, so after all rounds both have
seen the same number of tokens and their losses compare.

    pip install -c constraints.txt -e ".[dev,bench]"
    python scripts/bench_mlm.py --rounds 3 --steps 25 --warmup 3

Prints tokens/s per round (median and spread), the ptcli/HF ratio, peak RSS, and model FLOP utilization:
(training FLOPs per token actually required, vocabulary projection counted at masked positions only)
x tokens/s / measured fp32 matmul peak (measured in this run).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also in the spawned workers

DIM, LAYERS, HEADS, FFN, SEQ, BATCH, VOCAB, MASK = 256, 4, 4, 1024, 128, 32, 8192, 0.15
LR, WD = 5e-4, 0.01


def matmul_peak_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_token(vocab: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward) for the work MLM actually requires."""
    per_layer = 2 * (4 * DIM * DIM + 2 * DIM * FFN)  # projections + MLP matmuls
    attention = 2 * 2 * SEQ * DIM  # QK^T and AV, per token
    head = MASK * 2 * (DIM * DIM + DIM * vocab)  # MLM head, only at masked positions
    return 3 * (LAYERS * (per_layer + attention) + head)


def executed_flops_per_token(name: str, vocab: int) -> float:
    """Training FLOPs per token each side actually performs. HF projects every position onto the
    vocabulary; ptcli also runs its last block's queries, attention and MLP at masked positions only
    (counted at the mask rate: a lower bound, since per-row query padding is left out)."""
    per_layer = 2 * (4 * DIM * DIM + 2 * DIM * FFN)
    attention = 2 * 2 * SEQ * DIM
    head = 2 * (DIM * DIM + DIM * vocab)
    if name == "hf":
        return 3 * (LAYERS * (per_layer + attention) + head)
    last = 2 * 2 * DIM * DIM + MASK * (2 * 2 * DIM * DIM + 2 * 2 * DIM * FFN + attention)  # K, V everywhere
    return 3 * ((LAYERS - 1) * (per_layer + attention) + last + MASK * head)


def load_blocks():
    from omegaconf import OmegaConf

    from ptcli.data.sources import Pydocs
    from ptcli.data.text import pack_blocks
    from ptcli.tokenizer import build_tokenizer

    splits = Pydocs().load()
    tcfg = OmegaConf.create({"path": None, "kind": "wordpiece", "vocab_size": VOCAB, "lowercase": True,
                             "min_frequency": 2})
    tok = build_tokenizer(tcfg, splits["train"])
    return tok, pack_blocks(splits["train"], tok, SEQ)


class PtcliRunner:
    name = "ptcli"

    def __init__(self, tok, blocks, position: str) -> None:
        from omegaconf import OmegaConf

        from ptcli.data.text import BlockBatches
        from ptcli.models.transformer import TransformerEncoder
        from ptcli.objectives.mlm import MaskedLM
        from ptcli.optim import build_adamw, warmup_schedule
        from ptcli.rundir import RunDir
        from ptcli.tokenizer import special_ids
        from ptcli.trainer import BestTracker, Trainer

        torch.manual_seed(0)
        ids = special_ids(tok)
        enc = TransformerEncoder(tok.get_vocab_size(), DIM, LAYERS, HEADS, FFN, SEQ, position=position)
        self.model = MaskedLM(enc, special_ids=list(ids.values()), mask_id=ids["mask"], mask_rate=MASK)
        opt = build_adamw(self.model, LR, WD, [0.9, 0.999], 1e-8)
        sched = warmup_schedule(opt, 10**9, "constant", 0)
        self.tmp = tempfile.mkdtemp(prefix="bench-ptcli-")
        cfg = OmegaConf.create({"seed": 0})
        run = RunDir.start(Path(self.tmp) / "run", cfg, "pretrain", [])
        from ptcli.config import TrainerConfig

        tcfg = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {
            "precision": "fp32", "grad_accum": 1, "batch_size": BATCH, "log_every": 1, "eval_every": 10**9,
            "clip_grad": 1.0, "checkpoint_every": 0, "progress": "none", "max_steps": 1, "max_epochs": None,
            "keep_last": 1, "patience": None, "eval_batches": None})
        self.trainer = Trainer(self.model, opt, sched, run, tcfg, torch.device("cpu"), 0,
                               BestTracker("val/loss", "min"), tokens_per_batch=BATCH * SEQ)
        self.batches = BlockBatches(blocks, BATCH, 0)
        self.gen = torch.Generator().manual_seed(1)
        self.run = run

    def round(self, steps: int) -> tuple[list[float], list[float]]:
        """Train ``steps`` more steps; return per-step wall times and losses."""
        import json

        start = self.trainer.step
        self.trainer.total_steps = start + steps
        model, gen = self.model, self.gen
        times: list[float] = []
        last = [time.perf_counter()]

        def step_fn(block):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
            inputs, labels = model.mask(block, generator=gen)
            return model(inputs, labels)

        self.trainer.fit(self.batches, step_fn, lambda: {})
        events = [json.loads(x) for x in (self.run.path / "metrics.jsonl").read_text().splitlines()]
        losses = [e["loss"] for e in events if e["split"] == "train" and e["step"] > start]
        return times[1:], losses  # times[i] = gap between consecutive step starts


class HFRunner:
    name = "hf"

    def __init__(self, tok, blocks) -> None:
        import datasets
        from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, PreTrainedTokenizerFast

        torch.manual_seed(0)
        self.hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                              cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=DIM, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=SEQ,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.model = BertForMaskedLM._from_config(config, attn_implementation="sdpa")
        self.collator = DataCollatorForLanguageModeling(self.hf_tok, mlm_probability=MASK)
        self.dataset = datasets.Dataset.from_dict({"input_ids": blocks.tolist()})
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0}],
                                     lr=LR, betas=(0.9, 0.999), eps=1e-8)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
        self.tmp = tempfile.mkdtemp(prefix="bench-hf-")
        self.offset = 0

    def round(self, steps: int) -> tuple[list[float], list[float]]:
        from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

        times: list[float] = []
        losses: list[float] = []
        last = [time.perf_counter()]

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                now = time.perf_counter()
                times.append(now - last[0])
                last[0] = now

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    losses.append(float(logs["loss"]))

        n = steps * BATCH
        data = self.dataset.select(range(self.offset, self.offset + n))
        self.offset = (self.offset + n) % (len(self.dataset) - n)
        args = TrainingArguments(output_dir=self.tmp, per_device_train_batch_size=BATCH, max_steps=steps,
                                 logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                                 dataloader_num_workers=0, max_grad_norm=1.0, disable_tqdm=True, seed=len(times))
        trainer = Trainer(model=self.model, args=args, train_dataset=data, data_collator=self.collator,
                          optimizers=(self.opt, self.sched), callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # (with tqdm off it prints every log dict)
        trainer.train()
        return times[1:], losses


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(conn, name: str, tok_json: str, blocks: torch.Tensor, position: str) -> None:
    """Worker process: build one side, then train ``steps`` more per request until sent ``None``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tok_json)
    runner = PtcliRunner(tok, blocks, position) if name == "ptcli" else HFRunner(tok, blocks)
    conn.send("ready")
    while (steps := conn.recv()) is not None:
        times, losses = runner.round(steps)
        conn.send((times, losses, peak_rss_mb()))
    shutil.rmtree(runner.tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25, help="training steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="steps discarded at the start of each round")
    ap.add_argument("--position", default="learned", choices=["learned", "rotary"],
                    help="ptcli position encoding (BERT uses learned)")
    args = ap.parse_args()

    tok, blocks = load_blocks()
    ctx = mp.get_context("spawn")
    workers: dict[str, tuple] = {}
    for name in ("ptcli", "hf"):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(child, name, tok.to_str(), blocks, args.position), daemon=True)
        proc.start()
        if parent.recv() != "ready":
            raise SystemExit(f"the {name} worker failed to start")
        workers[name] = (proc, parent)
    peak = matmul_peak_gflops()
    fpt = flops_per_token(tok.get_vocab_size())
    tps: dict[str, list[float]] = {name: [] for name in workers}
    losses: dict[str, list[float]] = {name: [] for name in workers}
    rss: dict[str, float] = {}
    for i in range(args.rounds):
        for name, (_, conn) in workers.items():
            conn.send(args.steps)
            times, ls, rss[name] = conn.recv()
            steady = times[args.warmup :]
            tps[name].append(BATCH * SEQ / statistics.median(steady))
            losses[name] += ls
            print(f"round {i + 1} {name:>5}: {tps[name][-1]:8,.0f} tokens/s  loss {statistics.fmean(ls[-5:]):.3f}",
                  flush=True)
    for proc, conn in workers.values():
        conn.send(None)
        proc.join()
    peak_after = matmul_peak_gflops()
    print()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"fp32 matmul peak {peak:.1f} / {peak_after:.1f} GFLOP/s (before/after)")
    print(f"model: hidden {DIM}, layers {LAYERS}, heads {HEADS}, FFN {FFN}, seq {SEQ}, batch {BATCH}, "
          f"vocab {tok.get_vocab_size()}, ptcli positions {args.position}; {fpt / 1e6:.1f} MFLOP/token")
    print(f"{'':>6} {'tokens/s median':>16} {'min':>8} {'max':>8} {'MFU':>6} {'HW util':>8} {'final loss':>11} "
          f"{'peak RSS':>9}")
    peak_used = max(peak, peak_after)
    for name in tps:
        med = statistics.median(tps[name])
        hw = executed_flops_per_token(name, tok.get_vocab_size()) * med / (peak_used * 1e9)
        print(f"{name:>6} {med:>16,.0f} {min(tps[name]):>8,.0f} {max(tps[name]):>8,.0f} "
              f"{fpt * med / (peak_used * 1e9):>6.1%} {hw:>8.1%} {statistics.fmean(losses[name][-10:]):>11.3f} "
              f"{rss[name]:>6,.0f} MB")
    print("MFU: required FLOPs (full encoder, vocabulary projection at masked positions) / peak; "
          "HW util: FLOPs each side performs / peak")
    ratios = [a / b for a, b in zip(tps["ptcli"], tps["hf"], strict=True)]
    print(f"ratio ptcli/HF per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
    print(f"same tokens seen: {args.rounds * args.steps * BATCH * SEQ:,} each")


if __name__ == "__main__":
    main()

"""Kernel-level choices behind ptcli's transformer and the benchmarks' peer settings, timed in one process with the
variants alternating (so that the machine's drift is shared). Its output is the raw record of the figures that
ptcli/models/transformer.py, scripts/bench_mlm.py (``ATTENTION``), scripts/bench_finetune.py and the README quote
for these choices: scripts/results/bench/kernels.txt.

    attention   attention forward + backward, batch 32, 4 heads of 32 (fine-tuning's size) and of 64 (the MLM
                benchmark's), length 128, a padding mask: SDPA in fp32 and bf16, SDPA on bf16 inputs computed in
                fp32, the written-out form in fp32, and ptcli's ``attend`` under a CPU bf16 autocast (written out,
                in bf16).
    finetune    one classifier training step (fused AdamW, clipping) on random batches of 32 pydocs docstrings
                (WordPiece 2000 trained on them, max length 128), model dim 128 / 4 layers / 4 heads / MLP 512: ptcli
                padded (every position through every block) vs ptcli unpadded (what it runs), fp32 and bf16;
                BertForSequenceClassification sdpa/eager x fp32/bf16, on random and on length-sorted batches.
    mlm         one MLM training step at bench_mlm.py's size (dim 256, 4 layers, seq 128, batch 32, vocab 8192,
                15% masked), tokens/s: ptcli, BertForMaskedLM and ModernBertForMaskedLM (sparse prediction), each
                transformers model with sdpa and eager attention, fp32 and bf16 autocast.
    rotary      ptcli's MLM step (as above) with its rotary positions written out (autograd through mul, sub, add,
                cat), in an ``addcmul`` form, and as ``Rotary`` (one autograd function: what ptcli runs), fp32/bf16.

    matmuls     the MLM step's weight matmuls alone at its shapes, both weight layouts, against square GEMMs.
    profile     torch.profiler's table for ptcli's MLM step, fp32 and bf16.
    convnet     a SimCLR training step of the default vision config (convnet width 32, 3 stages, batch 256 of 8x8
                images, fused AdamW, clipping), images/s: the convnet's weights contiguous (NCHW) vs channels-last
                (what ``ConvNet`` sets), and channels-last inputs alone; fp32.

    python scripts/bench_kernels.py [--rounds 3] [--only attention,finetune,mlm,rotary,matmuls,profile,convnet]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of ``reps`` calls after one untimed call."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def alternate(variants: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, list[float]]:
    """Each variant's median step seconds per round, the order rotating every round."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            out[name].append(timed(variants[name], reps))
    return out


def report(title: str, results: dict[str, list[float]], unit: Callable[[float], str]) -> None:
    print(f"\n{title}")
    for name, per_round in results.items():
        rounds = ", ".join(unit(s) for s in per_round)
        print(f"  {name:<40} median {unit(statistics.median(per_round)):>12}   rounds {rounds}")


def train_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_attention(rounds: int) -> None:
    from ptcli.models.transformer import attend

    torch.manual_seed(0)
    lengths = torch.randint(64, 129, (32,))
    mask = (torch.arange(128) < lengths[:, None])[:, None, None, :]

    def written_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
        return scores.masked_fill(~mask, torch.finfo(q.dtype).min).softmax(-1) @ v

    def case(head_dim: int, dtype: torch.dtype, how: str) -> Callable[[], None]:
        q, k, v = (torch.randn(32, 4, 128, head_dim, dtype=dtype, requires_grad=True) for _ in range(3))

        def run() -> None:
            if how == "ptcli":  # what ptcli runs under a CPU bf16 autocast
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = attend(q, k, v, mask, 0.0)
            elif how == "sdpa in fp32":  # ptcli's bf16 path until 2026-12-01
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(dtype)
            elif how == "written out":
                y = written_out(q, k, v)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            y.float().sum().backward()

        return run

    for head_dim in (32, 64):
        results = alternate({
            "sdpa fp32 (ptcli in fp32)": case(head_dim, torch.float32, "sdpa"),
            "written out fp32": case(head_dim, torch.float32, "written out"),
            "sdpa bf16": case(head_dim, torch.bfloat16, "sdpa"),
            "sdpa, bf16 in, fp32 inside": case(head_dim, torch.bfloat16, "sdpa in fp32"),
            "ptcli attend under bf16 autocast": case(head_dim, torch.bfloat16, "ptcli"),
        }, rounds, 10)
        report(f"attention forward+backward, [32, 4, 128, {head_dim}], padding mask", results,
               lambda s: f"{s * 1e3:.1f} ms")


def pydocs_lengths() -> list[list[int]]:
    from omegaconf import OmegaConf

    from ptcli.data.sources import Pydocs
    from ptcli.tokenizer import build_tokenizer

    train = Pydocs(label="package", num_labels=20).load()["train"]
    train = train.filter(lambda b: [v is not None for v in b["label"]], batched=True)
    tok = build_tokenizer(OmegaConf.create({"path": None, "kind": "wordpiece", "vocab_size": 2000,
                                            "lowercase": True, "min_frequency": 2}), train)
    return [[1, *e.ids[:126], 2] for e in tok.encode_batch(list(train["text"]), add_special_tokens=False)]


def bench_finetune(rounds: int) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from ptcli.data.text import pad_batch
    from ptcli.models.classifier import SequenceClassifier, masked_mean
    from ptcli.models.transformer import TransformerEncoder

    seqs = pydocs_lengths()
    gen = torch.Generator().manual_seed(0)
    by_length = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    random_batches = [pad_batch([seqs[i] for i in torch.randperm(len(seqs), generator=gen)[:32].tolist()], 0)
                      for _ in range(8)]
    sorted_batches = [pad_batch([seqs[i] for i in by_length[s : s + 32]], 0)
                      for s in torch.randint(0, len(seqs) - 32, (8,), generator=gen).tolist()]
    real = statistics.fmean(float(m.float().mean()) for _, m in random_batches)
    print(f"\nfine-tuning batches: {len(seqs)} pydocs docstrings, real share of a random batch's positions {real:.2f}")
    y = torch.randint(0, 20, (32,))

    def cycling(batches: list) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        state = {"i": 0}

        def take() -> tuple[torch.Tensor, torch.Tensor]:
            state["i"] += 1
            return batches[state["i"] % len(batches)]

        return take

    def ptcli_step(padded: bool, bf16: bool) -> Callable[[], None]:
        torch.manual_seed(0)
        model = SequenceClassifier(TransformerEncoder(2000), 20)
        take = cycling(random_batches)

        def loss() -> torch.Tensor:
            ids, mask = take()
            if padded:  # every position through every block, padding masked as keys (ptcli before unpadding)
                enc, t = model.encoder, ids.shape[1]
                hidden = enc.run_blocks(enc.tok_emb(ids), mask[:, None, None, :].bool(),
                                        (enc.rope_cos[:t], enc.rope_sin[:t]))
                logits = model.head(masked_mean(hidden, mask))
            else:
                logits = model(ids, mask)
            return F.cross_entropy(logits.float(), y)

        return train_step(model, loss, bf16)

    def bert_step(attn: str, bf16: bool, batches: list) -> Callable[[], None]:
        torch.manual_seed(0)
        config = BertConfig(vocab_size=2000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=512, max_position_embeddings=128, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, classifier_dropout=0.1, num_labels=20)
        model = BertForSequenceClassification._from_config(config, attn_implementation=attn)
        take = cycling(batches)

        def loss() -> torch.Tensor:
            ids, mask = take()
            return F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), y)

        return train_step(model, loss, bf16)

    variants = {"ptcli padded fp32": ptcli_step(True, False), "ptcli unpadded fp32": ptcli_step(False, False),
                "ptcli unpadded bf16": ptcli_step(False, True)}
    for attn in ("sdpa", "eager"):
        for bf16 in (False, True):
            variants[f"BERT {attn} {'bf16' if bf16 else 'fp32'}"] = bert_step(attn, bf16, random_batches)
    variants["BERT sdpa fp32, length-sorted batches"] = bert_step("sdpa", False, sorted_batches)
    report("fine-tuning step (random batches unless noted)", alternate(variants, rounds, 8),
           lambda s: f"{s * 1e3:.0f} ms")


MLM_VOCAB, MLM_BATCH, MLM_SEQ = 8192, 32, 128


def mlm_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """bench_mlm.py's shapes: random blocks, 15% of positions masked: ``(inputs, labels)``."""
    torch.manual_seed(0)
    blocks = torch.randint(5, MLM_VOCAB, (MLM_BATCH, MLM_SEQ))
    chosen = torch.rand(MLM_BATCH, MLM_SEQ) < 0.15
    labels = torch.where(chosen, blocks, torch.full_like(blocks, -100))
    return torch.where(chosen, torch.full_like(blocks, 4), blocks), labels


def ptcli_mlm_step(bf16: bool) -> Callable[[], None]:
    import ptcli.models.transformer as transformer
    from ptcli.objectives.mlm import MaskedLM

    inputs, labels = mlm_batch()
    torch.manual_seed(0)
    model = MaskedLM(transformer.TransformerEncoder(MLM_VOCAB, dim=256, layers=4, heads=4, ffn_dim=1024,
                                                    max_len=MLM_SEQ), special_ids=[0, 1, 2, 3, 4], mask_id=4,
                     mask_rate=0.15)
    return train_step(model, lambda: model(inputs, labels)["loss"], bf16)


def bench_mlm(rounds: int) -> None:
    from transformers import BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

    vocab, seq = MLM_VOCAB, MLM_SEQ
    inputs, labels = mlm_batch()
    ptcli_step = ptcli_mlm_step

    def hf_step(kind: str, attn: str, bf16: bool) -> Callable[[], None]:
        torch.manual_seed(0)
        if kind == "BERT":
            config = BertConfig(vocab_size=vocab, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=1024, max_position_embeddings=seq, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
            model = BertForMaskedLM._from_config(config, attn_implementation=attn)
        else:
            config = ModernBertConfig(vocab_size=vocab, hidden_size=256, intermediate_size=683, num_hidden_layers=4,
                                      num_attention_heads=4, max_position_embeddings=seq,
                                      layer_types=["full_attention"] * 4, attention_dropout=0.0,
                                      embedding_dropout=0.0, mlp_dropout=0.0, sparse_prediction=True, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
            model = ModernBertForMaskedLM._from_config(config, attn_implementation=attn)
        return train_step(model, lambda: model(input_ids=inputs, labels=labels).loss, bf16)

    tokens = MLM_BATCH * MLM_SEQ
    for bf16 in (False, True):
        name = "bf16" if bf16 else "fp32"
        variants = {f"ptcli {name}": ptcli_step(bf16)}
        for kind in ("BERT", "ModernBERT"):
            for attn in ("sdpa", "eager"):
                variants[f"{kind} {attn} {name}"] = hf_step(kind, attn, bf16)
        report(f"MLM training step, {name}", alternate(variants, rounds, 5), lambda s: f"{tokens / s:,.0f} tok/s")



def bench_rotary(rounds: int) -> None:
    import ptcli.models.transformer as transformer

    ptcli_form = transformer.apply_rotary

    def written_out(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)  # ptcli's form until 2026-12-01; autograd runs its backward
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def addcmul_form(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([torch.addcmul(x1 * cos, x2, sin, value=-1), torch.addcmul(x2 * cos, x1, sin)], dim=-1)

    for bf16 in (False, True):
        step = ptcli_mlm_step(bf16)

        def with_rotary(fn: Callable[..., torch.Tensor], step: Callable[[], None] = step) -> Callable[[], None]:
            def run() -> None:
                transformer.apply_rotary = fn
                try:
                    step()
                finally:
                    transformer.apply_rotary = ptcli_form

            return run

        report(f"ptcli MLM step, {'bf16' if bf16 else 'fp32'}: rotary positions", alternate(
            {"written out (mul, sub, add, cat)": with_rotary(written_out), "addcmul form": with_rotary(addcmul_form),
             "Rotary function (ptcli's)": with_rotary(ptcli_form)}, rounds, 5), lambda s: f"{s * 1e3:.0f} ms")


def bench_matmuls(rounds: int) -> None:
    """The MLM step's weight matmuls alone (4096 tokens, or the 614 masked ones for the vocabulary projection):
    forward, input gradient and weight gradient, with the weight stored as nn.Linear keeps it ([out, in]) and
    transposed ([in, out]); against square GEMMs, the benchmark's "measured matmul rate"."""
    results: dict[str, list[float]] = {}
    flops: dict[str, float] = {}
    for _ in range(rounds):
        for i, o in [(256, 768), (256, 256), (256, 1024), (1024, 256), (256, 8192)]:
            m = 614 if o == 8192 else 4096
            x, g, w = torch.randn(m, i), torch.randn(m, o), torch.randn(o, i)
            v = w.t().contiguous()
            for name, products in ((f"{m} x {i} -> {o}, weight [out, in]", ((x, w.t()), (g, w), (g.t(), x))),
                                   (f"{m} x {i} -> {o}, weight [in, out]", ((x, v), (g, v.t()), (x.t(), g)))):
                results.setdefault(name, []).append(sum(timed(partial(torch.matmul, *ab), 10) for ab in products))
                flops[name] = 3 * 2 * m * i * o
        for n in (512, 1024, 2048):
            name = f"square {n}"
            results.setdefault(name, []).append(timed(partial(torch.matmul, torch.randn(n, n), torch.randn(n, n)), 10))
            flops[name] = 2 * n**3
    report("fp32 matmuls: forward + both backward products (square: one product)", results,
           lambda sec: f"{sec * 1e3:.1f} ms")
    for name, secs in results.items():
        print(f"  {name:40s} {flops[name] / statistics.median(secs) / 1e9:6.0f} GFLOP/s")


def bench_profile(rounds: int) -> None:
    """Where ptcli's MLM step spends its time: torch.profiler over 3 steps, fp32 and bf16 autocast."""
    from torch.profiler import profile

    for bf16 in (False, True):
        step = ptcli_mlm_step(bf16)
        for _ in range(3):
            step()
        with profile() as prof:
            for _ in range(3):
                step()
        print(f"\nptcli MLM step, {'bf16' if bf16 else 'fp32'}: profile of 3 steps (self CPU time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))


def bench_convnet(rounds: int) -> None:
    from ptcli.models.convnet import ConvNet
    from ptcli.objectives.simclr import SimCLR

    images = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def simclr(layout: str) -> Callable[[], None]:
        torch.manual_seed(0)
        model = SimCLR(ConvNet(), proj_dim=128, proj_hidden=512, temperature=0.5)  # ConvNet: channels-last weights
        if layout != "channels-last weights":
            model.encoder.to(memory_format=torch.contiguous_format)
        inputs = images.contiguous(memory_format=torch.channels_last) if layout == "channels-last inputs" else images
        return train_step(model, lambda: model(inputs)["loss"], bf16=False)

    layouts = ("contiguous weights", "channels-last weights", "channels-last inputs")
    results = alternate({name: simclr(name) for name in layouts}, rounds, reps=8)
    report("SimCLR training step (convnet, batch 256 of 8x8), fp32", results, lambda s: f"{256 / s:,.0f} img/s")
    base = results["contiguous weights"]
    ratios = [b / a for a, b in zip(results["channels-last weights"], base, strict=True)]
    print(f"  channels-last weights / contiguous, per round: {', '.join(f'{r:.2f}' for r in ratios)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="attention,finetune,mlm,rotary,matmuls,profile,convnet")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    benches = {"attention": bench_attention, "finetune": bench_finetune, "mlm": bench_mlm, "rotary": bench_rotary,
               "matmuls": bench_matmuls, "profile": bench_profile, "convnet": bench_convnet}
    for name in args.only.split(","):
        benches[name.strip()](args.rounds)


if __name__ == "__main__":
    main()

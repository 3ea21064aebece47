"""Activation checkpointing on CPU: peak memory and step time of one MLM training step (ptcli's encoder and MLM
objective, masked-positions path included), with and without ``trainer.activation_checkpointing``.

    .venv/bin/python scripts/bench_activation_checkpointing.py [--steps N] [--batch B] [--seq T]

Each setting runs in a fresh process (``--child``), so its ``ru_maxrss`` is its own. Two measures of memory:
``peak_alloc_mib``, the most bytes torch's CPU allocator held during one forward + backward (its allocation events,
recorded by the profiler; weights, gradients, activations and temporaries), and ``maxrss_mib``, the process's
peak resident memory (also the interpreter, libraries and allocator slack). ``loss`` must agree between the
two settings (the same step, recomputed).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SIZES = {
    # ptcli pretrain's default encoder (model=transformer) at its default batch (trainer.batch_size=32, 128 tokens)
    "default": {"dim": 128, "layers": 4, "heads": 4, "ffn_dim": 512},
    # BERT-mini width and twice its depth: 8 blocks of 256
    "256x8": {"dim": 256, "layers": 8, "heads": 4, "ffn_dim": 1024},
}


def child(size: str, checkpointing: bool, batch: int, seq: int, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ptcli.models.transformer import TransformerEncoder
    from ptcli.objectives.mlm import MaskedLM

    torch.manual_seed(0)
    vocab = 8192
    encoder = TransformerEncoder(vocab, **SIZES[size], max_len=seq)
    model = MaskedLM(encoder, special_ids=[0, 1, 2, 3, 4], mask_id=4, mask_rate=0.3).train()
    encoder.set_activation_checkpointing(checkpointing)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (batch, seq), generator=gen)
    inputs, labels = model.mask(ids, generator=gen)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        out = model(inputs, labels)
        loss = out["loss"] if "loss" in out else out["loss_sum"] / out["count"]
        loss.backward()
        return loss.item()

    loss = step()  # warm-up: gradients allocated, kernels chosen
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    now = peak = 0
    for e in events:
        now += e.nbytes()
        peak = max(peak, now)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"size": size, **SIZES[size], "batch": batch, "seq": seq, "activation_checkpointing": checkpointing,
            "loss": loss, "peak_alloc_mib": round(peak / 2**20, 1),
            "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "step_s_median": round(sorted(times)[len(times) // 2], 3), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "CHECKPOINTING"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        size, ckpt = args.child
        print(json.dumps(child(size, ckpt == "1", args.batch, args.seq, args.steps)))
        return
    rows = []
    for size in SIZES:
        for ckpt in ("0", "1"):
            out = subprocess.run([sys.executable, __file__, "--child", size, ckpt, "--batch", str(args.batch),
                                  "--seq", str(args.seq), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    print(f"{'model':<8} {'ckpt':<5} {'peak alloc MiB':>15} {'max RSS MiB':>12} {'step s':>7} {'loss':>9}")
    for r in rows:
        print(f"{r['size']:<8} {str(r['activation_checkpointing']):<5} {r['peak_alloc_mib']:>15.1f} "
              f"{r['maxrss_mib']:>12.1f} {r['step_s_median']:>7.3f} {r['loss']:>9.5f}")
    for size in SIZES:
        off, on = (next(r for r in rows if r["size"] == size and r["activation_checkpointing"] == c)
                   for c in (False, True))
        print(f"{size}: peak allocated {off['peak_alloc_mib']:.0f} -> {on['peak_alloc_mib']:.0f} MiB "
              f"({on['peak_alloc_mib'] / off['peak_alloc_mib']:.2f}x), max RSS {off['maxrss_mib']:.0f} -> "
              f"{on['maxrss_mib']:.0f} MiB, step time {on['step_s_median'] / off['step_s_median']:.2f}x, "
              f"loss equal: {abs(on['loss'] - off['loss']) < 1e-5}")


if __name__ == "__main__":
    main()

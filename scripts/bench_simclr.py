"""SimCLR training throughput for the default vision config (model=convnet objective=simclr data=digits).

Reports images/s for the whole training step, the share spent on augmentation (two views, batched on
tensors), and FLOP utilization = counted training FLOPs (torch's FlopCounterMode over forward+backward)
x steps/s / measured fp32 matmul peak.

    python scripts/bench_simclr.py [--steps 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_mlm import matmul_peak_gflops  # same peak measurement for both benchmarks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hydra import compose, initialize_config_dir

    import ptcli.config  # noqa: F401
    from ptcli.builders import build_image_objective
    from ptcli.data.images import load_digits_splits
    from ptcli.launch import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = compose("pretrain", ["model=convnet", "objective=simclr", "data=digits"])
    torch.manual_seed(0)
    model = build_image_objective(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg.optim.lr), fused=True)
    x = load_digits_splits()["train"][0]
    bs = int(cfg.trainer.batch_size)
    gen = torch.Generator().manual_seed(0)

    from torch.utils.flop_counter import FlopCounterMode

    batch = x[:bs]
    with FlopCounterMode(display=False) as counter:
        model(batch, generator=gen)["loss"].backward()
    flops_per_step = counter.get_total_flops()
    opt.zero_grad()

    step_times, aug_times = [], []
    for i in range(args.warmup + args.steps):
        idx = torch.randint(len(x), (bs,), generator=gen)
        batch = x[idx]
        t0 = time.perf_counter()
        with torch.no_grad():
            model.augment(batch, gen)
            model.augment(batch, gen)
        t1 = time.perf_counter()
        loss = model(batch, generator=gen)["loss"]  # includes its own two augmentations
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= args.warmup:
            aug_times.append(t1 - t0)
            step_times.append(t2 - t1)
    peak = matmul_peak_gflops()
    step = statistics.median(step_times)
    aug = statistics.median(aug_times)
    print(f"config: convnet width {cfg.model.width}, stages {cfg.model.stages}, batch {bs} (x2 views), "
          f"8x8 digits; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"images/s (training step, both views counted once per image): {bs / step:,.0f}")
    print(f"step time median {step * 1e3:.1f} ms (spread {(max(step_times) - min(step_times)) * 1e3:.1f} ms)")
    print(f"augmentation (two views): {aug * 1e3:.1f} ms per batch = {aug / step:.0%} of a step")
    print(f"training FLOPs per step: {flops_per_step / 1e9:.2f} GFLOP; fp32 matmul peak {peak:.1f} GFLOP/s; "
          f"FLOP utilization {flops_per_step / step / (peak * 1e9):.1%}")


if __name__ == "__main__":
    main()

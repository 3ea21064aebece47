"""GPU readiness check: a short ptcli pretrain on CUDA (bf16 autocast, TF32, torch.compile, pinned copies),
then tokens/s and model FLOP utilization (MFU). With several GPUs it also runs DDP over all of them.

    bash scripts/gpu_check.sh                  # on a machine with a CUDA GPU
    python scripts/gpu_check.py --device cpu --steps 20 --size tiny   # dry run of the script itself

MFU has the MLM benchmark's one definition (``bench_common.mlm_minimal_forward_flops``): the training FLOPs per
token that the loss needs (the last block's queries, attention and MLP and the vocabulary projection at masked
positions only; forward + backward = 3 x forward; the nominal mask rate 0.15) x tokens/s, over the measured bf16
matmul rate (a dense 8192^2 GEMM; fp32 1024^2 in the --device cpu dry run: "measured matmul rate", not a peak)
and over the data-sheet bf16 dense peak when the GPU is known.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import mlm_minimal_forward_flops  # noqa: E402

SIZES = {  # dim, layers, heads, ffn, batch
    "base": (768, 12, 12, 3072, 128),
    "small": (256, 4, 4, 1024, 64),
    "tiny": (64, 2, 2, 128, 16),
}
SEQ, VOCAB, MASK = 128, 8192, 0.15
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "L40S": 362.0}


def flops_per_token(dim: int, layers: int, ffn: int) -> float:
    """Training FLOPs per token that the MLM loss needs (the one definition: bench_common)."""
    return 3 * sum(mlm_minimal_forward_flops(dim, layers, 4 * ffn * dim, SEQ, VOCAB, MASK))


def measured_matmul_tflops(device: str) -> float:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 8192 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    reps, t = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def run_pretrain(out: Path, args: argparse.Namespace, nproc: int) -> dict:
    dim, layers, heads, ffn, batch = SIZES[args.size]
    overrides = [
        f"trainer.device={args.device}", f"trainer.max_steps={args.steps}", f"trainer.batch_size={batch * nproc}",
        "trainer.log_every=10", f"trainer.eval_every={args.steps}", "trainer.eval_batches=4",
        f"model.dim={dim}", f"model.layers={layers}", f"model.heads={heads}", f"model.ffn_dim={ffn}",
        f"tokenizer.vocab_size={VOCAB}", f"data.block_size={SEQ}", f"hydra.run.dir={out}", "trainer.progress=log",
    ]
    if args.device == "cuda":
        overrides += ["trainer.precision=bf16", "trainer.compile=true"]
    launcher = [sys.executable, "-m", "ptcli"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "ptcli"]
        overrides.append("trainer.strategy=ddp")
    cmd = [*launcher, "pretrain", *overrides]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"pretrain failed with exit code {proc.returncode}")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [e["tokens_per_s"] for e in events if e["split"] == "train" and "tokens_per_s" in e]
    steady = rates[2:] or rates  # the first windows include compilation and warm-up
    manifest = json.loads((out / "run.json").read_text())
    return {"tokens_per_s": statistics.median(steady), "final_loss": events[-1].get("loss"),
            "first_step_s": manifest.get("first_step_s"), "params": manifest["data"]["parameters"],
            "flops_per_token": flops_per_token(dim, layers, ffn)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", default="base", choices=sorted(SIZES))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False). Install a CUDA "
                         "build of torch on a GPU machine, or pass --device cpu for a dry run.")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    gpus = torch.cuda.device_count() if args.device == "cuda" else 1
    rate = measured_matmul_tflops(args.device)
    sheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
    print(f"device: {name} x{gpus}; torch {torch.__version__}; measured {'bf16' if args.device == 'cuda' else 'fp32'} "
          f"matmul rate {rate:.1f} TFLOP/s" + (f"; data-sheet bf16 dense {sheet:.0f} TFLOP/s" if sheet else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in sorted({1, gpus}):
            r = run_pretrain(Path(tmp) / f"run{nproc}", args, nproc)
            achieved = r["flops_per_token"] * r["tokens_per_s"] / 1e12
            line = (f"{nproc} process(es): {r['params'] / 1e6:.1f}M params, {r['tokens_per_s']:,.0f} tokens/s, "
                    f"{achieved:.1f} TFLOP/s, MFU {achieved / (rate * nproc):.1%} of the measured matmul rate")
            if sheet:
                line += f", {achieved / (sheet * nproc):.1%} of the data-sheet peak"
            print(line + f"; first step after {r['first_step_s']} s; final loss {r['final_loss']:.3f}", flush=True)


if __name__ == "__main__":
    main()

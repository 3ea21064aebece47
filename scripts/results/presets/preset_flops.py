"""Training FLOPs per step of each shipped pre-training preset, counted (torch's FlopCounterMode over one
forward and backward of the preset's real model and objective on a batch of 2, scaled to its batch size).
The basis of the arithmetic cost estimates in the GPU presets' comments; nothing here is a timing.

    python scripts/results/presets/preset_flops.py > scripts/results/presets/preset_flops.txt
"""

from __future__ import annotations

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

import ptcli.config  # noqa: F401  (registers the schemas)
import ptcli.rundir  # noqa: F401
from ptcli.build import instantiate
from ptcli.launch import conf_dir

CPU_PEAK = 215e9  # fp32 matmul FLOP/s measured on this machine (README: Performance)


def step_flops(preset: str) -> tuple[float, int, str]:
    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = compose(config_name="pretrain", overrides=[f"experiment={preset}", "data.path=/none"]
                      if "32px" in preset or "96px" in preset else [f"experiment={preset}"])
    batch = cfg.trainer.batch_size
    torch.manual_seed(0)
    if cfg.objective._target_.endswith("MaskedLM"):
        vocab = cfg.tokenizer.vocab_size
        encoder = instantiate(cfg.model, "model", vocab_size=vocab)
        objective = instantiate(cfg.objective, "objective", encoder=encoder, mask_id=4, special_ids=[0, 1, 2, 3, 4])
        ids = torch.randint(5, vocab, (2, cfg.data.block_size))
        labels = torch.full_like(ids, -100)
        where = torch.rand(ids.shape) < cfg.objective.mask_rate
        labels[where] = ids[where]
        args = (ids, labels)
        unit = f"{batch} x {cfg.data.block_size} tokens"
    else:
        encoder = instantiate(cfg.model, "model")
        objective = instantiate(cfg.objective, "objective", encoder=encoder)
        channels = cfg.data.get("channels", 1)
        size = cfg.data.get("size", 8)
        args = (torch.rand(2, channels, size, size),)
        unit = f"{batch} images of {channels}x{size}x{size}, two views each"
    with FlopCounterMode(display=False) as counter:
        objective(*args)["loss"].backward()
    return counter.get_total_flops() * batch / 2, sum(p.numel() for p in encoder.parameters()), unit


if __name__ == "__main__":
    for path in sorted((conf_dir() / "experiment").glob("pretrain_*.yaml")):
        flops, params, unit = step_flops(path.stem)
        steps = None
        with initialize_config_dir(str(conf_dir()), version_base=None):
            over = [f"experiment={path.stem}"] + (["data.path=/none"] if "px" in path.stem else [])
            steps = compose(config_name="pretrain", overrides=over).trainer.max_steps
        print(f"{path.stem}: encoder {params / 1e6:.2f} M params; {flops / 1e9:,.1f} GFLOP per step ({unit}); "
              f"{steps:,} steps = {flops * steps:.2e} FLOP; at this machine's measured {CPU_PEAK / 1e9:.0f} GFLOP/s "
              f"fp32 matmul peak >= {flops * steps / CPU_PEAK / 3600:,.1f} h")

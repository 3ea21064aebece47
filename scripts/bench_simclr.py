"""SimCLR training, side by side: ptcli's batched tensor augmentations vs lightly's SimCLR transforms on a
torchvision-style DataLoader, both training the same model (ptcli's convnet, channels-last weights as ``ConvNet``
sets them, and projection head) with the same NT-Xent loss, for the default vision config (model=convnet
objective=simclr data=digits).

    ptcli    the training images as one tensor; each step draws a batch (ptcli's seeded batches, as its pretrain
             recipe) and ``SimCLR.forward`` makes the two views with ptcli's batched augmentations
             (ptcli/augment.py: random resized crop scale 0.5-1, affine +-10 degrees and 10% shift at p 0.5, color
             jitter brightness/contrast 0.4 at p 0.8, gaussian noise 0.05 at p 0.5), in the main venv.
    lightly  the same images as 8x8 grayscale PIL images in a Dataset, two views per image from
             ``lightly.transforms.SimCLRTransform`` (input_size 8, crop scale 0.5-1, rotation +-10 degrees at
             p 0.5, color jitter brightness/contrast 0.4 at p 0.8; no flips, blur, grayscale or normalization,
             which suit neither 8x8 digits nor the ptcli side), collated by ``torch.utils.data.DataLoader``
             (shuffle, drop_last, ``--peer-workers`` worker processes: 2 on 2 cores, persistent), in a venv of its
             own (.venv-peers, scripts/setup_peers.sh): torchvision from PyPI does not import beside the CPU build
             of torch that ptcli's venv pins, so that side runs a different torch release (both recorded).

Both: fused AdamW (ptcli's ``build_adamw``: decay on matrices only) with the config's lr and weight decay, constant
lr, clipping 1.0, batch 256 images (512 views), fp32, the same seed. Each side is a worker process; the parent
alternates rounds (ptcli, lightly, ptcli, ...), each continuing the same model. Images/s = batch / median time between
consecutive step starts (data, augmentation, forward, backward, optimizer) after ``--warmup`` steps per round. After
the last round both encoders are scored by the same weighted kNN probe (ptcli's, k 20) on the digits test split, in
the parent. The ptcli side also reports the share of a step spent on augmentation and its FLOP utilization (torch's
FlopCounterMode over forward + backward x steps/s / the measured matmul rate).

    bash scripts/setup_peers.sh          # once: .venv-peers with torch, torchvision, lightly
    python scripts/bench_simclr.py --rounds 3 --steps 30
    python scripts/bench_simclr.py --no-peer      # ptcli alone (no .venv-peers needed)
    python scripts/bench_simclr.py --ptcli-in-peer-venv   # control: ptcli's side on the peer's torch release too

Result JSON: scripts/results/bench/simclr.json (``--out``); ``scripts/bench_table.py`` renders the README's table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # ptcli's model code from this checkout, in both venvs
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import (  # noqa: E402
    RESULTS,
    StdioWorker,
    Worker,
    matmul_rate_gflops,
    result_header,
    run_main,
    serve_stdio,
    write_json,
)

CLIP = 1.0
# lightly's SimCLRTransform set as close to ptcli's small-image augmentations as its options allow (docstring).
LIGHTLY_TRANSFORM = {"cj_prob": 0.8, "cj_strength": 1.0, "cj_bright": 0.4, "cj_contrast": 0.4, "cj_sat": 0.0,
                     "cj_hue": 0.0, "min_scale": 0.5, "random_gray_scale": 0.0, "gaussian_blur": 0.0, "vf_prob": 0.0,
                     "hf_prob": 0.0, "rr_prob": 0.5, "rr_degrees": 10.0, "normalize": None}


def build_model(spec: dict[str, Any]):
    """ptcli's convnet + SimCLR head (projection, NT-Xent) from plain numbers, in either venv."""
    import torch

    from ptcli.models.convnet import ConvNet
    from ptcli.objectives.simclr import SimCLR

    torch.manual_seed(spec["seed"])
    encoder = ConvNet(**spec["model"])
    return SimCLR(encoder, proj_dim=spec["proj_dim"], proj_hidden=spec["proj_hidden"],
                  temperature=spec["temperature"])


def optimizer(model, spec: dict[str, Any]):
    from ptcli.optim import build_adamw

    return build_adamw(model, spec["lr"], spec["weight_decay"], spec["betas"], spec["eps"])  # fused


def versions_here() -> dict[str, Any]:
    import torch
    from bench_common import package_version

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": package_version("torchvision"),
            "lightly": package_version("lightly"), "torch_threads": torch.get_num_threads()}


class PtcliSide:
    def __init__(self, spec: dict[str, Any], images_path: str) -> None:
        import torch

        from ptcli.data.text import BlockBatches

        self.spec = spec
        self.model = build_model(spec).train()
        self.opt = optimizer(self.model, spec)
        self.x = torch.load(images_path)
        self.batches = BlockBatches(self.x, spec["batch"], spec["seed"], what="training images")
        self.gen = torch.Generator().manual_seed(spec["seed"])

    def info(self) -> dict[str, Any]:
        return versions_here()

    def train(self, steps: int) -> dict[str, Any]:
        import torch

        model, opt, starts, losses = self.model, self.opt, [], []
        for _ in range(steps):
            starts.append(time.perf_counter())
            loss = model(next(self.batches), generator=self.gen)["loss"]  # both views made inside
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        starts.append(time.perf_counter())
        return {"starts": starts, "losses": losses}

    def details(self, reps: int) -> dict[str, Any]:
        """FLOPs of one training step (FlopCounterMode, forward + backward, on a copy) and the median time of the two
        views' augmentation of one batch."""
        import copy

        import torch
        from torch.utils.flop_counter import FlopCounterMode

        batch = self.x[: self.spec["batch"]]
        model = copy.deepcopy(self.model)
        with FlopCounterMode(display=False) as counter:
            model(batch, generator=torch.Generator().manual_seed(0))["loss"].backward()
        times = []
        with torch.no_grad():
            for _ in range(reps):
                t = time.perf_counter()
                self.model.augment(batch, self.gen)
                self.model.augment(batch, self.gen)
                times.append(time.perf_counter() - t)
        return {"flops_per_step": counter.get_total_flops(), "augment_seconds": statistics.median(times)}

    def save_encoder(self, path: str) -> None:
        import torch

        torch.save(self.model.encoder.state_dict(), path)


class LightlySide:
    """Runs in .venv-peers (torch + torchvision + lightly), behind ``serve_stdio``."""

    def __init__(self, spec: dict[str, Any], images_path: str) -> None:
        import numpy as np
        import torch
        from lightly.transforms import SimCLRTransform
        from PIL import Image

        self.spec = spec
        self.model = build_model(spec).train()
        self.opt = optimizer(self.model, spec)
        transform = SimCLRTransform(input_size=spec["image_size"], **LIGHTLY_TRANSFORM)
        images = [Image.fromarray(a) for a in np.load(images_path)]  # uint8 [8, 8]: mode "L"

        class Images(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(images)

            def __getitem__(self, i: int):
                return transform(images[i])  # a list of two views

        workers = spec["peer_workers"]
        self.loader = torch.utils.data.DataLoader(
            Images(), batch_size=spec["batch"], shuffle=True, drop_last=True, num_workers=workers,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(spec["seed"]))
        self.epochs = self._endless()

    def _endless(self):
        while True:
            yield from self.loader

    def info(self) -> dict[str, Any]:
        return versions_here()

    def train(self, steps: int) -> dict[str, Any]:
        import torch

        from ptcli.objectives.simclr import nt_xent

        model, opt, starts, losses = self.model, self.opt, [], []
        for _ in range(steps):
            starts.append(time.perf_counter())
            views = next(self.epochs)
            z = model.projector(model.encoder(torch.cat(views)))  # as SimCLR.forward, on lightly's views
            loss = nt_xent(*z.chunk(2), model.temperature)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        starts.append(time.perf_counter())
        return {"starts": starts, "losses": losses}

    def save_encoder(self, path: str) -> None:
        import torch

        torch.save(self.model.encoder.state_dict(), path)


def knn_accuracy(spec: dict[str, Any], encoder_path: str, splits: dict) -> float:
    import torch

    from ptcli.probes import probe_accuracy

    encoder = build_model(spec).encoder
    encoder.load_state_dict(torch.load(encoder_path))
    return probe_accuracy("knn", encoder, splits["train"], splits["test"], 10, torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30, help="training steps per round")
    ap.add_argument("--warmup", type=int, default=5, help="steps not timed at the start of each round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer-python", type=Path, default=ROOT / ".venv-peers" / "bin" / "python",
                    help="interpreter of the lightly side (scripts/setup_peers.sh builds it)")
    ap.add_argument("--peer-workers", type=int, default=2, help="DataLoader workers of the lightly side")
    ap.add_argument("--no-peer", action="store_true", help="ptcli's side alone")
    ap.add_argument("--ptcli-in-peer-venv", action="store_true",
                    help="run ptcli's side with --peer-python too: both sides on the same torch release")
    ap.add_argument("--matmul-seconds", type=float, default=0.5, help="length of each timing of the matmul rate")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default scripts/results/bench/simclr.json)")
    args = ap.parse_args()
    if args.steps <= args.warmup + 1:
        raise SystemExit(f"--steps {args.steps} leaves no timed step after --warmup {args.warmup}")
    if (args.ptcli_in_peer_venv or not args.no_peer) and not args.peer_python.exists():
        raise SystemExit(f"the lightly side needs {args.peer_python}: run `bash scripts/setup_peers.sh` (or pass "
                         "--peer-python PATH, or --no-peer for ptcli alone)")
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir

    import ptcli.config  # noqa: F401
    from ptcli.data.images import load_digits_splits
    from ptcli.launch import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = compose("pretrain", ["model=convnet", "objective=simclr", "data=digits"])
    header = result_header("simclr", packages=("torch", "torchvision", "lightly"))
    model_keys = ("in_channels", "width", "stages", "blocks_per_stage")
    spec = {"seed": args.seed, "model": {k: int(cfg.model[k]) for k in model_keys},
            "proj_dim": int(cfg.objective.proj_dim), "proj_hidden": int(cfg.objective.proj_hidden),
            "temperature": float(cfg.objective.temperature), "lr": float(cfg.optim.lr),
            "weight_decay": float(cfg.optim.weight_decay), "betas": [float(b) for b in cfg.optim.betas],
            "eps": float(cfg.optim.eps), "batch": int(cfg.trainer.batch_size), "peer_workers": args.peer_workers}
    splits = load_digits_splits()
    x = splits["train"][0]
    spec["image_size"] = int(x.shape[-1])
    tmp = Path(tempfile.mkdtemp(prefix="bench-simclr-"))
    torch.save(x, tmp / "images.pt")
    np.save(tmp / "images.npy", (x[:, 0] * 255).round().to(torch.uint8).numpy())  # 8-bit grayscale, as PIL reads

    rate_before = matmul_rate_gflops(seconds=args.matmul_seconds)
    workers: dict[str, Any] = {}
    try:
        if args.ptcli_in_peer_venv:  # a control: both sides on the same torch release
            workers["ptcli"] = StdioWorker("ptcli", [str(args.peer_python), __file__, "--serve-ptcli",
                                                     json.dumps(spec), str(tmp / "images.pt")])
        else:
            workers["ptcli"] = Worker("ptcli", PtcliSide, spec, str(tmp / "images.pt"))
        if not args.no_peer:
            # The peer interpreter runs this file (its imports need torch alone) and serves the lightly side.
            workers["lightly"] = StdioWorker("lightly", [str(args.peer_python), __file__, "--serve-lightly",
                                                         json.dumps(spec), str(tmp / "images.npy")])
        info = {name: w.call("info") for name, w in workers.items()}
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in workers}
        for i in range(args.rounds):
            for name, w in workers.items():
                out = w.call("train", args.steps)
                gaps = [b - a for a, b in zip(out["starts"][args.warmup :], out["starts"][args.warmup + 1 :],
                                              strict=False)]
                ips = spec["batch"] / statistics.median(gaps)
                rounds[name].append({"images_per_s": ips, "step_seconds": gaps, "losses": out["losses"]})
                print(f"round {i + 1} {name:>7}: {ips:8,.0f} images/s  loss {statistics.fmean(out['losses'][-5:]):.3f}",
                      flush=True)
        details = workers["ptcli"].call("details", 5)
        for name, w in workers.items():
            w.call("save_encoder", str(tmp / f"{name}.pt"))
    finally:
        for w in workers.values():
            w.close()
    rate_after = matmul_rate_gflops(seconds=args.matmul_seconds)
    rate = max(rate_before["best"], rate_after["best"])

    labels = {"ptcli": "ptcli `SimCLR` (batched tensor augmentations)",
              "lightly": f"lightly {info.get('lightly', {}).get('lightly')} `SimCLRTransform` + DataLoader "
                         f"({args.peer_workers} workers), torch {info.get('lightly', {}).get('torch')}"}
    sides: dict[str, Any] = {}
    for name in workers:
        ips = [r["images_per_s"] for r in rounds[name]]
        sides[name] = {"label": labels[name], **info[name], "rounds": ips, "median": statistics.median(ips),
                       "knn_accuracy": knn_accuracy(spec, str(tmp / f"{name}.pt"), splits), "per_round": rounds[name]}
    step = spec["batch"] / sides["ptcli"]["median"]
    sides["ptcli"].update({"flops_per_step": details["flops_per_step"],
                           "augment_seconds": details["augment_seconds"],
                           "augment_share": details["augment_seconds"] / step,
                           "flop_utilization": details["flops_per_step"] / step / (rate * 1e9)})
    result = {**header, "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                        if k != "out"}, **spec, "lightly_transform": LIGHTLY_TRANSFORM},
              "sides": sides, "matmul_rate_gflops": {"before": rate_before, "after": rate_after, "used": rate}}

    print()
    print(f"config: convnet width {spec['model']['width']}, stages {spec['model']['stages']}, batch {spec['batch']} "
          f"(x2 views), {spec['image_size']}x{spec['image_size']} digits, {args.rounds * args.steps} steps per side")
    for name, side in sides.items():
        print(f"{name:>7}: torch {side['torch']}, {side['torch_threads']} threads; images/s median "
              f"{side['median']:,.0f} (rounds {', '.join(f'{v:,.0f}' for v in side['rounds'])}); "
              f"kNN accuracy {side['knn_accuracy']:.3f}")
    if "lightly" in sides:
        ratios = [a / b for a, b in zip(sides["ptcli"]["rounds"], sides["lightly"]["rounds"], strict=True)]
        result["ratio"] = {"per_round": ratios, "median": statistics.median(ratios)}
        print(f"ratio ptcli/lightly per round: {', '.join(f'{r:.2f}' for r in ratios)}; median "
              f"{statistics.median(ratios):.2f}")
        if sides["ptcli"]["torch"] != sides["lightly"]["torch"]:
            print(f"note: the sides run different torch releases (ptcli {sides['ptcli']['torch']}, lightly "
                  f"{sides['lightly']['torch']}): torchvision from PyPI does not import beside ptcli's CPU torch")
    p = sides["ptcli"]
    print(f"ptcli augmentation (two views): {p['augment_seconds'] * 1e3:.1f} ms per batch = {p['augment_share']:.0%} "
          f"of a step")
    print(f"ptcli training FLOPs per step: {p['flops_per_step'] / 1e9:.2f} GFLOP; measured matmul rate {rate:.1f} "
          f"GFLOP/s; FLOP utilization {p['flop_utilization']:.1%}")
    out_path = args.out or RESULTS / ("simclr.json" if "lightly" in sides else "simclr_ptcli_only.json")
    write_json(out_path, result)
    print(f"raw results: {out_path}")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    if sys.argv[1:2] in (["--serve-lightly"], ["--serve-ptcli"]):
        side = LightlySide if sys.argv[1] == "--serve-lightly" else PtcliSide
        serve_stdio(side, json.loads(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(run_main(main))

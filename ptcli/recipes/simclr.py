"""Recipe: contrastive pre-training of an image encoder (SimCLR), monitored by a kNN probe.

config -> image source (tensors) -> encoder + SimCLR objective -> optimizer/schedule -> trainer ->
run directory. The random-init kNN accuracy is measured first, so every run reports its own head start.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ptcli import distributed as dist
from ptcli.build import instantiate
from ptcli.checkpoint import resume_checkpoint
from ptcli.data.text import SeededBatches
from ptcli.errors import UsageError
from ptcli.objectives.simclr import SimCLR
from ptcli.probes import PROTOCOLS, knn_classify, linear_probe
from ptcli.rundir import RunDir
from ptcli.trainer import BestTracker, Trainer, pick_device, seed_everything

AUG_EVAL_SEED = 4321  # validation views are the same at every evaluation


class ImageBatches(SeededBatches):
    def __init__(self, x: torch.Tensor, batch_size: int, seed: int) -> None:
        super().__init__(len(x), batch_size, seed, what="training images")
        self.x = x

    def __next__(self) -> torch.Tensor:
        return self.x[self.next_indices()]


def load_image_data(cfg: DictConfig, seed: int) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
    source = instantiate(cfg.data, "data", seed=seed)
    if getattr(source, "modality", "text") != "image":
        raise UsageError(f"data={source.describe()} is text; image models need data=digits or data=images.")
    return source.load_images()


@torch.no_grad()
def features(encoder: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    was_training = encoder.training
    encoder.eval()
    out = torch.cat([encoder(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])
    encoder.train(was_training)
    return out


def knn_accuracy(encoder: torch.nn.Module, train: tuple, test: tuple, num_classes: int,
                 device: torch.device) -> float:
    p = PROTOCOLS["knn"]
    pred = knn_classify(features(encoder, train[0], device), train[1], features(encoder, test[0], device),
                        num_classes, k=p["k"], temperature=p["temperature"])
    return float((pred == test[1]).float().mean())


def linear_probe_accuracy(encoder: torch.nn.Module, train: tuple, test: tuple, num_classes: int,
                          device: torch.device) -> float:
    p = PROTOCOLS["linear"]
    pred = linear_probe(features(encoder, train[0], device), train[1], features(encoder, test[0], device),
                        num_classes, epochs=p["epochs"], lr=p["lr"], weight_decay=p["weight_decay"], seed=p["seed"])
    return float((pred == test[1]).float().mean())


def build_simclr(cfg: DictConfig) -> SimCLR:
    encoder = instantiate(cfg.model, "model")
    if getattr(encoder, "modality", None) != "image":
        raise UsageError("objective=simclr needs an image encoder: model=convnet.")
    model = instantiate(cfg.objective, "objective", encoder=encoder)
    if not isinstance(model, SimCLR):
        raise UsageError("model=convnet pre-trains with objective=simclr.")
    return model


def pretrain_simclr(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    if cfg.trainer.strategy != "single":
        # Sharding the batch would shrink each rank's set of negatives; exact DDP SimCLR needs the
        # embeddings all-gathered across ranks, which is not built yet.
        raise UsageError(f"trainer.strategy={cfg.trainer.strategy} is not supported for SimCLR pre-training yet; "
                         "use trainer.strategy=single (one process, CPU or one GPU).")
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    splits, names = load_image_data(cfg, cfg.seed)
    if splits["train"][0].shape[1] != cfg.model.in_channels:
        raise UsageError(f"model.in_channels={cfg.model.in_channels} but the images have "
                         f"{splits['train'][0].shape[1]} channels; set data.channels or model.in_channels.")
    labeled = splits["train"][1] is not None and splits["validation"][1] is not None
    model = build_simclr(cfg).to(device)
    net = dist.parallelize(model, "single", device, cfg.trainer.compile)
    optimizer = instantiate(cfg.optim, "optim", model=model)
    batches = ImageBatches(splits["train"][0], cfg.trainer.batch_size, cfg.seed)
    total = int(cfg.trainer.max_steps or cfg.trainer.max_epochs * batches.batches_per_epoch)
    scheduler = instantiate(cfg.schedule, "schedule", optimizer=optimizer, total_steps=total)
    run.update(data={"train_images": len(splits["train"][0]), "val_images": len(splits["validation"][0]),
                     "image_shape": list(splits["train"][0].shape[1:]), "classes": names,
                     "parameters": sum(p.numel() for p in model.parameters())},
               probe={"knn": PROTOCOLS["knn"]})

    init_metrics: dict[str, float] = {}
    if labeled and not cfg.resume:
        # The head start, measured on this very encoder before any training.
        init_metrics["val/knn_acc_init"] = knn_accuracy(model.encoder, splits["train"], splits["validation"],
                                                        len(names), device)
        run.log(0, "val", knn_acc=init_metrics["val/knn_acc_init"])

    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)

    def step_fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return net(dist.to_device(x, device), generator=aug_gen)

    def eval_fn() -> dict[str, float]:
        g = torch.Generator(device=device).manual_seed(AUG_EVAL_SEED)
        xv = splits["validation"][0]
        n = min(len(xv), 512)
        metrics = {"loss": float(model(xv[:n].to(device), generator=g)["loss"])} if n >= 2 else {}
        if labeled:
            metrics["knn_acc"] = knn_accuracy(model.encoder, splits["train"], splits["validation"], len(names),
                                              device)
        return metrics

    best = BestTracker("val/knn_acc", "max") if labeled else BestTracker("val/loss", "min")
    trainer = Trainer(model, optimizer, scheduler, run, cfg.trainer, device, total, best,
                      extra_state=lambda: {"batches": batches.state_dict(), "aug_rng": aug_gen.get_state()})
    if cfg.resume:
        state = trainer.resume(resume_checkpoint(run))
        batches.load_state_dict(state["batches"])
        aug_gen.set_state(state["aug_rng"])
    metrics = trainer.fit(batches, step_fn, eval_fn)
    return {**init_metrics, **metrics}

"""Recipe: self-supervised pre-training of an image encoder, monitored by a kNN probe.

config -> image source (tensors) -> encoder + image objective -> optimizer/schedule -> trainer -> run directory.
Any objective that declares ``modality = "image"`` fits (SimCLR, BYOL, VICReg, Barlow Twins): it keeps the encoder
as ``.encoder`` and its ``forward(images, generator=...)`` augments the batch itself and returns ``{"loss",
"count"}`` (``ptcli.builders.build_image_objective``). One with a momentum target updates it in ``after_step``,
which the trainer calls after each optimizer step. The random-init kNN accuracy is measured first, so every run
reports its own head start.

``trainer.strategy=ddp`` (objectives that declare ``ddp = True``): every rank draws the same global batch and
passes all of it to the objective, which augments it as one process would and keeps its rows; projections are
gathered across ranks where the loss needs the whole batch, and BatchNorm layers become ``GlobalBatchNorm``
(statistics over the global batch). Evaluation (validation loss, kNN probe) runs whole on every rank, in eval mode
with no collective; rank 0's numbers are the ones logged.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ptcli import distributed as dist
from ptcli.build import component_class, instantiate
from ptcli.builders import build_image_objective, load_image_data
from ptcli.checkpoint import resume_checkpoint
from ptcli.data.text import BlockBatches
from ptcli.errors import UsageError
from ptcli.objectives import global_batch_norm
from ptcli.probes import PROTOCOLS, probe_accuracy
from ptcli.rundir import RunDir
from ptcli.trainer import BestTracker, Trainer, prepare_run, total_steps

AUG_EVAL_SEED = 4321  # validation views are the same at every evaluation


def pretrain_images(cfg: DictConfig, run: RunDir) -> dict[str, float]:
    strategy = cfg.trainer.strategy
    if strategy != "single":
        # Sharding the batch naively would shrink each rank's set of negatives (SimCLR) or the batch its statistics
        # are taken over (VICReg, Barlow Twins, BatchNorm); an objective declares ddp = True once its forward
        # gathers what it needs (ptcli.objectives). MAE does not yet (its masks are drawn per rank's rows).
        cls = component_class(cfg.objective, "objective") if cfg.get("objective") else None
        if strategy != "ddp" or not getattr(cls, "ddp", False):
            name = cls.__name__ if cls is not None else "image"
            raise UsageError(f"trainer.strategy={strategy} is not supported for {name} pre-training yet; use "
                             "trainer.strategy=single (one process, CPU or one GPU)"
                             + (", or ddp with simclr, byol, vicreg or barlow_twins." if strategy == "fsdp" else "."))
    device = prepare_run(cfg)
    splits, names = load_image_data(cfg.data, cfg.seed)
    if splits["train"][0].shape[1] != cfg.model.in_channels:
        raise UsageError(f"model.in_channels={cfg.model.in_channels} but the images have "
                         f"{splits['train'][0].shape[1]} channels; set data.channels or model.in_channels.")
    labeled = splits["train"][1] is not None and splits["validation"][1] is not None
    model = build_image_objective(cfg)
    if strategy == "ddp":
        model = global_batch_norm(model)  # BatchNorm statistics over the global batch, as one process has them
    model.to(device)
    net = dist.parallelize(model, strategy, device, cfg.trainer.compile)
    optimizer = instantiate(cfg.optim, "optim", model=model)
    batches = BlockBatches(splits["train"][0], cfg.trainer.batch_size, cfg.seed, what="training images")
    total = total_steps(cfg.trainer, batches.batches_per_epoch)
    scheduler = instantiate(cfg.schedule, "schedule", optimizer=optimizer, total_steps=total)
    run.update(data={"train_images": len(splits["train"][0]), "val_images": len(splits["validation"][0]),
                     "image_shape": list(splits["train"][0].shape[1:]), "classes": names,
                     "test_images": len(splits["test"][0]),
                     "splits": instantiate(cfg.data, "data", seed=cfg.seed).origins(),  # where each split came from
                     "parameters": sum(p.numel() for p in model.parameters())},
               probe={"knn": PROTOCOLS["knn"]})

    init_metrics: dict[str, float] = {}
    if labeled and not cfg.resume:
        # The head start, measured on this very encoder before any training.
        init_metrics["val/knn_acc_init"] = probe_accuracy("knn", model.encoder, splits["train"],
                                                          splits["validation"], len(names), device)
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
            metrics["knn_acc"] = probe_accuracy("knn", model.encoder, splits["train"], splits["validation"],
                                                len(names), device)
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

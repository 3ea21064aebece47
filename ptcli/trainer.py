"""The training loop shared by every recipe.

A recipe hands over a ``step_fn(batch) -> {"loss": tensor, ...}`` and an ``eval_fn() -> {name: value}``;
the loop owns everything else: accumulation, clipping, schedule, logging, validation, best/last
checkpoints, signals and non-finite losses. One loop a reader can hold in their head.

A model may define ``after_step(step, total_steps)``: the loop calls it after each optimizer step, with the number
of steps done so far (BYOL moves its momentum target there). What it changes belongs in the model's
``state_dict``, and what it depends on besides is the step alone, so checkpoints and resumed runs keep it exactly.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ptcli import distributed as dist
from ptcli.checkpoint import rotate_checkpoints, save_checkpoint
from ptcli.errors import Interrupted, RunFailed, UsageError
from ptcli.progress import Progress
from ptcli.rundir import RunDir


@dataclass
class TrainerConfig:
    """The ``trainer`` section (conf/trainer/*.yaml extend it): run length, batching, evaluation, checkpoints."""

    max_steps: int | None = 1000
    # Used when max_steps is null: whole passes over the training blocks.
    max_epochs: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    clip_grad: float | None = 1.0
    log_every: int = 25
    eval_every: int = 250
    # Validation batches per evaluation; null = the whole validation split.
    eval_batches: int | None = None
    # Also write checkpoints/last every N steps (0 = only at evaluations and at the end).
    checkpoint_every: int = 0
    keep_last: int = 1
    # Early stopping: stop after this many evaluations without improvement (null = never).
    patience: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # fp32 | bf16 | fp16: autocast to that dtype (weights and optimizer stay fp32); fp16 adds a gradient scaler
    # (dynamic loss scaling, its state in checkpoints/last) since fp16 gradients underflow without one.
    precision: str = "fp32"
    # Recompute each transformer block's activations during backward instead of keeping them: less memory
    # (README "Performance": measured on CPU) for about one more forward pass of compute.
    activation_checkpointing: bool = False
    strategy: str = "single"  # single | ddp | fsdp (under torchrun)
    compile: bool = False  # torch.compile the training forward/backward
    num_threads: int | None = None
    progress: str = "auto"  # auto | bar | log | none


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():  # under torchrun: this process's GPU
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"trainer.device={name} but CUDA is not available here; use trainer.device=auto or cpu.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"trainer.device: {exc}") from exc


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), *npst[2:]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_trainer_config(t: Any) -> None:
    """Refuse impossible trainer settings before any data is loaded."""
    for key in ("batch_size", "grad_accum", "log_every", "eval_every"):
        if t[key] is None or t[key] < 1:
            raise UsageError(f"trainer.{key} must be a positive integer, got {t[key]}")
    for key in ("max_steps", "max_epochs", "eval_batches", "patience"):
        if t.get(key) is not None and t[key] < 1:
            raise UsageError(f"trainer.{key} must be a positive integer or null, got {t[key]}")
    if t.max_steps is None and t.max_epochs is None:
        raise UsageError("set trainer.max_steps or trainer.max_epochs")
    if t.checkpoint_every < 0 or t.keep_last < 1:
        raise UsageError("trainer.checkpoint_every must be >= 0 and trainer.keep_last >= 1")
    if t.precision not in PRECISIONS:
        raise UsageError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    if t.precision == "fp16" and t.strategy == "fsdp":
        # torch's ShardedGradScaler hands the fused AdamW a found-inf tensor of the wrong shape (torch 2.13).
        raise UsageError("trainer.precision=fp16 with trainer.strategy=fsdp is not supported (FSDP's gradient "
                         "scaler fails with ptcli's fused AdamW); use trainer.precision=bf16 under FSDP, or "
                         "trainer.strategy=ddp with fp16.")
    dist.check_strategy(t.strategy, t.batch_size)
    if t.clip_grad is not None and t.clip_grad <= 0:
        raise UsageError(f"trainer.clip_grad must be positive or null, got {t.clip_grad}")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_lacks_native(precision: str) -> str | None:
    """On an x86 CPU without native ``precision`` arithmetic, what it lacks (else None). torch then emulates the
    dtype: a 512 x 512 bf16 matmul ran at ~1 GFLOP/s against ~27 for fp32 on an AVX2-only AMD EPYC (README)."""
    import platform

    def has(probe: str) -> bool:  # torch's private CPU feature probes: a torch without one counts as "has it"
        return bool(getattr(torch.cpu, probe, lambda: True)())

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # other architectures: no cheap check, no warning
    if precision == "bf16" and not (has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")):
        return "avx512_bf16 or amx_bf16"
    if precision == "fp16" and not has("_is_amx_fp16_supported"):
        return "amx_fp16"
    return None


def check_precision(t: Any, device: torch.device) -> None:
    """Refuse a ``trainer.precision`` this device cannot compute in (``t``: the ``trainer`` section)."""
    dtype = PRECISIONS[t.precision]
    if dtype is None:
        return
    bf16_native = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype == torch.bfloat16 and not bf16_native:
        raise UsageError(f"trainer.precision=bf16: {torch.cuda.get_device_name(device)} has no bf16 arithmetic; "
                         "use trainer.precision=fp16 (with loss scaling) or fp32.")
    import warnings

    if device.type == "cpu" and (missing := cpu_lacks_native(t.precision)):
        # Allowed (the run is correct, and fp16 on CPU is how GPU settings are tested), but a user who set it for
        # speed must hear that it does the opposite here.
        warnings.warn(f"trainer.precision={t.precision}: this CPU has no native {t.precision} arithmetic (no "
                      f"{missing} in lscpu's flags), so torch emulates it and training runs many times slower "
                      f"than in fp32; use trainer.precision=fp32 on this machine.", stacklevel=2)
    # An autocast that cannot run in this dtype on this device warns and turns itself off: make that an error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            torch.autocast(device.type, dtype=dtype)
            if dtype == torch.float16:
                torch.amp.GradScaler(device.type)
        except (RuntimeError, UserWarning) as exc:
            raise UsageError(f"trainer.precision={t.precision}: torch {torch.__version__} cannot train in "
                             f"{t.precision} on {device.type} ({' '.join(str(exc).split())[:200]}); use "
                             f"trainer.precision=fp32{' or bf16' if t.precision == 'fp16' else ''}.") from None


def configure_torch(t: Any) -> None:
    """Threads and TF32 matmuls for a run (``t``: the ``trainer`` section)."""
    if t.num_threads:
        torch.set_num_threads(int(t.num_threads))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def prepare_run(cfg: Any) -> torch.device:
    """What every training recipe does first: check the trainer section, set torch up, seed, pick the device."""
    check_trainer_config(cfg.trainer)
    configure_torch(cfg.trainer)
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    check_precision(cfg.trainer, device)
    return device


def total_steps(t: Any, batches_per_epoch: int) -> int:
    """Optimizer steps of a run (``t``: the ``trainer`` section): ``max_steps``, else ``max_epochs`` passes over
    the training data, where one optimizer step consumes ``grad_accum`` batches."""
    if t.max_steps is not None:
        if t.max_steps <= 0:
            raise UsageError(f"trainer.max_steps must be positive, got {t.max_steps}")
        return int(t.max_steps)
    if t.max_epochs is None or t.max_epochs <= 0:
        raise UsageError("set trainer.max_steps or trainer.max_epochs to a positive number")
    return max(1, int(t.max_epochs) * max(1, batches_per_epoch) // int(t.grad_accum))


@dataclass
class BestTracker:
    metric: str  # e.g. "val/loss"
    mode: str  # "min" | "max"
    value: float | None = None

    def improved(self, metrics: dict[str, float]) -> bool:
        v = metrics.get(self.metric)
        if v is None or v != v:
            return False
        if self.value is None or (v < self.value if self.mode == "min" else v > self.value):
            self.value = v
            return True
        return False


def enable_activation_checkpointing(model: nn.Module) -> None:
    """``trainer.activation_checkpointing=true``: every submodule that declares it can recompute its blocks in
    backward (``set_activation_checkpointing``: ptcli's transformer, transformers checkpoints) does so."""
    able = [m for m in model.modules() if callable(getattr(m, "set_activation_checkpointing", None))]
    if not able:
        raise UsageError(f"trainer.activation_checkpointing=true: {type(getattr(model, 'encoder', model)).__name__} "
                         "has no transformer blocks to checkpoint (model=transformer and pretrained=hf:... have); "
                         "set trainer.activation_checkpointing=false.")
    for m in able:
        m.set_activation_checkpointing(True)


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, run: RunDir, cfg: Any,
                 device: torch.device, total_steps: int, best: BestTracker, tokens_per_batch: int = 0,
                 extra_state: Callable[[], dict[str, Any]] | None = None,
                 weights_metadata: dict[str, str] | None = None) -> None:
        self.model, self.optimizer, self.scheduler, self.run, self.cfg = model, optimizer, scheduler, run, cfg
        # Saved with the weights of every checkpoint (a LoRA fine-tune's adapter scaling: ptcli.checkpoint).
        self.weights_metadata = weights_metadata
        self.device, self.total_steps, self.best = device, total_steps, best
        self.tokens_per_batch = tokens_per_batch
        self.extra_state = extra_state or (lambda: {})
        self.rank, self.world = dist.rank_world()
        # Test hook: slow each step down so tests can signal or kill a run mid-way.
        self._step_delay = float(os.environ.get("PTCLI_STEP_DELAY", "0") or 0)
        # Test hook: SIGTERM to this process right after this step, so a test interrupts at an exact step without
        # racing a separate process (the signal takes the same path as one from outside).
        self._sigterm_at = int(os.environ.get("PTCLI_SIGTERM_AT_STEP", "0") or 0)
        self.step = 0
        # Train loss accumulated since the last log line; checkpointed so a resume logs the same numbers.
        self.loss_acc = torch.zeros((), device=device)
        self.n_acc = 0
        self.patience_left: int | None = cfg.get("patience")
        self._signal: int | None = None
        check_trainer_config(cfg)
        dtype = PRECISIONS[cfg.precision]
        self.autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        # fp16: dynamic loss scaling (disabled: every scaler call passes straight through). Not under FSDP
        # (check_trainer_config), whose shards would need ranks to agree on skipping a step.
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        if cfg.get("activation_checkpointing"):
            enable_activation_checkpointing(model)
        hook = getattr(model, "after_step", None)
        self._after_step: Callable[[int, int], None] | None = hook if callable(hook) else None

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Resume state; a collective under torchrun (the optimizer may be sharded, RNGs are per rank)."""
        ranks = dist.gather_objects({"rng": rng_state(), "loss": self.loss_acc.detach().cpu()})
        return {
            "step": self.step,
            "optimizer": dist.full_optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "rng": ranks[0]["rng"],
            **({"ranks": ranks} if self.world > 1 else {}),
            "best": {"metric": self.best.metric, "value": self.best.value},
            "patience_left": self.patience_left,  # else a resumed run would stop early at another step
            "log_acc": {"loss": self.loss_acc.detach().cpu(), "n": self.n_acc},
            # fp16: the loss scale and its growth count, else a resumed run would start scaling anew
            **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        dist.load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # Per rank: RNG streams and the share of the train loss accumulated since the last log line.
        ranks = state.get("ranks") or [{"rng": state["rng"], "loss": state["log_acc"]["loss"]}]
        if len(ranks) != self.world:
            raise UsageError(f"the checkpoint was written by {len(ranks)} process(es); resume it with "
                             f"{len(ranks)} (torchrun --nproc_per_node={len(ranks)}), not {self.world}.")
        set_rng_state(ranks[self.rank]["rng"])
        self.best.value = state["best"]["value"]
        if self.patience_left is not None and state.get("patience_left") is not None:  # (older checkpoints lack it)
            self.patience_left = int(state["patience_left"])
        self.loss_acc = ranks[self.rank]["loss"].to(self.device)
        self.n_acc = int(state["log_acc"]["n"])
        if self.scaler.is_enabled() and state.get("scaler"):  # (a run started in fp32/bf16 has none: scale anew)
            self.scaler.load_state_dict(state["scaler"])

    def resume(self, path: Any) -> dict[str, Any]:
        """Restore weights and trainer state from checkpoint ``path``; return the raw state."""
        from ptcli.checkpoint import load_into, load_state, load_weights

        state = load_state(path)
        if dist.is_sharded(self.model):
            dist.load_full_model_state(self.model, load_weights(path))
        else:
            load_into(self.model, path)
        self.load_state_dict(state)
        self.run.truncate_metrics(self.step)
        self.run.manifest["checkpoints"]["last"] = {"path": "checkpoints/last", "step": self.step}
        return state

    def save(self, name: str) -> None:
        """Write checkpoint ``name``; every rank takes part in gathering it, rank 0 alone writes it."""
        meta = {"step": self.step, self.best.metric: self.best.value}
        weights = dist.full_model_state(self.model)
        state = self.state_dict() if name == "last" else None
        self.run.manifest["checkpoints"][name] = {"path": f"checkpoints/{name}", "step": self.step}
        if self.run.writable:
            path = save_checkpoint(self.run.checkpoints, name, weights, state=state, meta=meta,
                                   metadata=self.weights_metadata)
            if name == "last" and self.cfg.keep_last > 1:
                kept = rotate_checkpoints(self.run.checkpoints, path, self.step, self.cfg.keep_last)
                self.run.manifest["checkpoints"]["history"] = kept
        self.run.update(step=self.step)
        dist.barrier()  # no rank reads checkpoints/<name> before it is complete

    # -- signals -----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort at once
        self._signal = signum

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- loop --------------------------------------------------------------------------------------
    def fit(self, batches: Iterator[Any], step_fn: Callable[[Any], dict[str, torch.Tensor]],
            eval_fn: Callable[[], dict[str, float]]) -> dict[str, float]:
        cfg = self.cfg
        progress = Progress(self.total_steps, cfg.progress if self.run.writable else "none", start=self.step,
                            desc=self.run.command)
        final: dict[str, float] = {}
        t_last = time.perf_counter()
        self.model.train()
        try:
            with self._signals():
                while self.step < self.total_steps:
                    for _ in range(cfg.grad_accum):
                        batch = next(batches)
                        with self.autocast:
                            loss = self._share(step_fn(batch))
                        # DDP/FSDP average gradients over ranks; each rank's share sums to the global loss.
                        self.scaler.scale(loss * self.world / cfg.grad_accum).backward()
                        self.loss_acc += loss.detach() / cfg.grad_accum
                    if self.device.type == "cpu" or (self.step + 1) % cfg.log_every == 0:
                        self._check_finite(dist.all_reduce_sum(self.loss_acc))
                    if cfg.clip_grad:
                        self.scaler.unscale_(self.optimizer)  # clip the true gradients (no-op unless fp16)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                    # fp16: skips the step when a gradient overflowed, and adjusts the loss scale.
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self._scheduler_step()
                    self.step += 1
                    if self._after_step is not None:
                        self._after_step(self.step, self.total_steps)
                    self.n_acc += 1
                    if "first_step_s" not in self.run.manifest:
                        from ptcli import PROCESS_START

                        self.run.manifest["first_step_s"] = round(time.time() - PROCESS_START, 3)
                    if self._step_delay:
                        time.sleep(self._step_delay)
                    if self.step == self._sigterm_at:
                        os.kill(os.getpid(), signal.SIGTERM)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        now = time.perf_counter()
                        loss = dist.all_reduce_sum(self.loss_acc).item() / self.n_acc
                        values = {"loss": loss, "lr": self.scheduler.get_last_lr()[0]}
                        if self.scaler.is_enabled():
                            values["loss_scale"] = self.scaler.get_scale()
                        if self.tokens_per_batch:
                            values["tokens_per_s"] = (self.tokens_per_batch * cfg.grad_accum * self.n_acc
                                                      / max(now - t_last, 1e-9))
                        self.run.log(self.step, "train", **values)
                        final["train/loss"] = loss
                        progress.update(self.step, **values)
                        self.loss_acc.zero_()
                        self.n_acc, t_last = 0, time.perf_counter()
                    if self.step % cfg.eval_every == 0 or self.step == self.total_steps:
                        final.update(self._evaluate(eval_fn, progress))
                        t_last = time.perf_counter()
                        if self.patience_left == 0:
                            progress.message(f"early stopping at step {self.step}: {self.best.metric} has not "
                                             f"improved for {cfg.get('patience')} evaluations")
                            break
                    elif cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save("last")
                    if self.world > 1:  # a signal seen by any rank stops all of them at the same step
                        seen = dist.all_reduce_sum(torch.tensor(float(self._signal or 0)))
                        if seen.item() and self._signal is None:
                            self._signal = signal.SIGTERM
                    if self._signal is not None:
                        self.save("last")
                        name = signal.Signals(self._signal).name
                        raise Interrupted(f"{name} at step {self.step}; checkpoint written to "
                                          f"{self.run.checkpoints / 'last'}", 128 + self._signal)
        finally:
            progress.close()
        if self.best.value is not None:
            final[f"best/{self.best.metric}"] = self.best.value
        return final

    def _scheduler_step(self) -> None:
        if not self.scaler.is_enabled():
            self.scheduler.step()
            return
        import warnings

        # The schedule counts steps the scaler skipped (an overflow), as it should; torch would warn about it
        # as if the loop called the two in the wrong order.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()

    def _share(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """This rank's share of the global batch's mean loss. Token-level losses (``loss_sum`` over
        ``count`` targets) are divided by the count over all ranks, so the sum over ranks is exactly the
        loss one process would compute on the whole global batch."""
        if self.world == 1:
            return out["loss"]
        if "count" in out:
            count = dist.all_reduce_sum(torch.as_tensor(out["count"], dtype=torch.float32, device=self.device))
            return out["loss_sum"] / count.clamp(min=1)
        return out["loss"] / self.world

    def _check_finite(self, loss_acc: torch.Tensor) -> None:
        if not torch.isfinite(loss_acc).item():
            last = self.run.manifest["checkpoints"].get("last")
            where = f"last good checkpoint: {self.run.path / last['path']} (step {last['step']})" if last else \
                "no checkpoint was written yet"
            raise RunFailed(f"non-finite loss at step {self.step + 1}; {where}. Lower optim.lr, "
                            "enable trainer.clip_grad, or check the data.")

    def _evaluate(self, eval_fn: Callable[[], dict[str, float]], progress: Progress) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self.autocast:
            metrics = eval_fn()
        # Every rank evaluates; rank 0's numbers decide best/patience everywhere, so the ranks cannot
        # disagree (GPU kernels need not be bitwise deterministic) and then wait on different collectives.
        metrics = dist.broadcast_object(metrics)
        self.model.train()
        self.run.log(self.step, "val", **metrics)
        progress.message(f"[val] step {self.step}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        prefixed = {f"val/{k}": v for k, v in metrics.items()}
        if self.best.improved(prefixed):
            self.save("best")
            if self.patience_left is not None:
                self.patience_left = self.cfg.get("patience")
        elif self.patience_left is not None:
            self.patience_left -= 1
        self.save("last")
        return prefixed

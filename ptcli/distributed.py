"""torch.distributed under torchrun: process group, rank facts, data sharding and model wrapping.

ptcli does not launch processes itself: ``torchrun --nproc_per_node=N -m ptcli pretrain trainer.strategy=ddp``
starts N copies, and this module joins them into one job. Without torchrun everything here is a no-op
(rank 0 of 1), so single-process code paths pay nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside an initialized process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling data and tokenizer caches), then the others (reading them)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def init_from_torchrun() -> None:
    """Join the process group torchrun set up (env:// rendezvous): gloo for CPU tensors, nccl for CUDA ones."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)


def shutdown() -> None:
    """Leave the process group together: a rank that tears down its gloo connections while a peer is still
    using them makes that peer abort (SIGABRT, "connection reset by peer"). The barrier is bounded, so a
    rank that died elsewhere cannot hang the others here."""
    import datetime

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            else:
                dist.barrier()
        except Exception:  # a peer already gone: nothing left to wait for
            pass
        dist.destroy_process_group()


def check_strategy(strategy: str, batch_size: int) -> None:
    from ptcli.errors import UsageError

    rank, world = rank_world()
    if strategy not in ("single", "ddp", "fsdp"):
        raise UsageError(f"trainer.strategy={strategy}: choose single, ddp or fsdp.")
    if strategy == "single" and world > 1:
        raise UsageError(f"launched as {world} processes (torchrun) with trainer.strategy=single: every process "
                         "would train alone. Pass trainer.strategy=ddp (or fsdp).")
    if strategy != "single" and not launched_by_torchrun():
        raise UsageError(f"trainer.strategy={strategy} needs several processes: run "
                         f"`torchrun --nproc_per_node=N -m ptcli ... trainer.strategy={strategy}`.")
    if batch_size % world:
        raise UsageError(f"trainer.batch_size={batch_size} is the global batch and must divide evenly over the "
                         f"{world} processes; use a multiple of {world}.")


def to_device(t: Any, device: Any) -> Any:
    """Host batch -> device: through pinned memory with a non-blocking copy on CUDA, as is on CPU."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def shard_rows(batch: Any) -> Any:
    """This rank's contiguous share of the rows of a global batch (a tensor or a tuple of tensors).

    Every rank draws the same global batch (same seeded sampler, same masks) and keeps its rows, so N
    processes see exactly the data of one process with the same global batch.
    """
    rank, world = rank_world()
    if world == 1:
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_rows(t) for t in batch)
    per = batch.shape[0] // world
    return batch[rank * per : (rank + 1) * per]


def parallelize(model: Any, strategy: str, device: Any, compile: bool = False) -> Any:
    """The module to run forward/backward through: ``DistributedDataParallel`` for ddp; for fsdp the model
    itself, sharded in place with FSDP2 ``fully_shard`` (each transformer block, then the root), which must
    happen before the optimizer is built; ``torch.compile``d when asked. ``model`` stays the handle for
    evaluation and checkpoints."""
    import torch

    net = _wrap(model, strategy, device)
    return torch.compile(net) if compile else net


def _wrap(model: Any, strategy: str, device: Any) -> Any:
    import torch

    if strategy != "single":
        # Weights are initialized alike on every rank (same seed); dropout noise must differ per rank.
        torch.manual_seed(torch.initial_seed() + rank_world()[0])
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        encoder = getattr(model, "encoder", model)
        for block in getattr(encoder, "blocks", []):
            fully_shard(block)
        fully_shard(model)
    return model


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_model_state(model: Any) -> dict[str, Any]:
    """The whole model's weights, on CPU (a collective under FSDP: every rank must call it)."""
    if not is_sharded(model):
        return {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state(model: Any, tensors: dict[str, Any]) -> None:
    if not is_sharded(model):
        model.load_state_dict(tensors)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def all_reduce_sum(t: Any) -> Any:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself outside a process group)."""
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def gather_objects(obj: Any) -> list[Any]:
    import torch.distributed as dist

    world = rank_world()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def main_goes_first() -> None:
    """Start of a block rank 0 runs before the others (data and tokenizer caches); end it with ``main_done``."""
    if not is_main():
        barrier()


def main_done() -> None:
    if is_main():
        barrier()

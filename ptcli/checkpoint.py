"""Atomic checkpoints: weights as safetensors, resume state via ``torch.save`` (loaded weights_only).

A checkpoint is written into a temporary directory, flushed, marked COMPLETE, then renamed over the
old one, so a process killed at any instant leaves the previous checkpoint loadable.

A LoRA fine-tune (``finetune.lora``) saves peft's layout -- ``<layer>.base_layer.weight`` and the adapters
``<layer>.lora_A/lora_B.<name>.weight`` -- with the adapters' scaling in the safetensors metadata, so resume
restores the adapters as trained, and a model without adapters (evaluate, embed, export) loads the merged
weights ``W + scaling * B @ A``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptcli.errors import UsageError

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
MARKER = "COMPLETE"
# safetensors metadata key: alpha / r of the LoRA adapters in the file (ptcli.models.lora).
ADAPTER_SCALING = "lora_scaling"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(root: Path, name: str, model: nn.Module | dict[str, torch.Tensor],
                    state: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write checkpoint ``name``: the weights (with safetensors ``metadata``), the resume ``state``, the marker
    holding ``meta``."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors, seen = {}, set()
    for k, v in (model if isinstance(model, dict) else model.state_dict()).items():
        v = v.detach().to("cpu").contiguous()
        # Tied weights (a transformers MLM decoder and its embedding) share storage, which safetensors
        # refuses: the second name gets a copy, and loading ties nothing apart.
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        tensors[k] = v.clone() if ptr is not None and ptr in seen else v
        seen.add(ptr)
    save_file(tensors, str(tmp / WEIGHTS), metadata={**(metadata or {}), "format": "pt", "producer": "ptcli"})
    if state is not None:
        torch.save(state, tmp / STATE)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    (tmp / MARKER).write_text(json.dumps(meta or {}) + "\n")
    _fsync_dir(tmp)
    if os.environ.get("PTCLI_CHECKPOINT_PAUSE"):  # test hook: widen the window for a kill mid-write
        import time

        time.sleep(float(os.environ["PTCLI_CHECKPOINT_PAUSE"]))
    final, old = root / name, root / f".old-{name}-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    return final


def rotate_checkpoints(root: Path, last: Path, step: int, keep_last: int) -> list[str]:
    """Keep the ``keep_last`` most recent ``last`` checkpoints as ``step-NNNNNNNN`` (``last`` counts as one).

    Only ``step-*`` directories are ever deleted: ``best`` and ``last`` are separate directories and
    cannot be rotated away (transformers#15089, #35070).
    """
    snapshot = root / f"step-{step:08d}"
    if not snapshot.exists():
        tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(last, tmp, copy_function=_link_or_copy)
        os.replace(tmp, snapshot)
        _fsync_dir(root)
    history = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in history[: max(0, len(history) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return [p.name for p in sorted(root.glob("step-*"))]


def _link_or_copy(src: str, dst: str) -> None:
    # Snapshots share bytes with `last` until `last` is replaced (its files are new inodes each save).
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def recover(root: Path, name: str) -> None:
    """A kill between the two renames of ``save_checkpoint`` leaves ``.old-<name>-*`` but no ``<name>``:
    put the old, complete checkpoint back."""
    final = root / name
    if is_complete(final):
        return
    for old in sorted(root.glob(f".old-{name}-*")):
        if is_complete(old):
            if final.exists():
                shutil.rmtree(final)
            os.replace(old, final)
            _fsync_dir(root)
            return


def clean_checkpoint_leftovers(root: Path) -> list[str]:
    """After a kill: put back any checkpoint that survives only as ``.old-<name>-<pid>``, then delete the
    ``.tmp-*`` and ``.old-*`` folders of interrupted saves and snapshots. Only for the run's lock holder
    (``ptcli.rundir``): another live writer's temp folder would look the same. Returns the removed names."""
    for old in list(root.glob(".old-*")):
        name = old.name[len(".old-"):].rsplit("-", 1)[0]
        if name:
            recover(root, name)
    removed = []
    for p in sorted([*root.glob(".tmp-*"), *root.glob(".old-*")]):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    if removed:
        _fsync_dir(root)
    return removed


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / WEIGHTS).is_file()


def load_weights(path: Path, merge_adapters: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors as saved; ``merge_adapters``: LoRA adapters merged into the weights they adapt."""
    from safetensors import SafetensorError, safe_open

    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"no weights at '{file}': the checkpoint is missing or incomplete.")
    try:
        with safe_open(str(file), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UsageError(f"cannot read '{file}': {exc}. The file is truncated or corrupted; "
                         "use another checkpoint (checkpoints/best or checkpoints/last).") from exc
    if merge_adapters and has_adapters(tensors):
        if ADAPTER_SCALING not in metadata:
            raise UsageError(f"'{file}' holds LoRA adapters but not their scaling ({ADAPTER_SCALING} in its "
                             "metadata); it was not written by ptcli and cannot be merged.")
        tensors = merge_lora(tensors, float(metadata[ADAPTER_SCALING]), str(file))
    return tensors


def has_adapters(tensors: dict[str, torch.Tensor]) -> bool:
    return any(".lora_A." in k for k in tensors)


def merge_lora(tensors: dict[str, torch.Tensor], scaling: float, where: str = "") -> dict[str, torch.Tensor]:
    """peft's LoRA layout -> plain weights: ``<layer>.weight = base_layer.weight + scaling * lora_B @ lora_A``
    (linear layers), every other tensor under its name without ``base_layer``."""
    out = {k.replace(".base_layer.", ".", 1): v for k, v in tensors.items() if ".lora_A." not in k and
           ".lora_B." not in k}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        layer, adapter = key.split(".lora_A.", 1)
        b, w = tensors.get(f"{layer}.lora_B.{adapter}"), out.get(f"{layer}.weight")
        if b is None or w is None or a.ndim != 2 or b.shape[1] != a.shape[0] or w.shape != (b.shape[0], a.shape[1]):
            raise UsageError(f"'{where}': the LoRA adapter of {layer} does not fit its weight; the checkpoint is "
                             "damaged or not a ptcli LoRA fine-tune.")
        out[f"{layer}.weight"] = (w.double() + scaling * (b.double() @ a.double())).to(w.dtype)
    return out


def load_into(model: nn.Module, path: Path, strict: bool = True, prefix: str = "") -> list[str]:
    """Load a checkpoint's weights (only keys under ``prefix``, stripped); return model keys it lacked. A LoRA
    checkpoint loads as saved into a model with adapters (resume), merged into one without (evaluate, embed)."""
    tensors = load_weights(path, merge_adapters=not has_adapters(model.state_dict()))
    if prefix:
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        result = model.load_state_dict(tensors, strict=strict)
    except RuntimeError as exc:
        raise UsageError(f"weights in '{path}' do not fit the model: {str(exc).splitlines()[0]} "
                         "(architecture or vocabulary mismatch).") from exc
    return list(result.missing_keys)


def trained_checkpoint(run: Any, what: str = "") -> Path:
    """The checkpoint a finished run is used by (evaluate, fine-tune, embed, export): ``best``, else ``last`` (a
    run stopped before its first evaluation). ``what`` names the use in the error, e.g. ``pretrained=RUN``."""
    for name in ("best", "last"):
        if is_complete(run.checkpoints / name):
            return run.checkpoints / name
    raise UsageError(f"{what or run.path}: no complete checkpoint in {run.checkpoints} (checkpoints/best or "
                     f"checkpoints/last; run status: {run.manifest.get('status')}).")


def pretrained_checkpoint(cfg: Any, run: Any, source: Any) -> Path | None:
    """The checkpoint of the pretrain run ``source`` whose encoder a fine-tune ``run`` starts from
    (``init=pretrained``, not resumed), recorded in ``run.json``; None: the encoder keeps its initial weights."""
    if source is None or cfg.init != "pretrained" or cfg.resume:
        return None
    ckpt = trained_checkpoint(source, f"pretrained={source.path}")
    run.update(pretrained={"run": str(source.path), "checkpoint": str(ckpt)})
    return ckpt


def resume_checkpoint(run: Any) -> Path:
    """``checkpoints/last`` of a run being resumed, which must be complete."""
    path = run.checkpoints / "last"
    recover(run.checkpoints, "last")
    if not is_complete(path):
        raise UsageError(f"resume={run.path}: no complete checkpoint at {path}; the run stopped before its first "
                         "checkpoint. Start a new run (lower trainer.checkpoint_every to checkpoint sooner).")
    return path


def load_state(path: Path) -> dict[str, Any]:
    file = path / STATE
    if not file.is_file():
        raise UsageError(f"'{path}' has no {STATE}: it cannot be resumed.")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"cannot read '{file}': {exc}") from exc

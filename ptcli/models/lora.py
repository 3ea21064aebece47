"""LoRA fine-tuning (Hu et al. 2021, arXiv:2106.09685) through peft: ``finetune.lora.r=8``.

The encoder's own weights stay frozen; peft adds a trainable low-rank update ``scaling * B @ A`` (``scaling =
alpha / r``, ``B`` zero at the start, so step 0 is the pre-trained model) beside each targeted linear layer,
and the classification head trains in full. Any text encoder works: ptcli's transformer (its fused ``qkv``
and ``proj`` by default) and transformers checkpoints (``pretrained=hf:...``, peft's per-architecture default:
BERT and RoBERTa ``query``, ``value``). Checkpoints keep the adapters apart (resume restores them as trained);
evaluate, embed and ``ptcli export`` load them merged into the base weights (``ptcli.checkpoint.merge_lora``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ptcli.checkpoint import ADAPTER_SCALING
from ptcli.errors import UsageError


@dataclass
class LoraConfig:
    """``finetune.lora``: the adapters' rank ``r`` (0 = no adapters: every weight is fine-tuned), ``alpha`` (the
    update is scaled by alpha / r), ``dropout`` on the adapters' input, and ``target_modules``: names (or name
    suffixes) of the encoder's ``nn.Linear`` layers to adapt; null = the encoder's default (``lora_targets``)."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None


def lora_settings(cfg: Any) -> Any | None:
    """The run's ``finetune.lora`` section when adapters are on (``r`` > 0), checked; None for full fine-tuning."""
    lora = (cfg.get("finetune") or {}).get("lora")
    if not lora or not lora.get("r"):
        return None
    if lora.r < 0:
        raise UsageError(f"finetune.lora.r must be >= 0 (0 = full fine-tuning), got {lora.r}")
    if lora.alpha <= 0:
        raise UsageError(f"finetune.lora.alpha must be positive, got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        raise UsageError(f"finetune.lora.dropout must be in [0, 1), got {lora.dropout}")
    if cfg.get("freeze_encoder"):
        raise UsageError(f"finetune.lora.r={lora.r} with freeze_encoder=true: a linear probe trains no adapters. "
                         "Choose one: finetune.lora.r=0, or freeze_encoder=false.")
    return lora


def apply_lora(model: nn.Module, lora: Any) -> dict[str, str]:
    """Add adapters to ``model.encoder`` (after its pre-trained weights are loaded) and freeze everything else in
    the encoder; ``model.head`` stays trainable. Returns the metadata each checkpoint's weights must carry."""
    try:
        import peft
    except ImportError as exc:
        raise UsageError("finetune.lora needs peft: pip install 'ptcli[hf]'") from exc
    encoder = model.encoder
    targets = list(lora.target_modules) if lora.target_modules else getattr(encoder, "lora_targets", None)
    if not targets:
        raise UsageError(f"finetune.lora: {type(encoder).__name__} declares no default LoRA targets; name its "
                         "linear layers with finetune.lora.target_modules=[NAME,...].")
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in encoder.named_modules() if isinstance(m, nn.Linear)})
    config = peft.LoraConfig(r=int(lora.r), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
                             target_modules=targets, bias="none")
    try:
        peft.inject_adapter_in_model(config, encoder)
    except ValueError as exc:  # no module matched
        raise UsageError(f"finetune.lora.target_modules={targets}: no such layer in {type(encoder).__name__} "
                         f"({' '.join(str(exc).split())[:160]}). Its linear layers: {', '.join(linear)}.") from None
    adapted = [m for m in encoder.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    other = sorted({type(m.get_base_layer()).__name__ for m in adapted} - {"Linear"})
    if other:  # export merges linear layers only
        raise UsageError(f"finetune.lora.target_modules={targets} matches {', '.join(other)} layers; LoRA here "
                         f"adapts linear layers: {', '.join(linear)}.")
    for name, p in encoder.named_parameters():
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return {ADAPTER_SCALING: repr(float(lora.alpha) / int(lora.r)), "lora_targets": ",".join(targets)}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"total": ..., "trainable": ...}`` parameters (adapters included in both)."""
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}

"""A Hugging Face transformers encoder (BERT, RoBERTa, ... via ``AutoModel``) behind ptcli's encoder API.

``pretrained=hf:NAME_OR_DIR`` fine-tunes such a checkpoint with its own tokenizer. Weights load through
``from_pretrained`` (safetensors where the checkpoint has them) and never with ``trust_remote_code``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn

from ptcli.errors import UsageError


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise UsageError("hf:... checkpoints need transformers: pip install 'ptcli[hf]'") from exc
    from ptcli.errors import debug_enabled

    if not debug_enabled():
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()  # load reports list the MLM head ptcli drops on purpose
    return transformers


def _hint(exc: BaseException) -> str:
    # Blaming the network for a typo'd name (or a broken local directory) sends the user the wrong way.
    from ptcli.errors import load_hint, offline

    if offline() or load_hint(exc, "").startswith("The hub could not"):
        return "Offline, pass a local directory saved with save_pretrained."
    return "Check the name, or pass a local directory saved with save_pretrained."


def load_hf_tokenizer(path: str):
    """The checkpoint's fast tokenizer, as a ``tokenizers.Tokenizer`` (what the rest of ptcli uses)."""
    transformers = _transformers()
    try:
        hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"pretrained=hf:{path}: cannot load its tokenizer ({str(exc).splitlines()[0][:200]}). " +
                         _hint(exc)) from exc
    if not getattr(hf_tok, "is_fast", False):
        raise UsageError(f"pretrained=hf:{path}: ptcli needs a fast tokenizer (tokenizer.json).")
    return hf_tok.backend_tokenizer


def load_hf_config(path: str):
    try:
        return _transformers().AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"hf:{path}: cannot load its config ({str(exc).splitlines()[0][:200]}). " +
                         _hint(exc)) from exc


def position_limit(config: Any) -> int:
    """Positions a transformers checkpoint can encode (RoBERTa's embeddings reserve two for the padding offset)."""
    limit = int(getattr(config, "max_position_embeddings", 512))
    return limit - 2 if config.model_type == "roberta" else limit


def _base_kwargs(config: Any) -> dict[str, Any]:
    # BERT/RoBERTa build a [CLS] pooler that ptcli never uses (it pools itself): leave it out.
    return {"add_pooling_layer": False} if config.model_type in ("bert", "roberta") else {}


@dataclass
class HFEncoderConfig:
    """``pretrained=hf:...`` / ``init_from=hf:...``: written by the recipe, never chosen with ``model=``."""

    _target_: str = "ptcli.models.hf.HFEncoder"
    path: str = MISSING
    max_len: int = 128
    random_init: bool = False
    # init_from=hf:NAME: the checkpoint the run started from (``path`` is the run's own hf_model/ copy).
    source: str | None = None


class HFEncoder(nn.Module):
    modality = "text"
    produces = "token_states"  # [B, T, dim] hidden states
    finetune_head = "sequence_classifier"
    hf_export = "native"  # ptcli export writes the checkpoint's own architecture

    def __init__(self, path: str, max_len: int = HFEncoderConfig.max_len,
                 random_init: bool = HFEncoderConfig.random_init, model: nn.Module | None = None,
                 **_: Any) -> None:
        super().__init__()
        transformers = _transformers()
        config = load_hf_config(path) if model is None else model.config
        if model is None:
            try:
                model = (transformers.AutoModel.from_config(config, **_base_kwargs(config)) if random_init
                         else transformers.AutoModel.from_pretrained(path, **_base_kwargs(config)))
            except (OSError, ValueError) as exc:
                raise UsageError(f"pretrained=hf:{path}: cannot load the model ({str(exc).splitlines()[0][:200]}). " +
                                 _hint(exc)) from exc
        self.model = model
        self.dim = int(config.hidden_size)
        self.max_len = min(max_len, position_limit(config))
        self.vocab_size = int(config.vocab_size)

    @classmethod
    def with_mlm_head(cls, path: str, max_len: int = HFEncoderConfig.max_len,
                      random_init: bool = HFEncoderConfig.random_init, **_: Any) -> tuple[HFEncoder, nn.Module]:
        """The encoder and the checkpoint's own MLM head (continued pre-training, ``init_from=hf:``)."""
        backbone, head, _ = load_hf_masked_lm(path, random_init=random_init)
        return cls(path, max_len, model=backbone), head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """transformers' own gradient checkpointing of its layers, non-reentrant like ptcli's (DDP, FSDP2)."""
        # transformers 5 renamed gradient_checkpointing_* (deprecated, removed in v6) to activation_checkpointing_*.
        new_api = hasattr(self.model, "activation_checkpointing_enable")
        if not enabled:
            (self.model.activation_checkpointing_disable if new_api else self.model.gradient_checkpointing_disable)()
            return
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise UsageError(f"trainer.activation_checkpointing=true: {self.model.config.model_type} checkpoints "
                             "do not support it in transformers; set trainer.activation_checkpointing=false.")
        if new_api:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def lora_targets(self) -> list[str] | None:
        """finetune.lora.target_modules=null: peft's default modules for this architecture (BERT: query, value)."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        targets = DEFAULTS.get(self.model.config.model_type)
        return list(targets) if targets else None


def load_hf_masked_lm(path: str, random_init: bool = False) -> tuple[nn.Module, nn.Module, str]:
    """``AutoModelForMaskedLM`` split into its backbone and its (single) MLM head module, with the head's name.

    BERT (``cls``), RoBERTa and ESM (``lm_head``) have one head module; architectures whose head is spread
    over several modules (DistilBERT, ELECTRA) are refused rather than half-loaded.
    """
    transformers = _transformers()
    config = load_hf_config(path)
    try:
        mlm = (transformers.AutoModelForMaskedLM.from_config(config) if random_init
               else transformers.AutoModelForMaskedLM.from_pretrained(path))
    except (OSError, ValueError) as exc:
        raise UsageError(f"init_from=hf:{path}: cannot load a masked-LM model ({str(exc).splitlines()[0][:200]}). " +
                         _hint(exc)) from exc
    prefix = mlm.base_model_prefix
    heads = [name for name, _ in mlm.named_children() if name != prefix]
    if len(heads) != 1:
        raise UsageError(f"init_from=hf:{path}: {config.model_type} splits its MLM head over {heads}; "
                         "continued pre-training supports BERT-, RoBERTa- and ESM-family checkpoints.")
    return getattr(mlm, prefix), getattr(mlm, heads[0]), heads[0]

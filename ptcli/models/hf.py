"""A Hugging Face transformers encoder (BERT, RoBERTa, ... via ``AutoModel``) behind ptcli's encoder API.

``pretrained=hf:NAME_OR_DIR`` fine-tunes such a checkpoint with its own tokenizer. Weights load through
``from_pretrained`` (safetensors where the checkpoint has them) and never with ``trust_remote_code``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptcli.errors import UsageError


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise UsageError("pretrained=hf:... needs transformers: pip install 'ptcli[hf]'") from exc
    return transformers


def load_hf_tokenizer(path: str):
    """The checkpoint's fast tokenizer, as a ``tokenizers.Tokenizer`` (what the rest of ptcli uses)."""
    transformers = _transformers()
    try:
        hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"pretrained=hf:{path}: cannot load its tokenizer ({str(exc).splitlines()[0][:200]}). "
                         "Offline, pass a local directory saved with save_pretrained.") from exc
    if not getattr(hf_tok, "is_fast", False):
        raise UsageError(f"pretrained=hf:{path}: ptcli needs a fast tokenizer (tokenizer.json).")
    return hf_tok.backend_tokenizer


class HFEncoder(nn.Module):
    modality = "text"

    def __init__(self, path: str, max_len: int = 128, random_init: bool = False, **_: Any) -> None:
        super().__init__()
        transformers = _transformers()
        try:
            config = transformers.AutoConfig.from_pretrained(path)
            self.model = (transformers.AutoModel.from_config(config) if random_init
                          else transformers.AutoModel.from_pretrained(path, add_pooling_layer=False)
                          if config.model_type in ("bert", "roberta") else transformers.AutoModel.from_pretrained(path))
        except (OSError, ValueError) as exc:
            raise UsageError(f"pretrained=hf:{path}: cannot load the model ({str(exc).splitlines()[0][:200]}). "
                             "Offline, pass a local directory saved with save_pretrained.") from exc
        self.dim = int(config.hidden_size)
        limit = int(getattr(config, "max_position_embeddings", max_len))
        self.max_len = min(max_len, limit - 2 if config.model_type == "roberta" else limit)
        self.vocab_size = int(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

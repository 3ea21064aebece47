"""``ptcli export RUN --format hf``: a Hugging Face transformers directory for a text run.

ptcli's encoder (pre-LN, rotary positions, GELU MLP, final LayerNorm, MLM head dense-GELU-LayerNorm with a
tied decoder and bias) is exactly ESM-2's architecture, so an MLM pretrain run exports as
``EsmForMaskedLM`` (``token_dropout=False``, ``emb_layer_norm_before=False``; ptcli's absent biases are
zeros) and a fine-tune run with ``pooling=cls`` as ``EsmForSequenceClassification``, whose head (dense,
tanh, linear on the first token) is ptcli's. Runs built on a transformers checkpoint (``init_from=hf:``,
``pretrained=hf:``) export as their own architecture. The tokenizer is written as a
``PreTrainedTokenizerFast``, so ``AutoModelFor*`` and ``AutoTokenizer`` load the directory offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ptcli.errors import UsageError


def esm_state_dict(weights: dict[str, torch.Tensor], template: dict[str, torch.Tensor],
                   layers: int) -> dict[str, torch.Tensor]:
    """Map ptcli weights (``MaskedLM`` or ``SequenceClassifier``) onto ESM keys; anything ptcli lacks
    (biases) is zero. Buffers of the template (the rotary ``inv_freq``) are kept as they are.
    """
    # ESM's contact-prediction head has no ptcli counterpart and is unused by the MLM: zeros.
    out = {k: torch.zeros_like(v) if k.endswith("bias") or "contact_head" in k else v.clone()
           for k, v in template.items()}
    w = {k.removeprefix("encoder."): v for k, v in weights.items()}
    out["esm.embeddings.word_embeddings.weight"] = w["tok_emb.weight"]
    for i in range(layers):
        src, dst = f"blocks.{i}.", f"esm.encoder.layer.{i}."
        q, k, v = w[src + "attn.qkv.weight"].chunk(3, dim=0)
        out[dst + "attention.self.query.weight"] = q
        out[dst + "attention.self.key.weight"] = k
        out[dst + "attention.self.value.weight"] = v
        out[dst + "attention.output.dense.weight"] = w[src + "attn.proj.weight"]
        out[dst + "attention.LayerNorm.weight"] = w[src + "ln1.weight"]
        out[dst + "LayerNorm.weight"] = w[src + "ln2.weight"]
        out[dst + "intermediate.dense.weight"] = w[src + "mlp.0.weight"]
        out[dst + "output.dense.weight"] = w[src + "mlp.2.weight"]
        for name, key in (("attn.qkv.bias", None), ("ln1.bias", dst + "attention.LayerNorm.bias"),
                          ("ln2.bias", dst + "LayerNorm.bias"), ("mlp.0.bias", dst + "intermediate.dense.bias"),
                          ("mlp.2.bias", dst + "output.dense.bias"),
                          ("attn.proj.bias", dst + "attention.output.dense.bias")):
            if src + name in w:  # models trained with model.bias=true
                if key is None:
                    qb, kb, vb = w[src + name].chunk(3)
                    out[dst + "attention.self.query.bias"], out[dst + "attention.self.key.bias"] = qb, kb
                    out[dst + "attention.self.value.bias"] = vb
                else:
                    out[key] = w[src + name]
    out["esm.encoder.emb_layer_norm_after.weight"] = w["ln_f.weight"]
    if "ln_f.bias" in w:
        out["esm.encoder.emb_layer_norm_after.bias"] = w["ln_f.bias"]
    if "lm_head.dense.weight" in template:
        out["lm_head.dense.weight"], out["lm_head.dense.bias"] = w["transform.0.weight"], w["transform.0.bias"]
        out["lm_head.layer_norm.weight"] = w["transform.2.weight"]
        out["lm_head.layer_norm.bias"] = w["transform.2.bias"]
        out["lm_head.decoder.weight"] = w["tok_emb.weight"]
        out["lm_head.bias"] = w["decoder_bias"]
    if "classifier.dense.weight" in template:
        for src, dst in (("head.1", "classifier.dense"), ("head.4", "classifier.out_proj")):
            out[f"{dst}.weight"], out[f"{dst}.bias"] = w[f"{src}.weight"], w[f"{src}.bias"]
    unmapped = [k for k in template if k.endswith("weight") and torch.equal(out[k], template[k])
                and "contact_head" not in k]
    if unmapped:
        raise UsageError(f"export: the checkpoint has no weights for {unmapped[:5]} of EsmForMaskedLM/"
                         "EsmForSequenceClassification; this run's architecture cannot be exported as --format hf.")
    return out


def _check_out(out: Path, force: bool) -> None:
    """An existing ``--out`` may hold someone's work: write there only when asked to."""
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        kind = "a directory" if out.is_dir() else "a file"
        raise UsageError(f"--out: '{out}' already exists ({kind}). Pass a new path, or add --force to write "
                         f"into it{' (the file is replaced by the directory)' if kind == 'a file' else ''}.")


def export_hf(run_dir: Path, out: Path, force: bool = False) -> Path:
    from ptcli.build import component_class, run_config
    from ptcli.checkpoint import load_weights, trained_checkpoint
    from ptcli.models.hf import _transformers
    from ptcli.rundir import RunDir

    _check_out(out, force)  # before anything is loaded: a refusal costs nothing
    run = RunDir.load(run_dir)
    cfg = run_config(run)  # trusted packages: PTCLI_TRUSTED_PACKAGES
    command = run.manifest.get("command")
    model_cls = component_class(cfg.model, "model")
    how = getattr(model_cls, "hf_export", None)  # declared by the model: "esm" | "native" | None
    if command not in ("pretrain", "finetune") or how is None:
        kind = getattr(model_cls, "modality", "")
        raise UsageError(f"{run.path}: export --format hf takes a text pretrain (MLM) or fine-tune run; this is "
                         f"{'an image' if kind == 'image' else 'a'} {command} run.")
    if command == "finetune" and cfg.get("pooling", "mean") != "cls":
        raise UsageError(f"{run.path}: this fine-tune run mean-pools its tokens, which no transformers "
                         "*ForSequenceClassification computes. Fine-tune with pooling=cls to export it, or export "
                         "the pretrain run (ptcli embed gives mean-pooled embeddings of this one).")
    ckpt = trained_checkpoint(run)
    weights = load_weights(ckpt, merge_adapters=True)  # a LoRA fine-tune exports with its adapters merged
    transformers = _transformers()
    try:
        if how == "native":
            model, tok = _native(transformers, cfg, run, weights, command)
        else:
            model, tok = _esm(transformers, cfg, run, weights, command)
    except KeyError as exc:  # a checkpoint without a weight the architecture needs: the run, not ptcli, is off
        raise UsageError(f"{ckpt}: the checkpoint lacks weight {exc} that its config ({run.path / 'config.yaml'}) "
                         "implies; it cannot be exported.") from exc
    if force and (out.is_symlink() or out.exists()) and not out.is_dir():
        out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _labels(run: Any) -> dict[str, Any]:
    from ptcli.data.labels import LabelMap

    names = LabelMap.load(run.path / "labels.json").names
    return {"num_labels": len(names), "id2label": dict(enumerate(map(str, names))),
            "label2id": {str(n): i for i, n in enumerate(names)}}


def _esm(transformers: Any, cfg: Any, run: Any, weights: dict[str, torch.Tensor], command: str) -> tuple[Any, Any]:
    from ptcli.tokenizer import load_tokenizer, special_ids

    m = cfg.model
    if m.get("position", "rotary") != "rotary":
        raise UsageError("export --format hf supports model.position=rotary (the default) only.")
    tok = load_tokenizer(run.tokenizer_dir)
    ids = special_ids(tok)
    config = transformers.EsmConfig(
        vocab_size=tok.get_vocab_size(), mask_token_id=ids["mask"], pad_token_id=ids["pad"], hidden_size=m.dim,
        num_hidden_layers=m.layers, num_attention_heads=m.heads, intermediate_size=m.ffn_dim,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=m.max_len,
        layer_norm_eps=1e-5, position_embedding_type="rotary", emb_layer_norm_before=False, token_dropout=False,
        tie_word_embeddings=True, rope_theta=10000.0, **(_labels(run) if command == "finetune" else {}),
    )
    cls = transformers.EsmForSequenceClassification if command == "finetune" else transformers.EsmForMaskedLM
    model = cls(config)
    try:
        model.load_state_dict(esm_state_dict(weights, model.state_dict(), m.layers))
    except RuntimeError as exc:  # shapes that disagree with the run's own config: a damaged or edited run
        raise UsageError(f"{run.path}: its checkpoint does not match its config.yaml (model.*): "
                         f"{' '.join(str(exc).split())[:300]}") from exc
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=m.max_len)
    return model, hf_tok


# Where ptcli's cls head (head.1: dense before tanh, head.4: output layer) lives in each family's classifier.
NATIVE_CLS_HEAD = {"bert": ("bert.pooler.dense", "classifier"),
                   "roberta": ("classifier.dense", "classifier.out_proj")}


def _native(transformers: Any, cfg: Any, run: Any, weights: dict[str, torch.Tensor], command: str) -> tuple[Any, Any]:
    """Runs on a transformers backbone: the checkpoint's own ``*ForMaskedLM`` / ``*ForSequenceClassification``."""
    source = Path(cfg.model.path)
    if command == "finetune" and cfg.pretrained and str(cfg.pretrained).startswith("hf:"):
        source = Path(str(cfg.pretrained)[3:])  # fine-tuned straight from a transformers checkpoint
    try:
        config = transformers.AutoConfig.from_pretrained(source)
        tok = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{run.path}: cannot read the transformers config/tokenizer at {source} ({exc}).") from exc
    if command == "finetune":
        if config.model_type not in NATIVE_CLS_HEAD:
            raise UsageError(f"export of a fine-tuned {config.model_type} run is not supported (bert, roberta are).")
        for key, value in _labels(run).items():
            setattr(config, key, value)
        model = transformers.AutoModelForSequenceClassification.from_config(config)
        dense, out_proj = NATIVE_CLS_HEAD[config.model_type]
        rename = {"head.1.": f"{dense}.", "head.4.": f"{out_proj}."}
    else:
        model = transformers.AutoModelForMaskedLM.from_config(config)
        heads = [n for n, _ in model.named_children() if n != model.base_model_prefix]
        rename = {"head.": f"{heads[0]}."}
    rename["encoder.model."] = f"{model.base_model_prefix}."
    mapped, stray = {}, []
    for key, value in weights.items():
        src = next((p for p in rename if key.startswith(p)), None)
        if src is None:
            stray.append(key)
            continue
        mapped[rename[src] + key[len(src):]] = value
    try:
        result = model.load_state_dict(mapped, strict=False)
    except RuntimeError as exc:  # shape mismatches: the checkpoint is not of the architecture its config names
        raise UsageError(f"{run.path}: the checkpoint does not fit {type(model).__name__} from {source}: "
                         f"{' '.join(str(exc).split())[:300]}") from exc
    tied = {k for k in result.missing_keys if "decoder" in k or k.endswith("lm_head.bias")}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys or stray:
        raise UsageError(f"{run.path}: the checkpoint does not fit {type(model).__name__} from {source}: missing "
                         f"{missing[:5]}, unexpected {(stray + result.unexpected_keys)[:5]}; it cannot be exported.")
    return model, tok

"""``ptcli export RUN --format hf``: a Hugging Face transformers directory for an MLM pretrain run.

ptcli's encoder (pre-LN, rotary positions, GELU MLP, final LayerNorm, MLM head dense-GELU-LayerNorm with a
tied decoder and bias) is exactly ESM-2's architecture, so the export is an ``EsmForMaskedLM`` with
``token_dropout=False`` and ``emb_layer_norm_before=False``; ptcli's absent biases are exported as zeros.
The tokenizer is written as a ``PreTrainedTokenizerFast`` (``tokenizer.json`` + config), so
``AutoModelForMaskedLM`` and ``AutoTokenizer`` load the directory offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ptcli.errors import UsageError


def esm_state_dict(weights: dict[str, torch.Tensor], template: dict[str, torch.Tensor],
                   layers: int) -> dict[str, torch.Tensor]:
    """Map ptcli ``MaskedLM`` weights onto ``EsmForMaskedLM`` keys; anything ptcli lacks (biases) is zero.

    Buffers of the template (the rotary ``inv_freq``) are kept as they are.
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
    out["lm_head.dense.weight"], out["lm_head.dense.bias"] = w["transform.0.weight"], w["transform.0.bias"]
    out["lm_head.layer_norm.weight"], out["lm_head.layer_norm.bias"] = w["transform.2.weight"], w["transform.2.bias"]
    out["lm_head.decoder.weight"] = w["tok_emb.weight"]
    out["lm_head.bias"] = w["decoder_bias"]
    unmapped = [k for k in template if k.endswith("weight") and out[k] is not None
                and torch.equal(out[k], template[k]) and "contact_head" not in k]
    if unmapped:
        raise RuntimeError(f"export: weights not mapped from the ptcli checkpoint: {unmapped[:5]}")
    return out


def export_hf(run_dir: Path, out: Path) -> Path:
    try:
        from transformers import EsmConfig, EsmForMaskedLM, PreTrainedTokenizerFast
    except ImportError as exc:
        raise UsageError("export --format hf needs transformers: pip install 'ptcli[hf]'") from exc
    from ptcli.build import check_targets
    from ptcli.checkpoint import is_complete, load_weights
    from ptcli.recipes.pretrain import is_image_run
    from ptcli.rundir import RunDir
    from ptcli.tokenizer import load_tokenizer, special_ids

    run = RunDir.load(run_dir)
    cfg = run.config()
    check_targets(cfg, str(run.path / "config.yaml"))
    if run.manifest.get("command") != "pretrain" or is_image_run(cfg):
        raise UsageError(f"{run.path}: export --format hf takes a text (MLM) pretrain run; this is a "
                         f"{run.manifest.get('command')} run. Fine-tune runs are not exported yet: their mean-pooled "
                         "head has no exact transformers counterpart.")
    m = cfg.model
    if m.get("position", "rotary") != "rotary":
        raise UsageError("export --format hf supports model.position=rotary (the default) only.")
    ckpt = next((run.checkpoints / n for n in ("best", "last") if is_complete(run.checkpoints / n)), None)
    if ckpt is None:
        raise UsageError(f"{run.path}: no complete checkpoint to export.")
    tok = load_tokenizer(run.tokenizer_dir)
    ids = special_ids(tok)
    config = EsmConfig(
        vocab_size=tok.get_vocab_size(), mask_token_id=ids["mask"], pad_token_id=ids["pad"], hidden_size=m.dim,
        num_hidden_layers=m.layers, num_attention_heads=m.heads, intermediate_size=m.ffn_dim,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=m.max_len,
        layer_norm_eps=1e-5, position_embedding_type="rotary", emb_layer_norm_before=False, token_dropout=False,
        tie_word_embeddings=True, rope_theta=10000.0,
    )
    model = EsmForMaskedLM(config)
    model.load_state_dict(esm_state_dict(load_weights(ckpt), model.state_dict(), m.layers))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                     sep_token="[SEP]", mask_token="[MASK]", model_max_length=m.max_len)
    hf_tok.save_pretrained(out)
    return out

"""``ptcli export RUN --format hf``: a Hugging Face transformers directory for a text run.

ptcli's encoder (pre-LN, rotary positions, GELU MLP, final LayerNorm, MLM head dense-GELU-LayerNorm with a
tied decoder and bias) is exactly ESM-2's architecture, so an MLM pretrain run exports as
``EsmForMaskedLM`` (``token_dropout=False``, ``emb_layer_norm_before`` = ``model.embed_norm``; ptcli's absent
biases are zeros) and a fine-tune run with ``pooling=cls`` as ``EsmForSequenceClassification``, whose head (dense,
tanh, linear on the first token) is ptcli's. Runs built on a transformers checkpoint (``init_from=hf:``,
``pretrained=hf:``) export as their own architecture. The tokenizer is written as a
``PreTrainedTokenizerFast``, so ``AutoModelFor*`` and ``AutoTokenizer`` load the directory offline.

The directory also gets a ``README.md`` model card (``model_card``): what the model is, what it was trained on
and for how long, its final metrics, the head-start table when ``ptcli headstart`` measured one, how to load it,
and the run's config, with the YAML front matter the Hugging Face hub reads.
"""

from __future__ import annotations

import json
import math
import shlex
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
    if "emb_norm.weight" in w:  # model.embed_norm=true: ESM's emb_layer_norm_before
        out["esm.embeddings.layer_norm.weight"] = w["emb_norm.weight"]
        if "emb_norm.bias" in w:
            out["esm.embeddings.layer_norm.bias"] = w["emb_norm.bias"]
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
    if command == "pretrain" and cfg.get("objective") is not None and \
            getattr(component_class(cfg.objective, "objective"), "hf_export", "mlm") is None:
        raise UsageError(f"{run.path}: export --format hf writes a pretrain run as a *ForMaskedLM, and objective="
                         f"{cfg.objective._target_} trains no masked-LM head on the encoder it keeps (ELECTRA's is a "
                         "replaced-token detector). Fine-tune it (finetune pretrained=RUN pooling=cls) and export "
                         "that run, or use ptcli embed for its embeddings.")
    cloze = command == "finetune" and cfg.get("head") == "cloze"
    if command == "finetune" and not cloze and cfg.get("pooling", "mean") != "cls":
        raise UsageError(f"{run.path}: this fine-tune run mean-pools its tokens, which no transformers "
                         "*ForSequenceClassification computes. Fine-tune with pooling=cls to export it, or export "
                         "the pretrain run (ptcli embed gives mean-pooled embeddings of this one).")
    ckpt = trained_checkpoint(run)
    weights = load_weights(ckpt, merge_adapters=True)  # a LoRA fine-tune exports with its adapters merged
    as_command = command
    if cloze:  # a cloze classifier is a masked LM read through its pattern and verbalizer: export the masked LM
        weights, as_command = {k[len("mlm."):]: v for k, v in weights.items() if k.startswith("mlm.")}, "pretrain"
    transformers = _transformers()
    try:
        if how == "native":
            model, tok = _native(transformers, cfg, run, weights, as_command)
        else:
            model, tok = _esm(transformers, cfg, run, weights, as_command)
    except KeyError as exc:  # a checkpoint without a weight the architecture needs: the run, not ptcli, is off
        raise UsageError(f"{ckpt}: the checkpoint lacks weight {exc} that its config ({run.path / 'config.yaml'}) "
                         "implies; it cannot be exported.") from exc
    if force and (out.is_symlink() or out.exists()) and not out.is_dir():
        out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if cloze:  # how to classify with it, in its config.json (and the model card)
        model.config.ptcli_cloze = cloze_spec(run, cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / CARD).write_text(model_card(run, cfg, model, str(out)), encoding="utf-8")
    return out


def cloze_spec(run: Any, cfg: Any) -> dict[str, Any]:
    """A head=cloze run's patterns and verbalizer, in label order: what turns the masked LM into its classifier."""
    import json

    from ptcli.models.cloze import VERBALIZER

    verbalizer = json.loads((run.path / VERBALIZER).read_text(encoding="utf-8"))
    return {"patterns": list(cfg.finetune.cloze.patterns), "labels": _label_names(run),
            "verbalizer": {str(k): list(v) for k, v in verbalizer.items()}}


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
        layer_norm_eps=1e-5, position_embedding_type="rotary",
        emb_layer_norm_before=bool(m.get("embed_norm", False)), token_dropout=False,
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


# ------------------------------------------------------------------------------------------------ model card
CARD = "README.md"
HEADSTART = "headstart.json"  # written by `ptcli headstart` into the pre-trained run (README: The head start)
EXAMPLE_TEXT = "Return the number of items in the container."


def model_card(run: Any, cfg: Any, model: Any, path: str) -> str:
    """The ``README.md`` of an exported directory: hub front matter, then what a reader needs to trust and use
    the model, every figure read from the run directory (``run.json``, ``config.yaml``, ``headstart.json``)."""
    import yaml

    from ptcli.build import component_class

    manifest = run.manifest
    command = manifest.get("command")
    cloze = getattr(model.config, "ptcli_cloze", None)  # a head=cloze fine-tune: a masked LM + pattern/verbalizer
    finetune = command == "finetune" and cloze is None
    model_type = getattr(model.config, "model_type", "")
    front: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification" if finetune else "fill-mask",
        "tags": [t for t in ("ptcli", model_type, "text-classification" if finetune else "masked-language-modeling",
                             "cloze" if cloze else "") if t],
    }
    base = _hub_id(cfg.get("init_from")) or (_hub_id(cfg.get("pretrained")) if finetune else None)
    if base:
        front["base_model"] = base
    # A source that names hub data declares it (``downloads``); its name is then a hub id for the card's front matter.
    dataset = _hub_id(f"hf:{cfg.data.get('name')}") if getattr(component_class(cfg.data, "data"), "downloads",
                                                                False) else None
    if dataset:
        front["datasets"] = [dataset]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {Path(path).name}", ""]
    kind = "text classifier" if finetune else ("cloze text classifier: a masked language model" if cloze
                                               else "masked language model")
    lines += [f"A {kind} ({type(model).__name__}) trained with ptcli, exported from the run directory "
              f"`{run.path}` ({command}, {manifest.get('status')}, {manifest.get('step')} steps).", ""]
    if cloze:
        lines += ["It classifies by filling the [MASK] slot of a pattern around the text: a label's score is the "
                  "mean of its words' logits at the slot (`config.ptcli_cloze`; averaged over the patterns).", "",
                  "| pattern |", "|---|", *[f"| `{p}` |" for p in cloze["patterns"]], "",
                  "| label | words |", "|---|---|",
                  *[f"| {name} | {', '.join(cloze['verbalizer'][name])} |" for name in cloze["labels"]], ""]
    lines += _architecture(cfg, model)
    lines += _training(run, cfg, manifest)
    lines += _results(manifest)
    lines += _headstart(run, cfg)
    lines += _how_to_load_cloze(path) if cloze else _how_to_load(path, finetune, model_type)
    lines += _config_section(run, manifest)
    return "\n".join(lines).rstrip() + "\n"


def _hub_id(value: Any) -> str | None:
    """``hf:org/name`` as a hub id for the front matter; a local directory is no hub id."""
    if not value or not str(value).startswith("hf:"):
        return None
    name = str(value)[3:]
    if name in ("", "None") or name.startswith((".", "/", "~")) or Path(name).exists():
        return None
    return name


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _architecture(cfg: Any, model: Any) -> list[str]:
    m = cfg.model
    lines = ["## Model", "", f"- transformers class: `{type(model).__name__}` (`model_type: "
             f"{getattr(model.config, 'model_type', '?')}`), {model.num_parameters():,} parameters"]
    target = str(m.get("_target_", ""))
    if "HFEncoder" in target:
        lines.append(f"- backbone: the transformers checkpoint `{m.get('path')}` (its own architecture and tokenizer)")
    else:
        fields = ", ".join(f"{k}={m.get(k)}" for k in ("dim", "layers", "heads", "ffn_dim", "max_len", "position",
                                                       "dropout", "bias") if m.get(k) is not None)
        lines.append(f"- ptcli `{target.rsplit('.', 1)[-1]}`: {fields}. Pre-LN transformer encoder, rotary positions, "
                     "GELU MLP, final LayerNorm: ESM-2's architecture, which is why it loads as an ESM model")
        tok = cfg.get("tokenizer") or {}
        lines.append(f"- tokenizer: {tok.get('kind', '?')}, {_fmt(getattr(model.config, 'vocab_size', None))} tokens"
                     f"{', lowercased' if tok.get('lowercase') else ''} (trained by ptcli on the training text)")
    return [*lines, ""]


def _data_line(data: Any) -> str:
    from ptcli.build import component_class

    try:
        doc = (component_class(data, "data").__doc__ or "").strip().splitlines()[0].replace("``", "`").rstrip(".")
    except Exception:  # a card is still worth writing when a user's data package is gone
        doc = ""
    target = str(data.get("_target_", "?")).rsplit(".", 1)[-1]
    keys = ", ".join(f"`data.{k}={data.get(k)}`" for k in ("name", "config", "train", "validation", "test", "path",
                                                          "text_column", "label_column") if data.get(k))
    return f"`{target}`" + (f": {doc}" if doc else "") + (f" ({keys})" if keys else "")


def _objective_line(obj: Any) -> str:
    target = str(obj.get("_target_", "?")).rsplit(".", 1)[-1]
    if target == "MaskedLM":
        rate, tok, rnd = obj.get("mask_rate"), obj.get("mask_token_share"), obj.get("random_token_share")
        return (f"masked language modeling: {rate:.0%} of the tokens{' (whole words)' if obj.get('whole_word') else ''}"
                f" are selected; of those {tok:.0%} become `[MASK]`, {rnd:.0%} a random token, the rest stay; the "
                "loss is the cross-entropy of the selected tokens")
    params = ", ".join(f"{k}={v}" for k, v in obj.items() if not str(k).startswith("_"))
    return f"`{target}`" + (f" ({params})" if params else "")


def _pretraining_lines(cfg: Any, manifest: dict) -> list[str]:
    t = cfg.trainer
    step = int(manifest.get("step") or 0)
    per_step = int(t.batch_size) * int(t.get("grad_accum", 1))
    lines = [f"- data: {_data_line(cfg.data)}"]
    if cfg.get("objective"):
        lines.append(f"- objective: {_objective_line(cfg.objective)}")
    if cfg.get("init_from"):
        lines.append(f"- initialized from: `{cfg.init_from}` (continued pre-training)")
    block = cfg.data.get("block_size")
    seen = f"{step:,} optimizer steps of {per_step} sequences"
    if block:
        seen += f" of {block} tokens: **{step * per_step * int(block):,} tokens seen**"
    if t.get("strategy", "single") != "single":
        seen += f" per process (trainer.strategy={t.strategy}: multiply by the number of processes)"
    lines.append(f"- training: {seen}; AdamW lr {cfg.optim.get('lr')}, {cfg.schedule.get('decay')} schedule with "
                 f"{cfg.schedule.get('warmup_steps')} warmup steps, seed {cfg.get('seed')}")
    data = manifest.get("data") or {}
    if data.get("train_blocks"):
        lines.append(f"- corpus: {data['train_blocks']:,} training blocks, {_fmt(data.get('val_blocks'))} "
                     "validation blocks")
    lines += _wall_time(manifest)
    return lines


def _wall_time(manifest: dict) -> list[str]:
    if manifest.get("duration_s") is None:
        return []
    sessions = len(manifest.get("resumed") or []) + 1  # run.json times the last session only
    last = f", the last of {sessions} sessions (the run was resumed)" if sessions > 1 else ""
    return [f"- wall time: {manifest['duration_s']:.0f} s{last} ({_versions(manifest)})"]


def _versions(manifest: dict) -> str:
    v = manifest.get("versions") or {}
    return ", ".join(f"{k} {v[k]}" for k in ("ptcli", "torch") if k in v)


def _training(run: Any, cfg: Any, manifest: dict) -> list[str]:
    lines = ["## Training", ""]
    if manifest.get("command") != "finetune":
        return [*lines, "### Pre-training", "", *_pretraining_lines(cfg, manifest), ""]
    lines += ["### Pre-training", ""]
    pre = str(cfg.get("pretrained") or "")
    if cfg.get("init") == "random":
        lines.append("None: this classifier was trained from random init (`init=random`), the baseline a "
                     f"pre-trained encoder is compared with (architecture and tokenizer of `{pre}`).")
    elif pre.startswith("hf:"):
        lines.append(f"The transformers checkpoint `{pre[3:]}`: see its own model card.")
    else:
        source = _pretrained_run(pre)
        if isinstance(source, str):
            lines.append(f"The ptcli run `{pre}`; {source}")
        else:
            lines += [f"The ptcli run `{pre}`:", "", *_pretraining_lines(*source)]
    t, data = cfg.trainer, manifest.get("data") or {}
    step = int(manifest.get("step") or 0)
    budget = cfg.data.get("labels_per_class")
    lora = (cfg.get("finetune") or {}).get("lora") or {}
    how = ("linear probe (encoder frozen)" if cfg.get("freeze_encoder") else
           f"LoRA adapters (r={lora.get('r')}, alpha={lora.get('alpha')}), merged into the exported weights"
           if lora.get("r") else "all weights")
    lines += ["", "### Fine-tuning", "", f"- data: {_data_line(cfg.data)}",
              f"- labels: {'all' if budget is None else f'{budget} per class'}; {_fmt(data.get('train_examples'))} "
              f"training, {_fmt(data.get('val_examples'))} validation, {_fmt(data.get('test_examples'))} test "
              f"examples, {_fmt(data.get('classes'))} classes",
              f"- trained: {how}; head on the first token (`pooling=cls`); {step:,} optimizer steps of "
              f"{int(t.batch_size) * int(t.get('grad_accum', 1))} examples; AdamW lr {cfg.optim.get('lr')}, seed "
              f"{cfg.get('seed')}; the best checkpoint on validation is the one exported and scored below"]
    names = _label_names(run)
    if names:
        shown = ", ".join(f"`{n}`" for n in names[:30])
        lines.append(f"- classes (`id2label`): {shown}{f' and {len(names) - 30} more' if len(names) > 30 else ''}")
    lines += _wall_time(manifest)
    return [*lines, ""]


def _label_names(run: Any) -> list[str]:
    try:
        return [str(n) for n in _labels(run)["id2label"].values()]
    except Exception:  # export itself read labels.json already; a card is no place to fail over it
        return []


def _pretrained_run(path: str) -> tuple[Any, dict] | str:
    """The pre-training run of a fine-tune, as (config, manifest), or a sentence saying why it is not at hand."""
    from ptcli.build import run_config
    from ptcli.errors import PtcliError
    from ptcli.rundir import RunDir

    if not path or not (Path(path) / "run.json").is_file():
        return "it is not on this machine, so its figures are not repeated here."
    try:
        source = RunDir.load(path)
        return run_config(source), source.manifest
    except PtcliError as exc:
        return f"its record could not be read ({exc})."


METRIC_NOTES = {"mlm_acc": "masked-token accuracy", "ppl": "perplexity of the masked tokens",
                "gen_mlm_acc": "ELECTRA generator's masked-token accuracy",
                "disc_acc": "ELECTRA discriminator's replaced-token detection accuracy",
                "accuracy": "accuracy", "macro_f1": "macro-averaged F1", "loss": "cross-entropy loss"}


def _results(manifest: dict) -> list[str]:
    metrics = manifest.get("metrics") or {}
    if not metrics:
        return ["## Results", "", "The run recorded no final metrics.", ""]
    order = {"test": 0, "val": 1, "best": 2, "train": 3}
    lines = ["## Results", "", "Final metrics of the run (`run.json`; `val` = held-out validation split, `test` = "
             "held-out test split, `best/...` = the value that chose the exported checkpoint):", "",
             "| metric | value | what |", "|---|---|---|"]
    for key in sorted(metrics, key=lambda k: (order.get(k.split("/")[0], 9), k)):
        lines.append(f"| `{key}` | {_fmt(metrics[key])} | {METRIC_NOTES.get(key.rsplit('/', 1)[-1], '')} |")
    return [*lines, ""]


def _headstart(run: Any, cfg: Any) -> list[str]:
    """The head-start table of ``ptcli headstart`` (this run's, or for a fine-tune its pre-trained run's)."""
    candidates = [Path(run.path) / HEADSTART]
    pre = str(cfg.get("pretrained") or "")
    if run.manifest.get("command") == "finetune" and pre and not pre.startswith("hf:"):
        candidates.append(Path(pre) / HEADSTART)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return []
    lines = ["## Head start", ""]
    try:
        return [*lines, *_headstart_table(json.loads(found.read_text(encoding="utf-8"))), ""]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [*lines, f"`{found}` exists but could not be read ({type(exc).__name__}: {exc}); no table. "
                "Run `ptcli headstart` again to measure it.", ""]


def _headstart_table(h: dict) -> list[str]:
    rows = h["rows"]
    if not isinstance(rows, list) or not rows:
        raise ValueError("it has no rows")
    metric = str(h.get("metric", "test/accuracy"))

    def cell(s: dict) -> str:
        std = f" ± {float(s['std']):.3f}" if s.get("std") is not None else ""
        return f"{float(s['mean']):.3f}{std} (n={int(s.get('n', 0))})"

    table = ["| labels per class | pre-trained | random init | head start (points) | labels random init needs |",
             "|---|---|---|---|---|"]
    for r in rows:
        budget = r["labels_per_class"]
        p, q = r["pretrained"], r["random"]
        head = r.get("head_start")
        head = float(p["mean"]) - float(q["mean"]) if head is None else float(head)
        mult = r.get("label_multiplier")
        note = r.get("multiplier_note") or (f"{float(mult):.1f}x" if mult is not None else "")
        table.append(f"| {'all' if budget is None else int(budget)} | {cell(p)} | {cell(q)} | {100 * head:+.1f} | "
                     f"{note} |")
    seeds = h.get("seeds")
    intro = (f"`ptcli headstart` fine-tuned this encoder and the same architecture from random init on "
             f"`data={h.get('data', '?')}` at each label budget{f', seeds {seeds}' if seeds else ''}; `{metric}`, "
             "mean ± std over seeds. The head start is the pre-trained mean minus the random-init mean; the last "
             "column is how many more labels random init needs to match the pre-trained model (interpolated on "
             "the log-budget curve).")
    return [intro, "", *table]


def _how_to_load(path: str, finetune: bool, model_type: str) -> list[str]:
    # Run as written by tests/test_model_card.py: every line here must work on the exported directory.
    no_pooler = ", add_pooling_layer=False" if model_type in ("esm", "bert", "roberta") else ""
    if finetune:
        code = [
            "import torch",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f"path = {path!r}  # this directory, or its hub id once uploaded",
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            "model = AutoModelForSequenceClassification.from_pretrained(path).eval()",
            f"batch = tokenizer([{EXAMPLE_TEXT!r}], padding=True, truncation=True, return_tensors='pt')",
            "with torch.no_grad():",
            "    logits = model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits",
            "print([model.config.id2label[int(i)] for i in logits.argmax(-1)])",
        ]
    else:
        code = [
            "import torch",
            "from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer",
            "",
            f"path = {path!r}  # this directory, or its hub id once uploaded",
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            "mlm = AutoModelForMaskedLM.from_pretrained(path).eval()",
            "text = f'Return the {tokenizer.mask_token} of items in the container.'",
            "batch = tokenizer([text], return_tensors='pt')",
            "with torch.no_grad():",
            "    logits = mlm(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits",
            "masked = batch['input_ids'][0] == tokenizer.mask_token_id",
            "print(tokenizer.convert_ids_to_tokens(logits[0, masked].topk(5).indices[0]))",
            "",
            "# Sentence embeddings: mean of the last hidden states over real tokens (what ptcli's fine-tunes pool)",
            f"encoder = AutoModel.from_pretrained(path{no_pooler}).eval()",
            "with torch.no_grad():",
            "    out = encoder(input_ids=batch['input_ids'], attention_mask=batch['attention_mask'])",
            "hidden = out.last_hidden_state",
            "mask = batch['attention_mask'].unsqueeze(-1).to(hidden.dtype)",
            "embedding = (hidden * mask).sum(1) / mask.sum(1)",
        ]
    auto = ("`AutoModelForSequenceClassification`" if finetune else
            "`AutoModelForMaskedLM` (and `AutoModel` for embeddings)")
    return ["## How to use", "", f"Loads offline with transformers' {auto} and `AutoTokenizer`; "
            "no `trust_remote_code`.", "", "```python", *code, "```", ""]


def _how_to_load_cloze(path: str) -> list[str]:
    # Run as written by tests/test_cloze.py: every line must work on the exported directory.
    code = [
        "import torch",
        "from transformers import AutoModelForMaskedLM, AutoTokenizer",
        "",
        f"path = {path!r}  # this directory, or its hub id once uploaded",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "mlm = AutoModelForMaskedLM.from_pretrained(path).eval()",
        "spec = mlm.config.ptcli_cloze  # patterns, labels (in order), verbalizer {label: [words]}",
        "words = [[tokenizer(' ' + w, add_special_tokens=False)['input_ids'][0] for w in spec['verbalizer'][label]]",
        "         for label in spec['labels']]",
        f"text = {EXAMPLE_TEXT!r}",
        "scores = 0",
        "for pattern in spec['patterns']:",
        "    prompt = pattern.replace('[MASK]', tokenizer.mask_token).replace('{text}', text)",
        "    batch = tokenizer([prompt], return_tensors='pt')",
        "    with torch.no_grad():",
        "        logits = mlm(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits",
        "    slot = logits[0][batch['input_ids'][0] == tokenizer.mask_token_id][0]",
        "    label_logits = torch.stack([slot[ids].mean() for ids in words])",
        "    scores = scores + label_logits.log_softmax(-1) / len(spec['patterns'])",
        "print(spec['labels'][int(scores.argmax())])",
    ]
    return ["## How to use", "", "Loads offline with transformers' `AutoModelForMaskedLM` and `AutoTokenizer`; no "
            "`trust_remote_code`. Classify a text:", "", "```python", *code, "```", ""]


def _config_section(run: Any, manifest: dict) -> list[str]:
    overrides = manifest.get("overrides") or []
    command = " ".join(["ptcli", str(manifest.get("command")), *(shlex.quote(str(o)) for o in overrides)])
    try:
        config = (Path(run.path) / "config.yaml").read_text(encoding="utf-8").rstrip()
    except OSError:
        config = "# config.yaml could not be read"
    commit = manifest.get("git")
    return ["## Reproduce", "", "```bash", command, "```", "",
            f"ptcli {(manifest.get('versions') or {}).get('ptcli', '?')}"
            + (f", commit `{commit}`" if commit else "") + f"; started {manifest.get('started_at')}. The run's "
            "full config (`config.yaml`; paths are the training machine's):", "", "```yaml", config, "```"]

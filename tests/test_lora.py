"""LoRA fine-tuning (``finetune.lora.*``, through peft) of ptcli's encoder and of a transformers BERT: only the
adapters and the head train, the base weights stay as pre-trained, resume restores the adapters, and
evaluate/export load the adapters merged into the base weights (the exported model gives the run's logits)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_manifest, require
from safetensors.torch import load_file

transformers = require("transformers", "the `hf` extra is not installed")
require("peft", "the `hf` extra is not installed")

# A learning rate far above the default, so that a few steps move the adapters well away from zero (lora_B
# starts at zero: an adapter that did not train would make a merge, or its absence, invisible).
LORA = ["finetune.lora.r=4", "finetune.lora.alpha=8", "optim.lr=3e-2", "pooling=cls", "debug=smoke",
        "trainer.eval_every=100"]
TEXTS = ["Return the number of items in the container.", "Open the file and read every line of it, slowly."]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> list[str]:
    """``data=text`` overrides for a small three-class task (a few seconds less per run than pydocs)."""
    words = {"io": "open read write file path line", "math": "sum square root number integer float",
             "net": "socket host port request server address"}
    root = tmp_path_factory.mktemp("labeled")
    for split, n in (("train", 16), ("test", 6)):
        rows = ["text,label"] + [f"{' '.join(w.split()[(i + j) % 6] for j in range(6))} of the items,{label}"
                                 for label, w in words.items() for i in range(n)]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return ["data=text", f"data.train={root / 'train.csv'}", f"data.test={root / 'test.csv'}", "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def tiny_bert(smoke_pretrain, tmp_path_factory):
    """A randomly initialized 2-layer BERT saved locally (no download), on the smoke run's WordPiece tokenizer."""
    from ptcli.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = load_tokenizer(smoke_pretrain / "tokenizer")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                         cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(out)
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(out)
    return out


def run_logits(run_dir, how: str = "adapters") -> torch.Tensor:
    """Class logits of the run's best checkpoint: ``adapters``, as it trained (the peft model, adapters apart);
    ``base``, the same with every adapter zeroed (the base weights alone); ``merged``, a plain classifier loaded
    with ``load_into``, as evaluate and embed load it."""
    from ptcli.build import run_config
    from ptcli.builders import build_classifier
    from ptcli.checkpoint import load_into, load_weights
    from ptcli.data.labels import LabelMap
    from ptcli.data.text import pad_batch
    from ptcli.models.lora import apply_lora
    from ptcli.rundir import RunDir
    from ptcli.tokenizer import load_tokenizer, special_ids

    run = RunDir.load(run_dir)
    cfg = run_config(run)
    tok = load_tokenizer(run.tokenizer_dir)
    ids = special_ids(tok)
    model = build_classifier(cfg.model, tok.get_vocab_size(), len(LabelMap.load(run.path / "labels.json").names),
                             cfg.pooling)
    if how == "merged":
        load_into(model, run.checkpoints / "best")
    else:
        apply_lora(model, cfg.finetune.lora)
        weights = load_weights(run.checkpoints / "best")
        assert any(".lora_A." in k for k in weights)  # saved unmerged
        if how == "base":
            weights = {k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in weights.items()}
        model.load_state_dict(weights)
    seqs = [[ids["cls"], *tok.encode(t, add_special_tokens=False).ids, ids["sep"]] for t in TEXTS]
    inputs, mask = pad_batch(seqs, ids["pad"])
    with torch.no_grad():
        return model.eval()(inputs, mask)


def exported_logits(ptcli, run_dir, out) -> torch.Tensor:
    r = ptcli("export", str(run_dir), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    assert not any("lora" in k for k in load_file(str(out / "model.safetensors")))  # merged, plain keys
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = hf_tok(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # padding must not change the logits
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        return hf_model(**enc).logits


def assert_merged_export_matches(ptcli, run_dir, out) -> None:
    """The run's logits (adapters apart) = a plain classifier's with the merged weights (what evaluate and embed
    load) = the exported transformers model's."""
    ours = run_logits(run_dir)
    assert (ours - run_logits(run_dir, "base")).abs().max() > 1e-2  # the adapters changed the model
    merged = run_logits(run_dir, "merged")
    assert torch.allclose(ours, merged, atol=1e-4), (ours - merged).abs().max()
    theirs = exported_logits(ptcli, run_dir, out)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


@pytest.mark.slow  # ~2 s of training runs: the inner loop keeps the smaller ones
def test_lora_finetune_of_a_ptcli_encoder_resumes_and_exports_merged(ptcli, smoke_pretrain, labeled, tmp_path):
    run = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", *LORA, *labeled, "trainer.max_steps=4",
              f"hydra.run.dir={run}")
    assert r.code == 0, r
    assert "trainable parameters:" in r.stderr and "LoRA r=4" in r.stderr
    first = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    r = ptcli("finetune", f"resume={run}", "trainer.max_steps=8")
    assert r.code == 0, r
    m = read_manifest(run)
    assert m["status"] == "completed" and m["step"] == 8

    # Trainable: per block r * (in + out) for qkv (32 -> 96) and proj (32 -> 32), and the cls head.
    classes = len(json.loads((run / "labels.json").read_text())["names"])
    adapters = 2 * 4 * ((32 + 96) + (32 + 32))
    assert m["parameters"]["trainable"] == adapters + (32 * 32 + 32) + (32 * classes + classes)
    assert m["parameters"]["total"] > 10 * m["parameters"]["trainable"]

    # The encoder's own weights are the pre-trained ones, untouched; the adapters kept training after resume.
    weights = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    pre = load_file(str(smoke_pretrain / "checkpoints" / "best" / "model.safetensors"))
    for key, value in weights.items():
        if ".lora_" not in key and key.startswith("encoder."):
            assert torch.equal(value, pre[key.replace(".base_layer.", ".")]), key
    b = "encoder.blocks.0.attn.qkv.lora_B.default.weight"
    assert weights[b].abs().max() > 1e-3 and not torch.equal(weights[b], first[b])

    assert_merged_export_matches(ptcli, run, tmp_path / "hf")


def test_lora_finetune_of_a_transformers_bert_exports_merged(ptcli, tiny_bert, labeled, tmp_path):
    run = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained=hf:{tiny_bert}", *LORA, *labeled, "trainer.max_steps=6",
              f"hydra.run.dir={run}")
    assert r.code == 0, r
    assert "on query,value" in r.stderr  # peft's default targets for BERT
    m = read_manifest(run)
    assert m["parameters"]["trainable"] < m["parameters"]["total"] / 10
    assert_merged_export_matches(ptcli, run, tmp_path / "hf")


def test_lora_refuses_what_it_cannot_do(smoke_pretrain):
    from omegaconf import OmegaConf

    from ptcli.errors import UsageError
    from ptcli.models.classifier import SequenceClassifier
    from ptcli.models.lora import LoraConfig, apply_lora, lora_settings
    from ptcli.models.transformer import TransformerEncoder

    def settings(**lora):
        return OmegaConf.create({"freeze_encoder": lora.pop("freeze", False),
                                 "finetune": {"lora": {**vars(LoraConfig()), **lora}}})

    assert lora_settings(settings()) is None  # r=0: full fine-tuning
    with pytest.raises(UsageError, match="freeze_encoder=true"):
        lora_settings(settings(r=4, freeze=True))
    with pytest.raises(UsageError, match="finetune.lora.alpha"):
        lora_settings(settings(r=4, alpha=0))
    model = SequenceClassifier(TransformerEncoder(50, dim=16, heads=2, layers=1, ffn_dim=32), 3)
    with pytest.raises(UsageError, match=r"target_modules=\['nope'\].*linear layers: 0, 2, proj, qkv"):
        apply_lora(model, settings(r=2, target_modules=["nope"]).finetune.lora)
    with pytest.raises(UsageError, match="Embedding layers"):
        apply_lora(SequenceClassifier(TransformerEncoder(50, dim=16, heads=2, layers=1, ffn_dim=32), 3),
                   settings(r=2, target_modules=["tok_emb"]).finetune.lora)

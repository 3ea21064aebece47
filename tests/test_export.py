"""Export to transformers: the exported EsmForMaskedLM reproduces ptcli's MLM logits, and a ``pooling=cls``
fine-tune run exports as an EsmForSequenceClassification with the same class logits."""

from __future__ import annotations

import pytest
import torch
from conftest import require

transformers = require("transformers", "the `hf` extra is not installed")


TEXTS = ["Return the number of items in the container.", "Open the file."]


def mlm_logits(run_dir, exported) -> tuple[torch.Tensor, torch.Tensor, object]:
    """MLM logits of ptcli's best checkpoint and of the exported model at the real (unpadded) positions of a
    padded batch, encoded by the exported tokenizer (which must give ptcli's token ids), and the HF model."""
    from ptcli.build import run_config
    from ptcli.builders import build_text_objective
    from ptcli.checkpoint import load_into
    from ptcli.rundir import RunDir
    from ptcli.tokenizer import load_tokenizer

    run = RunDir.load(run_dir)
    tok = load_tokenizer(run.tokenizer_dir)
    model = build_text_objective(run_config(run), tok)
    load_into(model, run.checkpoints / "best")
    model.eval()
    hf_model = transformers.AutoModelForMaskedLM.from_pretrained(exported).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    enc = hf_tok(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any()  # padding must not change the logits
    for row, n, text in zip(ids, mask.sum(1).tolist(), TEXTS, strict=True):  # ptcli's ids, [CLS] and [SEP] included
        assert row[:n].tolist() == tok.encode(text).ids, (row[:n].tolist(), tok.encode(text).ids)
    with torch.no_grad():
        hidden = model.encoder(ids, mask)
        if hasattr(model, "head"):  # init_from=hf: the checkpoint's own MLM head
            ours = model.head(hidden)
        else:
            ours = torch.nn.functional.linear(model.transform(hidden), model.encoder.tok_emb.weight,
                                              model.decoder_bias)
        theirs = hf_model(input_ids=ids, attention_mask=mask).logits
    assert theirs.shape == ours.shape
    real = mask.bool()  # padded positions are don't-cares in both
    return ours[real], theirs[real], hf_model


def test_export_matches_logits(ptcli, smoke_pretrain, tmp_path):
    out = tmp_path / "hf"
    r = ptcli("export", str(smoke_pretrain), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    ours, theirs, hf_model = mlm_logits(smoke_pretrain, out)
    assert type(hf_model).__name__ == "EsmForMaskedLM"
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_export_with_an_embedding_norm_matches_logits(ptcli, tmp_path):
    """``model.embed_norm=true`` exports as ESM's ``emb_layer_norm_before``: the same logits, the norm's weights
    carried over (not ESM's fresh ones)."""
    from conftest import TINY_TRANSFORMER

    run = tmp_path / "pretrain"
    r = ptcli("pretrain", "debug=smoke", *TINY_TRANSFORMER, "model.embed_norm=true", f"hydra.run.dir={run}")
    assert r.code == 0, r
    out = tmp_path / "hf"
    r = ptcli("export", str(run), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    ours, theirs, hf_model = mlm_logits(run, out)
    assert hf_model.config.emb_layer_norm_before is True
    assert not torch.equal(hf_model.esm.embeddings.layer_norm.weight, torch.ones(32))  # trained, then exported
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def finetune_logits(run_dir, exported) -> tuple[torch.Tensor, tuple[torch.Tensor, object]]:
    """Class logits of ptcli's best checkpoint and of the exported model, on a padded batch."""
    from ptcli.build import run_config
    from ptcli.builders import build_classifier
    from ptcli.checkpoint import load_into
    from ptcli.data.labels import LabelMap
    from ptcli.data.text import pad_batch
    from ptcli.rundir import RunDir
    from ptcli.tokenizer import load_tokenizer, special_ids

    run = RunDir.load(run_dir)
    cfg = run_config(run)
    tok = load_tokenizer(run.tokenizer_dir)
    ids = special_ids(tok)
    texts = ["Return the number of items in the container.", "Open the file and read every line of it, slowly."]
    seqs = [[ids["cls"], *tok.encode(t, add_special_tokens=False).ids, ids["sep"]] for t in texts]
    inputs, mask = pad_batch(seqs, ids["pad"])
    assert (mask == 0).any()  # padding must not change the logits
    model = build_classifier(cfg.model, tok.get_vocab_size(), len(LabelMap.load(run.path / "labels.json").names),
                             cfg.pooling)
    load_into(model, run.checkpoints / "best")
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(exported).eval()
    transformers.AutoTokenizer.from_pretrained(exported)
    with torch.no_grad():
        return model.eval()(inputs, mask), (hf_model(input_ids=inputs, attention_mask=mask).logits, hf_model)


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_export_finetune_cls_run_matches_logits(ptcli, smoke_pretrain, tmp_path):
    ft = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "pooling=cls", "debug=smoke", f"hydra.run.dir={ft}")
    assert r.code == 0, r
    out = tmp_path / "hf"
    r = ptcli("export", str(ft), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    ours, (theirs, hf_model) = finetune_logits(ft, out)
    assert type(hf_model).__name__ == "EsmForSequenceClassification"
    names = (ft / "labels.json").read_text()
    assert all(name in names for name in hf_model.config.id2label.values())
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    # The default mean-pooled head has no transformers counterpart: refused, with the way out named.
    mean = tmp_path / "ft-mean"
    assert ptcli("finetune", f"pretrained={smoke_pretrain}", "debug=smoke", f"hydra.run.dir={mean}").code == 0
    r = ptcli("export", str(mean), "--format", "hf", "--out", str(tmp_path / "x"))
    assert r.code == 2 and "pooling=cls" in r.stderr, r
    assert not (tmp_path / "x").exists()


def test_export_refuses_finetune_and_image_runs(ptcli, tmp_path):
    r = ptcli("export", str(tmp_path), "--format", "hf", "--out", str(tmp_path / "x"))
    assert r.code == 2 and "run.json" in r.stderr

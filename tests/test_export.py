"""Export to transformers: the exported EsmForMaskedLM reproduces ptcli's MLM logits."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the optional `hf` extra


def test_export_matches_logits(ptcli, smoke_pretrain, tmp_path):
    from ptcli.checkpoint import load_into
    from ptcli.objectives.mlm import MaskedLM
    from ptcli.recipes.pretrain import build_mlm
    from ptcli.rundir import RunDir
    from ptcli.tokenizer import load_tokenizer

    out = tmp_path / "hf"
    r = ptcli("export", str(smoke_pretrain), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    hf_model = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    run = RunDir.load(smoke_pretrain)
    tok = load_tokenizer(run.tokenizer_dir)
    model: MaskedLM = build_mlm(run.config(), tok)
    load_into(model, smoke_pretrain / "checkpoints" / "best")
    model.eval()
    enc = hf_tok(["Return the number of items in the container.", "Open the file."],
                 padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids[0, 0].item() == tok.token_to_id("[CLS]") and (mask == 0).any()
    with torch.no_grad():
        ours = torch.nn.functional.linear(model.transform(model.encoder(ids, mask)), model.encoder.tok_emb.weight,
                                          model.decoder_bias)
        theirs = hf_model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()  # padded positions are don't-cares in both
    assert theirs.shape == ours.shape
    assert torch.allclose(ours[real], theirs[real], atol=1e-4), (ours[real] - theirs[real]).abs().max()


def test_export_refuses_finetune_and_image_runs(ptcli, tmp_path):
    r = ptcli("export", str(tmp_path), "--format", "hf", "--out", str(tmp_path / "x"))
    assert r.code == 2 and "run.json" in r.stderr

"""Tiny transformers BERTs and RoBERTas created locally (no download): ``pretrained=hf:DIR`` fine-tunes one,
``init_from=hf:DIR`` continues its MLM pre-training, and both kinds of run export back to transformers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_manifest, require

transformers = require("transformers", "the `hf` extra is not installed")


@pytest.fixture(scope="module")
def tiny_bert(smoke_pretrain, tmp_path_factory):
    from ptcli.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = load_tokenizer(smoke_pretrain / "tokenizer")  # any WordPiece tokenizer will do
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    hf_tok.save_pretrained(out)
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(out)
    return out


def assert_exports_as(ptcli, run, out, architecture: str) -> None:
    """``ptcli export --format hf`` of a fine-tune run gives ``architecture`` with ptcli's logits."""
    from test_export import finetune_logits

    r = ptcli("export", str(run), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    ours, theirs = finetune_logits(run, out)
    assert type(theirs[1]).__name__ == architecture
    assert torch.allclose(ours, theirs[0], atol=1e-4), (ours - theirs[0]).abs().max()


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_finetune_hf_checkpoint_and_evaluate(ptcli, tiny_bert, tmp_path):
    run = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained=hf:{tiny_bert}", "data=pydocs", "debug=smoke", f"hydra.run.dir={run}")
    assert r.code == 0, r
    m = read_manifest(run)
    assert m["status"] == "completed" and "test/accuracy" in m["metrics"]
    assert "ptcli.models.hf.HFEncoder" in (run / "config.yaml").read_text()
    r = ptcli("evaluate", str(run), "--json", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.code == 0, r
    assert json.loads(r.stdout)["test/accuracy"] == pytest.approx(m["metrics"]["test/accuracy"])


def test_hf_hub_name_offline_fails_clearly(ptcli, tmp_path):
    r = ptcli("finetune", "pretrained=hf:some-org/not-a-model", "debug=smoke", f"hydra.run.dir={tmp_path / 'r'}",
              env={"HF_HUB_OFFLINE": "1"})
    assert r.code == 2, r
    assert "hf:some-org/not-a-model" in r.stderr and "Offline" in r.stderr


def test_init_from_hf_starts_from_its_weights_and_head(ptcli, tiny_bert, tmp_path):
    from ptcli.checkpoint import load_weights

    run = tmp_path / "dapt"
    r = ptcli("pretrain", f"init_from=hf:{tiny_bert}", "debug=smoke", "trainer.max_steps=1", "optim.lr=1e-12",
              "schedule=constant", f"hydra.run.dir={run}")
    assert r.code == 0, r
    ours = load_weights(run / "checkpoints" / "last")
    theirs = transformers.BertForMaskedLM.from_pretrained(tiny_bert).state_dict()
    pairs = {"encoder.model.encoder.layer.1.output.dense.weight": "bert.encoder.layer.1.output.dense.weight",
             "head.predictions.transform.dense.weight": "cls.predictions.transform.dense.weight",
             "encoder.model.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight"}
    for mine, hf_key in pairs.items():
        assert torch.allclose(ours[mine], theirs[hf_key], atol=1e-6), mine
    cfg = (run / "config.yaml").read_text()
    assert "ptcli.models.hf.HFEncoder" in cfg and (run / "hf_model" / "config.json").is_file()


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_init_from_hf_trains_resumes_finetunes_and_exports(ptcli, tiny_bert, tmp_path):
    pre = tmp_path / "dapt"
    r = ptcli("pretrain", f"init_from=hf:{tiny_bert}", "debug=smoke", "trainer.max_steps=10", f"hydra.run.dir={pre}")
    assert r.code == 0, r
    assert "lr: 0.0001" in (pre / "config.yaml").read_text()  # domain-adaptive pre-training's small default
    first = read_manifest(pre)["metrics"]["val/loss"]
    # Continue the completed run for 10 more steps: the architecture recorded in the run is reused.
    r = ptcli("pretrain", f"init_from=hf:{tiny_bert}", "debug=smoke", "trainer.max_steps=20", f"resume={pre}")
    assert r.code == 0, r
    m = read_manifest(pre)
    assert m["status"] == "completed" and m["step"] == 20 and m["metrics"]["val/loss"] < first

    ft = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={pre}", "pooling=cls", "debug=smoke", "trainer.max_steps=4",
              f"hydra.run.dir={ft}")
    assert r.code == 0, r
    assert_exports_as(ptcli, ft, tmp_path / "export", "BertForSequenceClassification")

    from test_export import mlm_logits

    mlm_out = tmp_path / "export-mlm"
    r = ptcli("export", str(pre), "--format", "hf", "--out", str(mlm_out))
    assert r.code == 0, r
    ours, theirs, hf_model = mlm_logits(pre, mlm_out)
    assert type(hf_model).__name__ == "BertForMaskedLM"
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


@pytest.fixture(scope="module")
def tiny_roberta(smoke_pretrain, tmp_path_factory):
    from ptcli.tokenizer import load_tokenizer, special_ids

    out = tmp_path_factory.mktemp("tiny-roberta")
    tok = load_tokenizer(smoke_pretrain / "tokenizer")
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    hf_tok.save_pretrained(out)
    # RoBERTa numbers positions from pad_token_id + 1, hence the two extra position embeddings.
    config = transformers.RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                                        pad_token_id=special_ids(tok)["pad"])
    torch.manual_seed(0)
    transformers.RobertaForMaskedLM(config).save_pretrained(out)
    return out


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_roberta_checkpoint_finetunes_and_exports(ptcli, tiny_roberta, tmp_path):
    ft = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained=hf:{tiny_roberta}", "pooling=cls", "data=pydocs", "debug=smoke",
              f"hydra.run.dir={ft}")
    assert r.code == 0, r
    assert "test/accuracy" in read_manifest(ft)["metrics"]
    assert_exports_as(ptcli, ft, tmp_path / "export", "RobertaForSequenceClassification")

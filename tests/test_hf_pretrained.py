"""``pretrained=hf:DIR``: fine-tune a (tiny, locally created) transformers BERT, then evaluate it."""

from __future__ import annotations

import json

import pytest
from conftest import read_manifest

transformers = pytest.importorskip("transformers")


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
    transformers.BertModel(config).save_pretrained(out)
    return out


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

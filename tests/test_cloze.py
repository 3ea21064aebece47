"""Cloze fine-tuning (``head=cloze``): the pre-trained MLM head read at a pattern's [MASK] slot through a
verbalizer, for ptcli's own MLM runs and for a transformers masked LM; evaluate and export agree with the run; and
the pydocs ``kind`` label."""

from __future__ import annotations

import ast
import json
import re

import pytest
import torch
from conftest import TINY_TRANSFORMER, read_manifest, require

WORDS = {"io": "open read write file path line", "math": "sum square root number integer float",
         "net": "socket host port request server address"}
CLOZE = ["head=cloze", "debug=smoke", "trainer.max_steps=12", "trainer.eval_every=6"]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("cloze-data")
    for split, n in (("train", 12), ("test", 4)):
        rows = ["text,label"] + [f"{' '.join(w.split()[(i + j) % 6] for j in range(5))} of the items,{label}"
                                 for label, w in WORDS.items() for i in range(n)]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return ["data=text", f"data.train={root / 'train.csv'}", f"data.test={root / 'test.csv'}", "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def cloze_run(ptcli, smoke_pretrain, labeled, tmp_path_factory):
    run = tmp_path_factory.mktemp("cloze") / "ft"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", *CLOZE, *labeled,
              "finetune.cloze.patterns=['[MASK] : {text}','{text} [SEP] [MASK]']", f"hydra.run.dir={run}")
    assert r.code == 0, r
    return run


def _tok(run):
    from ptcli.tokenizer import load_tokenizer

    return load_tokenizer(run / "tokenizer")


def test_pattern_is_checked_and_the_text_is_truncated_never_the_slot(smoke_pretrain):
    from ptcli.errors import UsageError
    from ptcli.models.cloze import PatternEncoder, check_pattern
    from ptcli.tokenizer import special_ids

    assert check_pattern("[MASK] : {text}") == ["[MASK]", " : ", "{text}"]
    for bad in ("{text} only", "[MASK] only", "{text} [MASK] [MASK]"):
        with pytest.raises(UsageError, match="must hold"):
            check_pattern(bad)
    tok = _tok(smoke_pretrain)
    ids = special_ids(tok)
    enc = PatternEncoder(tok, "{text} it is a [MASK] .", 16, ids)
    text = tok.encode("open read write file path line " * 10, add_special_tokens=False).ids
    out = enc(text)
    assert len(out) == 16 and out[0] == ids["cls"] and out[-1] == ids["sep"]
    assert out.count(ids["mask"]) == 1 and out[-3] == ids["mask"]  # "[MASK] ." kept at the end
    assert out[1:6] == text[:5]


def test_class_logits_are_the_mlm_heads_logits_of_the_label_words(smoke_pretrain):
    """The cloze classifier's logit for a class = the mean of the full MLM head's logits of its words at the slot
    (computed here through MaskedLM's own head over the whole vocabulary)."""
    from ptcli.build import run_config
    from ptcli.builders import build_cloze_classifier
    from ptcli.models.cloze import encode_with_patterns, label_token_ids, load_masked_lm
    from ptcli.rundir import RunDir
    from ptcli.tokenizer import special_ids

    tok = _tok(smoke_pretrain)
    cfg = run_config(RunDir.load(smoke_pretrain))
    label_ids = label_token_ids(tok, {"a": ["file"], "b": ["number", "root"]}, ["a", "b"])
    assert len(label_ids[1]) == 2
    model = build_cloze_classifier(cfg.model, tok, label_ids).eval()
    load_masked_lm(model.mlm, smoke_pretrain / "checkpoints" / "best", "test")
    seqs = encode_with_patterns(tok, ["open the file", "the square root of a number"], ["[MASK] : {text}"], 64)[0]
    from ptcli.data.text import pad_batch

    ids, mask = pad_batch(seqs, special_ids(tok)["pad"])
    with torch.no_grad():
        got = model(ids, mask)
        hidden = model.mlm.encoder(ids, mask)[ids == special_ids(tok)["mask"]]
        vocab = torch.nn.functional.linear(model.mlm.transform(hidden), model.mlm.encoder.tok_emb.weight,
                                           model.mlm.decoder_bias)
    want = torch.stack([vocab[:, label_ids[0]].mean(-1), vocab[:, label_ids[1]].mean(-1)], -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_verbalizer_words_must_be_one_token_and_cover_every_label(smoke_pretrain):
    from ptcli.errors import UsageError
    from ptcli.models.cloze import label_token_ids

    tok = _tok(smoke_pretrain)
    with pytest.raises(UsageError, match="no words for label"):
        label_token_ids(tok, {"a": ["file"]}, ["a", "b"])
    with pytest.raises(UsageError, match="verbalizer.a: 'xqzvkwpy' is .* tokens"):
        label_token_ids(tok, {"a": ["xqzvkwpy"], "b": ["file"]}, ["a", "b"])


@pytest.mark.slow  # a fine-tune, an evaluate and an export
def test_cloze_finetune_evaluates_and_exports_as_a_masked_lm(ptcli, cloze_run, labeled, tmp_path):
    m = read_manifest(cloze_run)
    assert m["status"] == "completed" and "test/accuracy" in m["metrics"], m
    verbalizer = json.loads((cloze_run / "verbalizer.json").read_text())
    labels = json.loads((cloze_run / "labels.json").read_text())
    names = labels["names"] if isinstance(labels, dict) else labels
    assert sorted(verbalizer) == sorted(names) and all(len(v) == 1 for v in verbalizer.values())
    assert len({v[0] for v in verbalizer.values()}) == len(names)  # chosen words are distinct
    assert m["data"]["train_examples"] < 36  # the examples, not examples x patterns
    # evaluate rebuilds the cloze classifier from the run (patterns, verbalizer.json) and scores it the same way
    r = ptcli("evaluate", str(cloze_run), "--json", f"hydra.run.dir={tmp_path / 'eval'}")
    assert r.code == 0, r
    assert json.loads(r.stdout)["test/accuracy"] == pytest.approx(m["metrics"]["test/accuracy"])
    # export: the masked LM (ESM), with the pattern and verbalizer in config.json and the model card
    transformers = require("transformers", "the `hf` extra is not installed")
    out = tmp_path / "export"
    r = ptcli("export", str(cloze_run), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    assert mlm.config.ptcli_cloze["verbalizer"] == verbalizer
    assert mlm.config.ptcli_cloze["patterns"] == ["[MASK] : {text}", "{text} [SEP] [MASK]"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "| pattern |" in card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    printed = []
    exec(compile(code, "card", "exec"), {"print": printed.append})  # the card's own snippet, as a reader runs it
    assert printed and printed[0] in names
    # The exported masked LM gives ptcli's class logits: the mean of the label words' logits at the slot.
    from ptcli.build import run_config
    from ptcli.builders import build_cloze_classifier
    from ptcli.checkpoint import load_into, trained_checkpoint
    from ptcli.models.cloze import encode_with_patterns, label_token_ids
    from ptcli.rundir import RunDir

    run = RunDir.load(cloze_run)
    tok = _tok(cloze_run)
    label_ids = label_token_ids(tok, verbalizer, names)
    model = build_cloze_classifier(run_config(run).model, tok, label_ids).eval()
    load_into(model, trained_checkpoint(run))
    seq = encode_with_patterns(tok, ["open the file and read a line"], ["[MASK] : {text}"], 64)[0]
    ids = torch.tensor(seq)
    with torch.no_grad():
        ours = model(ids)
        slot = mlm(input_ids=ids).logits[ids == model.mask_id]
    theirs = torch.stack([slot[:, i].mean(-1) for i in label_ids], -1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # a transformers model fine-tuned and exported
def test_cloze_finetune_of_a_transformers_masked_lm(ptcli, smoke_pretrain, labeled, tmp_path):
    transformers = require("transformers", "the `hf` extra is not installed")
    from ptcli.tokenizer import load_tokenizer

    src = tmp_path / "tiny-bert"
    tok = load_tokenizer(smoke_pretrain / "tokenizer")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                         cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]").save_pretrained(src)
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    bert = transformers.BertForMaskedLM(config)
    bert.save_pretrained(src)
    run = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained=hf:{src}", *CLOZE, *labeled,
              "finetune.cloze.verbalizer={io:[file],math:[number,root],net:[host]}", f"hydra.run.dir={run}")
    assert r.code == 0, r
    assert json.loads((run / "verbalizer.json").read_text()) == {"io": ["file"], "math": ["number", "root"],
                                                                 "net": ["host"]}
    out = tmp_path / "export"
    r = ptcli("export", str(run), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    exported = transformers.AutoModelForMaskedLM.from_pretrained(out)
    assert exported.config.ptcli_cloze["labels"] == ["io", "math", "net"]
    # it trained: the exported weights moved away from the checkpoint it started from
    a, b = bert.state_dict(), exported.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if k in b and "encoder" in k)


def test_head_cloze_refusals(ptcli, smoke_pretrain, labeled, tmp_path):
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "head=bogus", *labeled, f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "head='bogus'" in r.stderr, r
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", *CLOZE, *labeled, "finetune.cloze.patterns=['{text}']",
              f"hydra.run.dir={tmp_path / 'b'}")
    assert r.code == 2 and "must hold" in r.stderr, r
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", *CLOZE, *labeled, "freeze_encoder=true",
              f"hydra.run.dir={tmp_path / 'c'}")
    assert r.code == 2 and "whole masked LM" in r.stderr, r
    r = ptcli("finetune", "model=convnet", "data=digits", "head=cloze", f"hydra.run.dir={tmp_path / 'd'}")
    assert r.code == 2 and "for text models" in r.stderr, r
    assert not (tmp_path / "a" / "checkpoints").exists()


@pytest.mark.slow  # an ELECTRA pre-training
def test_head_cloze_refuses_a_pretraining_without_an_mlm_head(ptcli, labeled, tmp_path):
    pre = tmp_path / "electra"
    r = ptcli("pretrain", "objective=electra", "debug=smoke", *TINY_TRANSFORMER, "trainer.max_steps=2",
              f"hydra.run.dir={pre}")
    assert r.code == 0, r
    r = ptcli("finetune", f"pretrained={pre}", *CLOZE, *labeled, f"hydra.run.dir={tmp_path / 'ft'}")
    assert r.code == 2 and "objective=ptcli.objectives.electra.Electra" in r.stderr and "head=classifier" in r.stderr, r


def test_reinit_layers_refreshes_the_top_blocks_only():
    from ptcli.errors import UsageError
    from ptcli.models.cloze import reinit_top_blocks
    from ptcli.models.transformer import TransformerEncoder

    torch.manual_seed(0)
    enc = TransformerEncoder(vocab_size=50, dim=16, layers=3, heads=2, ffn_dim=32)
    for p in enc.parameters():
        torch.nn.init.constant_(p, 0.5)  # "pre-trained" weights, unlike any fresh init
    reinit_top_blocks(enc, 1)
    assert all(bool((p == 0.5).all()) for p in enc.blocks[1].parameters())
    top = dict(enc.blocks[2].named_parameters())
    assert not bool((top["attn.qkv.weight"] == 0.5).all()) and bool((top["ln1.weight"] == 1.0).all())
    with pytest.raises(UsageError, match="has 3 blocks"):
        reinit_top_blocks(enc, 4)


def test_pydocs_kind_label_tells_modules_classes_functions_and_methods():
    from ptcli.data.pydocs import _kinds

    tree = ast.parse('"""mod"""\nclass A:\n    """cls"""\n    def m(self):\n        """meth"""\n'
                     '        def inner():\n            """nested"""\ndef f():\n    """func"""\n'
                     'async def g():\n    """afunc"""\n')
    got = {ast.get_docstring(node): kind for node, kind in _kinds(tree).items() if ast.get_docstring(node)}
    assert got == {"mod": "module", "cls": "class", "meth": "method", "nested": "function", "func": "function",
                   "afunc": "function"}


def test_pydocs_label_must_be_known(ptcli, tmp_path):
    r = ptcli("finetune", "data=pydocs", "data.label=topic", "debug=smoke", *TINY_TRANSFORMER,
              f"hydra.run.dir={tmp_path / 'r'}")
    assert r.code == 2 and "data.label='topic'" in r.stderr and "'kind'" in r.stderr, r


def test_verbalizer_must_map_labels_to_words(ptcli, smoke_pretrain, labeled, tmp_path):
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", *CLOZE, *labeled, "finetune.cloze.verbalizer=[file,host]",
              f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "{label: [word, ...]}" in r.stderr, r


def test_verbalizer_names_uses_one_token_label_names_and_chooses_the_rest(ptcli, smoke_pretrain, tmp_path):
    """verbalizer=names: a label whose name is one token is its own word; the others get distinct chosen words."""
    from ptcli.models.cloze import name_words

    tok = _tok(smoke_pretrain)
    assert name_words(tok, ["file", "xqzvkwpy"]) == {"file": ["file"]}
    rows = ["text,label"] + [f"{' '.join(w.split()[(i + j) % 6] for j in range(5))} of the items,{label}"
                             for label, w in (("file", WORDS["io"]), ("xqzvkwpy", WORDS["math"])) for i in range(12)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", *CLOZE, "data=text", f"data.train={tmp_path / 'train.csv'}",
              "data.val_fraction=0.25", "finetune.cloze.verbalizer=names", "trainer.max_steps=2",
              f"hydra.run.dir={run}")
    assert r.code == 0, r
    words = json.loads((run / "verbalizer.json").read_text())
    assert words["file"] == ["file"]
    assert len(words["xqzvkwpy"]) == 1 and words["xqzvkwpy"] != ["file"]

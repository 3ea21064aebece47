"""Property-based tests (hypothesis): masking, packing, label budgets, config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptcli.data.labels import stratified_subsample
from ptcli.errors import UsageError
from ptcli.models.transformer import TransformerEncoder
from ptcli.objectives.mlm import IGNORE, mask_tokens

FAST = settings(max_examples=40, deadline=None)


@FAST
@given(b=st.integers(1, 6), t=st.integers(2, 40), vocab=st.integers(8, 300), rate=st.floats(0.01, 0.99),
       share=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), n_special=st.integers(1, 5))
def test_masking_invariants_hold_for_any_shape(b, t, vocab, rate, share, seed, n_special):
    g = torch.Generator().manual_seed(seed)
    special = torch.zeros(vocab, dtype=torch.bool)
    special[:n_special] = True
    ids = torch.randint(0, vocab, (b, t), generator=g)
    rand_share = (1 - share) / 2
    inputs, labels = mask_tokens(ids, mask_rate=rate, mask_id=0, vocab_size=vocab, special=special,
                                 generator=g, mask_token_share=share, random_token_share=rand_share)
    selected = labels != IGNORE
    assert inputs.shape == ids.shape and labels.shape == ids.shape
    assert not (selected & special[ids]).any()  # special tokens are never selected
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])
    assert ((inputs >= 0) & (inputs < vocab)).all()


class _Enc:
    def __init__(self, ids):
        self.ids = ids


class _Tok:
    """The two tokenizer calls pack_blocks needs; ids are word lengths, to keep it transparent."""

    def token_to_id(self, t):
        return {"[CLS]": 2, "[SEP]": 3}.get(t)

    def to_str(self):
        return "fake-tokenizer"

    def encode_batch(self, texts, add_special_tokens=False):
        return [_Enc([5 + len(w) for w in text.split()]) for text in texts]


@FAST
@given(docs=st.lists(st.lists(st.sampled_from(["a", "bb", "ccc", "dddd"]), min_size=0, max_size=30), min_size=1,
                     max_size=40), block=st.integers(8, 32))
def test_packing_conserves_the_token_stream(docs, block):
    import datasets

    from ptcli.data.text import pack_blocks

    texts = [" ".join(d) for d in docs]
    stream = []
    for d in docs:
        stream += [5 + len(w) for w in d] + [3]
    split = datasets.Dataset.from_dict({"text": texts})
    n = len(stream) // (block - 1)
    if n == 0:
        with pytest.raises(UsageError, match="too short"):
            pack_blocks(split, _Tok(), block)
        return
    blocks = pack_blocks(split, _Tok(), block)
    assert blocks.shape == (n, block)
    assert (blocks[:, 0] == 2).all()  # every block starts with [CLS]
    assert blocks[:, 1:].reshape(-1).tolist() == stream[: n * (block - 1)]  # order kept, remainder dropped


@FAST
@given(counts=st.lists(st.integers(1, 30), min_size=2, max_size=8), per_class=st.integers(1, 40),
       seed=st.integers(0, 1000))
def test_stratified_subsample_properties(counts, per_class, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(seed)
    labels = labels[rng.permutation(len(labels))]
    idx = stratified_subsample(labels, per_class, seed)
    assert len(set(idx.tolist())) == len(idx)  # no duplicates
    got = np.bincount(labels[idx], minlength=len(counts))
    assert got.tolist() == [min(c, per_class) for c in counts]
    assert np.array_equal(idx, stratified_subsample(labels, per_class, seed))  # deterministic
    bigger = stratified_subsample(labels, per_class + 5, seed)
    assert set(idx.tolist()) <= set(bigger.tolist())  # nested budgets


@FAST
@given(dim=st.integers(-4, 64), heads=st.integers(-2, 9), layers=st.integers(-1, 3))
def test_encoder_accepts_exactly_the_valid_sizes(dim, heads, layers):
    valid = dim > 0 and heads > 0 and layers > 0 and dim % heads == 0 and (dim // heads) % 2 == 0
    if valid:
        TransformerEncoder(vocab_size=16, dim=dim, heads=heads, layers=layers, ffn_dim=8, max_len=8)
    else:
        with pytest.raises(UsageError, match=r"model\.(dim|heads|layers)"):
            TransformerEncoder(vocab_size=16, dim=dim, heads=heads, layers=layers, ffn_dim=8, max_len=8)


@FAST
@given(rate=st.one_of(st.floats(-2, 0), st.floats(1, 3)))
def test_mask_rate_outside_unit_interval_is_refused(rate):
    from ptcli.objectives.mlm import MaskedLM

    enc = TransformerEncoder(vocab_size=16, dim=8, heads=2, layers=1, ffn_dim=8, max_len=8)
    with pytest.raises(UsageError, match="mask_rate"):
        MaskedLM(enc, special_ids=[0, 1], mask_id=1, mask_rate=rate)

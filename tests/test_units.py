"""Unit tests of the building blocks: masking, packing, model, labels, checkpoints, safety."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ptcli.build import check_targets, instantiate
from ptcli.checkpoint import load_into, save_checkpoint
from ptcli.data.labels import LabelMap, stratified_subsample
from ptcli.errors import UsageError
from ptcli.models.transformer import TransformerEncoder
from ptcli.objectives.mlm import IGNORE, mask_tokens

VOCAB = 1000
SPECIAL = torch.zeros(VOCAB, dtype=torch.bool)
SPECIAL[:5] = True


def _ids(b=64, t=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    ids[:, 0] = 2  # [CLS]
    ids[:, -1] = 3  # [SEP]
    return ids


def test_masking_invariants():
    ids = _ids()
    g = torch.Generator().manual_seed(1)
    inputs, labels = mask_tokens(ids, mask_rate=0.15, mask_id=4, vocab_size=VOCAB, special=SPECIAL, generator=g)
    selected = labels != IGNORE
    assert not selected[:, 0].any() and not selected[:, -1].any()  # special tokens never masked
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected positions untouched
    rate = selected.float().mean().item()
    assert 0.13 < rate < 0.17
    to_mask = (inputs == 4) & selected
    kept = (inputs == ids) & selected
    n = selected.sum().item()
    assert 0.75 < to_mask.sum().item() / n < 0.85
    assert 0.06 < kept.sum().item() / n < 0.14


def test_masking_is_deterministic_given_generator():
    ids = _ids()
    a = mask_tokens(ids, mask_rate=0.3, mask_id=4, vocab_size=VOCAB, special=SPECIAL,
                    generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, mask_rate=0.3, mask_id=4, vocab_size=VOCAB, special=SPECIAL,
                    generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_whole_word_masking_selects_words_together():
    word_start = torch.ones(VOCAB, dtype=torch.bool)
    word_start[500:] = False  # ids >= 500 are '##' continuations
    ids = _ids(seed=3)
    _, labels = mask_tokens(ids, mask_rate=0.3, mask_id=4, vocab_size=VOCAB, special=SPECIAL,
                            generator=torch.Generator().manual_seed(0), word_start=word_start)
    sel = labels != IGNORE
    prev_special = torch.roll(SPECIAL[ids], 1, dims=1)
    cont = ~word_start[ids] & ~SPECIAL[ids] & ~prev_special
    # A continuation token is selected exactly when the token before it (same word) is.
    prev = torch.roll(sel, 1, dims=1)
    assert torch.equal(sel[:, 1:][cont[:, 1:]], prev[:, 1:][cont[:, 1:]])
    assert sel.any()


def test_encoder_shapes_and_padding_invariance():
    torch.manual_seed(0)
    enc = TransformerEncoder(vocab_size=VOCAB, dim=32, layers=2, heads=4, ffn_dim=64, max_len=16).eval()
    ids = torch.randint(5, VOCAB, (2, 10))
    out = enc(ids)
    assert out.shape == (2, 10, 32)
    padded = torch.cat([ids, torch.zeros(2, 6, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(2, 10), torch.zeros(2, 6)], 1).long()
    out_padded = enc(padded, mask)
    assert torch.allclose(out, out_padded[:, :10], atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("bias", [False, True])
def test_encoder_at_selected_positions_equals_full_encoder(position, bias):
    """``only=`` (what MLM uses: the last block at masked positions only) is the same function: equal
    outputs and equal gradients, with padding, a row with nothing selected, and uneven rows."""
    torch.manual_seed(0)
    enc = TransformerEncoder(vocab_size=VOCAB, dim=32, layers=3, heads=4, ffn_dim=64, max_len=16, position=position,
                             bias=bias)
    ids = torch.randint(5, VOCAB, (3, 16))
    pad = torch.ones(3, 16, dtype=torch.long)
    pad[1, 11:] = 0
    only = torch.rand(3, 16, generator=torch.Generator().manual_seed(1)) < 0.3
    only[2] = False
    only[0, :12] = True
    for mask in (None, pad):
        full = enc(ids, mask)[only]
        part = enc(ids, mask, only=only)
        assert part.shape == (int(only.sum()), 32)
        torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)
        grads_full = torch.autograd.grad(full.square().sum(), list(enc.parameters()))
        grads_part = torch.autograd.grad(enc(ids, mask, only=only).square().sum(), list(enc.parameters()))
        for (name, _), a, b in zip(enc.named_parameters(), grads_full, grads_part, strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
    assert enc(ids, only=torch.zeros(3, 16, dtype=torch.bool)).shape == (0, 32)


def _padded_reference(enc: TransformerEncoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder computed the padded way: every position through every block, padding masked as keys."""
    t = ids.shape[1]
    x = enc.tok_emb(ids)
    if enc.emb_norm is not None:  # model.embed_norm=true
        x = torch.nn.functional.layer_norm(x, (x.shape[-1],), enc.emb_norm.weight, enc.emb_norm.bias)
    rotary = None
    if enc.pos_emb is not None:
        x = x + enc.pos_emb(torch.arange(t))
    else:
        rotary = (enc.rope_cos[:t], enc.rope_sin[:t])
    return enc.run_blocks(x, mask[:, None, None, :].bool(), rotary)


@pytest.mark.parametrize("position,embed_norm", [("learned", False), ("rotary", False), ("rotary", True)])
@pytest.mark.parametrize("bias", [False, True])
def test_unpadded_encoder_equals_padded_encoder_at_real_tokens(position, embed_norm, bias):
    """Padded batches run unpadded, attention grouped by row length (``Unpadded``): the same outputs and
    gradients at every real token as the padded computation, with rows in four length groups, a full row,
    left padding and a hole; zeros at padded positions; an all-padding row gives zeros, not NaN."""
    torch.manual_seed(0)
    enc = TransformerEncoder(vocab_size=VOCAB, dim=32, layers=2, heads=4, ffn_dim=64, max_len=64, position=position,
                             bias=bias, embed_norm=embed_norm)
    assert (enc.emb_norm is not None) == embed_norm
    if embed_norm:  # not the identity it starts as, so that the reference shows the norm is applied
        torch.nn.init.normal_(enc.emb_norm.weight, 1.0, 0.5)
    ids = torch.randint(5, VOCAB, (7, 64))
    mask = torch.zeros(7, 64, dtype=torch.long)
    for row, (a, b) in enumerate([(0, 3), (0, 17), (0, 40), (0, 64), (0, 16), (9, 30), (0, 12)]):
        mask[row, a:b] = 1
    mask[6, 5] = 0  # a hole
    real = mask.bool()
    out = enc(ids, mask)
    ref = _padded_reference(enc, ids, mask)
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
    assert out[~real].abs().max() == 0
    grads = torch.autograd.grad(enc(ids, mask)[real].square().sum(), list(enc.parameters()))
    grads_ref = torch.autograd.grad(_padded_reference(enc, ids, mask)[real].square().sum(), list(enc.parameters()))
    for (name, _), a, b in zip(enc.named_parameters(), grads_ref, grads, strict=True):
        # float32 rounding of sums over different groupings: up to ~2e-6 of the tensor's largest entry
        scale = max(1.0, float(a.abs().max()))
        torch.testing.assert_close(b, a, atol=1e-5 * scale, rtol=1e-4, msg=name)
    mask[2] = 0
    empty = enc(ids, mask)
    assert torch.isfinite(empty).all() and empty[2].abs().max() == 0


def test_rotary_function_is_the_written_out_rotation_values_and_gradients():
    """``Rotary`` (a backward of its own: the opposite rotation) equals autograd through the written-out formula,
    on a permuted view as the model passes it; gradcheck in fp64; a rotation keeps each pair's norm."""
    from ptcli.models.transformer import apply_rotary, rotary_tables

    torch.manual_seed(0)
    cos, sin = (t.double() for t in rotary_tables(16, 8))
    qkv = torch.randn(2, 16, 3, 4, 8, dtype=torch.float64, requires_grad=True)
    q = qkv[:, :, 0].transpose(1, 2)  # [2, 4, 16, 8], not contiguous
    q1, q2 = q.chunk(2, -1)
    written = torch.cat([q1 * cos - q2 * sin, q2 * cos + q1 * sin], -1)
    ours = apply_rotary(q, cos, sin)
    torch.testing.assert_close(ours, written)
    g = torch.randn_like(written)
    torch.testing.assert_close(torch.autograd.grad(ours, qkv, g)[0], torch.autograd.grad(written, qkv, g)[0])
    o1, o2 = ours.chunk(2, -1)
    torch.testing.assert_close(o1.square() + o2.square(), q1.square() + q2.square())
    assert torch.autograd.gradcheck(lambda t: apply_rotary(t, cos, sin), (q.detach().clone().requires_grad_(),))


def test_rotary_under_torch_compile_takes_the_written_out_form(monkeypatch):
    """Inductor cannot lower ``Rotary``'s ``out=`` writes: while compiling, ``apply_rotary`` is the plain formula
    (same values, and no ``Rotary`` node in the graph). Checked by faking the compiling state: compiling itself
    takes ~30 s."""
    from ptcli.models.transformer import apply_rotary, rotary_tables

    torch.manual_seed(0)
    cos, sin = rotary_tables(16, 8)
    x = torch.randn(2, 4, 16, 8, requires_grad=True)
    eager = apply_rotary(x, cos, sin)
    assert type(eager.grad_fn).__name__ == "RotaryBackward"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = apply_rotary(x, cos, sin)
    assert type(traced.grad_fn).__name__ == "CatBackward0"
    torch.testing.assert_close(traced, eager)


def test_attend_under_a_cpu_bf16_autocast_is_attention_in_bf16():
    """On CPU under a bf16 autocast ``attend`` runs attention written out in bf16: output and gradients within
    bf16 rounding of fp32 SDPA, with a key mask that it honours (values at masked keys change nothing)."""
    import torch.nn.functional as F

    from ptcli.models.transformer import attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 16, 8, requires_grad=True) for _ in range(3))
    mask = (torch.arange(16) < torch.tensor([16, 5, 9])[:, None])[:, None, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(q, k, v, mask, 0.0)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    g = torch.randn_like(ref)
    for ours, theirs in zip(torch.autograd.grad(out.float(), (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g),
                            strict=True):
        torch.testing.assert_close(ours, theirs, atol=6e-2, rtol=6e-2)
    v2 = v.detach().clone()
    v2[1, :, 5:] = 100.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(attend(q, k, v2, mask, 0.0)[1], out[1].detach())


@pytest.mark.parametrize("kwargs, key", [({"dim": 30, "heads": 4}, "model.heads"), ({"layers": 0}, "model.layers"),
                                         ({"dim": -8}, "model.dim")])
def test_encoder_rejects_bad_sizes(kwargs, key):
    with pytest.raises(UsageError, match=key):
        TransformerEncoder(vocab_size=VOCAB, **kwargs)


def test_label_map_orders_ints_numerically_and_rejects_unseen():
    lm = LabelMap.fit([10, 2, 2, 1])
    assert lm.names == ["1", "2", "10"]
    assert lm.encode([2, 10], "x").tolist() == [1, 2]
    with pytest.raises(UsageError, match="'7'"):
        lm.encode([7], "data.label_column [test]")
    with pytest.raises(UsageError, match="only one class"):
        LabelMap.fit(["a", "a"])


def test_stratified_subsample_counts_and_nesting():
    labels = np.repeat(np.arange(5), 40)
    small = stratified_subsample(labels, 4, seed=0)
    big = stratified_subsample(labels, 16, seed=0)
    assert np.bincount(labels[small]).tolist() == [4] * 5
    assert set(small) <= set(big)  # budgets are nested: 4/class is a subset of 16/class
    assert not np.array_equal(small, stratified_subsample(labels, 4, seed=1))


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    model = torch.nn.Linear(4, 3)
    path = save_checkpoint(tmp_path, "last", model, state={"step": 3})
    other = torch.nn.Linear(4, 3)
    load_into(other, path)
    assert torch.equal(other.weight, model.weight)
    assert (path / "COMPLETE").is_file() and not list(tmp_path.glob(".tmp-*"))
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="truncated or corrupted"):
        load_into(other, path)


def test_unsafe_targets_are_refused_before_import(tmp_path):
    marker = tmp_path / "pwned"
    cfg = OmegaConf.create({"model": {"_target_": "os.system", "_args_": [f"touch {marker}"]}})
    with pytest.raises(UsageError, match="os.system"):
        instantiate(cfg.model, "model")
    assert not marker.exists()
    with pytest.raises(UsageError):
        check_targets(OmegaConf.create({"a": [{"_target_": "ptcli.__class__"}]}))
    check_targets(OmegaConf.create({"model": {"_target_": "ptcli.models.transformer.TransformerEncoder"}}))


def test_checkpoint_recovers_from_kill_between_renames(tmp_path):
    import os

    from ptcli.checkpoint import is_complete, recover

    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, "last", model, state={"step": 1})
    os.replace(tmp_path / "last", tmp_path / ".old-last-123")  # the state right after the first rename
    recover(tmp_path, "last")
    assert is_complete(tmp_path / "last")


def test_layer_decay_scales_lr_from_the_top_block_down():
    from ptcli.models.classifier import SequenceClassifier
    from ptcli.models.transformer import TransformerEncoder
    from ptcli.optim import build_adamw

    model = SequenceClassifier(TransformerEncoder(50, dim=16, layers=3, heads=2, ffn_dim=32, max_len=8), 4)
    opt = build_adamw(model, 1e-3, 0.01, [0.9, 0.98], 1e-6, head_lr=1e-2, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    enc = model.encoder
    assert lr_of[id(model.head[1].weight)] == 1e-2
    assert lr_of[id(enc.ln_f.weight)] == pytest.approx(1e-3)
    assert [lr_of[id(b.attn.qkv.weight)] for b in enc.blocks] == pytest.approx([1e-3 / 8, 1e-3 / 4, 1e-3 / 2])
    assert lr_of[id(enc.tok_emb.weight)] == pytest.approx(1e-3 / 16)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    no_decay = [g for g in opt.param_groups if any(p is enc.ln_f.weight for p in g["params"])]
    assert no_decay[0]["weight_decay"] == 0.0
    with pytest.raises(UsageError, match="layer_decay"):
        build_adamw(model, 1e-3, 0.01, [0.9, 0.98], 1e-6, layer_decay=1.5)

"""objective=electra: replaced-token detection with a small generator (ptcli/objectives/electra.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TRANSFORMER, read_manifest, read_metrics
from test_resume_exact import EVERY_STEP, _assert_bitwise_equal, _interrupt, _resume_alone, _train_losses

from ptcli.models.transformer import TransformerEncoder
from ptcli.objectives.electra import Electra, sample_tokens
from ptcli.objectives.mlm import IGNORE

SPECIALS = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask
MASK = 4


def _electra(dim=32, heads=2, layers=2, ffn_dim=64, vocab=50, **kw) -> Electra:
    torch.manual_seed(0)
    enc = TransformerEncoder(vocab, dim=dim, layers=layers, heads=heads, ffn_dim=ffn_dim, max_len=32)
    return Electra(enc, SPECIALS, MASK, pad_id=0, **kw)


def _sizes(body) -> tuple[int, int, int, int]:
    return body.dim, len(body.blocks), body.blocks[0].attn.heads, body.blocks[0].mlp[0].out_features


@pytest.mark.parametrize(("scale", "model", "generator"), [
    (0.25, (128, 4, 4, 512), (32, 4, 1, 128)),  # the defaults: model=transformer, generator_scale=0.25
    (0.5, (32, 2, 2, 64), (16, 2, 1, 32)),
])
def test_generator_is_the_configured_fraction_of_the_discriminator(scale, model, generator):
    dim, layers, heads, ffn = model
    m = _electra(dim=dim, heads=heads, layers=layers, ffn_dim=ffn, generator_scale=scale)
    assert _sizes(m.encoder) == model and _sizes(m.generator) == generator
    # No embedding table of its own: it reads the discriminator's (tied, as in the paper), and its state lives
    # under generator., apart from the encoder.* keys that finetune/embed load.
    assert not any(isinstance(mod, torch.nn.Embedding) for mod in m.generator.modules())
    keys = m.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"encoder", "generator", "disc_head"}
    n_gen = sum(p.numel() for p in m.generator.parameters())
    n_disc = sum(p.numel() for n, p in m.encoder.named_parameters() if not n.startswith("tok_emb"))
    assert n_gen < n_disc * scale * 1.5


def test_replaced_only_at_masked_positions_and_labels_are_sample_differs_from_original():
    m = _electra()
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(5, 50, (8, 32))
    blocks[:, 0] = 2
    inputs, labels, uniform = m.mask(blocks, generator=gen)
    where = labels != IGNORE
    assert where.any() and not where[:, 0].any()  # specials are never selected
    _, corrupted, replaced, masked = m.corrupt(inputs, labels, uniform)
    assert torch.equal(masked, where)
    assert torch.equal(corrupted[~where], blocks[~where])  # only masked positions change
    assert torch.equal(replaced, corrupted != blocks)  # label 1 exactly where the token differs
    assert replaced.any()

    # A generator that always proposes the original token: nothing counts as replaced (the paper's rule) ...
    same = torch.full((4, 32), 7)
    inputs, labels, uniform = m.mask(same, generator=gen)
    with torch.no_grad():
        m.generator.decoder_bias[7] = 1e4
    _, corrupted, replaced, masked = m.corrupt(inputs, labels, uniform)
    assert masked.any() and torch.equal(corrupted, same) and not replaced.any()
    # ... and one that always proposes another token: replaced is exactly the masked positions.
    with torch.no_grad():
        m.generator.decoder_bias[7], m.generator.decoder_bias[9] = 0.0, 1e4
    _, corrupted, replaced, masked = m.corrupt(inputs, labels, uniform)
    assert torch.equal(replaced, masked) and (corrupted[masked] == 9).all()


def test_no_gradient_from_the_discriminator_into_the_generator():
    blocks = torch.randint(5, 50, (4, 32))
    grads = []
    for weight in (50.0, 0.0):
        m = _electra(disc_weight=weight).train()
        args = m.mask(blocks, generator=torch.Generator().manual_seed(1))
        m(*args)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in m.generator.named_parameters()})
        if weight:
            assert all(p.grad is not None for p in m.disc_head.parameters())
    # The generator's gradients are those of its own MLM loss, whatever the discriminator's weight.
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_sampling_follows_the_generator_distribution_and_the_seed():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    draw = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    samples = sample_tokens(logits, draw)
    freq = torch.bincount(samples, minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.015, rtol=0)
    again = sample_tokens(logits, torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(samples, again)


def test_eval_metrics_are_the_objective_s_own():
    from ptcli.objectives.mlm import evaluate_mlm

    m = _electra().eval()
    out = evaluate_mlm(m, torch.randint(5, 50, (10, 32)), 4, torch.device("cpu"))
    assert set(out) == {"loss", "gen_loss", "disc_loss", "gen_mlm_acc", "disc_acc", "replaced"}
    assert out["loss"] == pytest.approx(out["gen_loss"] + 50 * out["disc_loss"])
    assert 0 <= out["disc_acc"] <= 1 and 0 < out["replaced"] < 0.3


def test_electra_refuses_an_encoder_it_cannot_mirror():
    from ptcli.errors import UsageError

    class GRU(torch.nn.Module):
        dim, vocab_size, max_len = 16, 50, 32

        def __init__(self):
            super().__init__()
            self.tok_emb = torch.nn.Embedding(50, 16)

    with pytest.raises(UsageError, match="model=transformer"):
        Electra(GRU(), SPECIALS, MASK)


ELECTRA = ["pretrain", "objective=electra", "debug=smoke", *TINY_TRANSFORMER]


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_electra_pretrain_finetune_evaluate_export(ptcli, tmp_path):
    run = tmp_path / "electra"
    r = ptcli(*ELECTRA, f"hydra.run.dir={run}")
    assert r.code == 0, r
    val = [e for e in read_metrics(run) if e["split"] == "val"]
    assert {"loss", "gen_mlm_acc", "disc_acc", "gen_loss", "disc_loss"} <= set(val[-1])
    assert "val/disc_acc" in read_manifest(run)["metrics"]

    ft = tmp_path / "ft"
    r = ptcli("finetune", "debug=smoke", f"pretrained={run}", "pooling=cls", f"hydra.run.dir={ft}")
    assert r.code == 0, r
    # (that it loads the discriminator, encoder.*, and not the generator: test_finetune_loads_the_discriminator_only)
    from safetensors.torch import load_file

    pre = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert any(k.startswith("generator.") for k in pre)  # checkpoints keep the generator (exact resume)
    ev = tmp_path / "ev"
    r = ptcli("evaluate", str(ft), f"hydra.run.dir={ev}")
    assert r.code == 0, r
    assert "test/accuracy" in read_manifest(ev)["metrics"]
    r = ptcli("evaluate", str(run), f"hydra.run.dir={tmp_path / 'ev_pre'}")
    assert r.code == 0 and "test/disc_acc" in read_manifest(tmp_path / "ev_pre")["metrics"], r

    r = ptcli("export", str(run), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert r.code != 0 and "replaced-token detector" in r.stdout + r.stderr, r
    r = ptcli("export", str(ft), "--format", "hf", "--out", str(tmp_path / "hf_ft"))
    assert r.code == 0, r


def test_finetune_loads_the_discriminator_only(tmp_path):
    """``finetune pretrained=`` / ``embed`` load ``encoder.`` keys: the discriminator's, never the generator's."""
    from ptcli.checkpoint import load_into, save_checkpoint

    m = _electra()
    path = save_checkpoint(tmp_path, "last", m)
    fresh = TransformerEncoder(50, dim=32, layers=2, heads=2, ffn_dim=64, max_len=32)
    assert load_into(fresh, path, strict=True, prefix="encoder.") == []
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, m.encoder.state_dict()[k]), k


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_electra_resumed_is_bitwise_exact(ptcli, tmp_path):
    args = [*ELECTRA, "trainer.max_steps=8", "trainer.eval_every=4", "seed=5", *EVERY_STEP]
    full, cut = tmp_path / "full", tmp_path / "cut"
    r = ptcli(*args, f"hydra.run.dir={full}")
    assert r.code == 0, r
    stopped = _interrupt(ptcli, args, cut, at_step=3)
    _, manifest = _resume_alone(ptcli, "pretrain", cut)
    assert manifest["resumed"][0]["step"] == stopped
    _assert_bitwise_equal(full, cut)  # discriminator, generator and head
    assert _train_losses(full) == _train_losses(cut)
    assert read_manifest(full)["metrics"] == manifest["metrics"]

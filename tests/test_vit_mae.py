"""model=vit and objective=mae: the ViT's shapes, positions and patch-size check; MAE's masking and the "compute only
what the loss reads" rule (the encoder sees the visible patches only, the loss reads the masked ones only); each
end to end (pretrain -> finetune pretrained= -> evaluate, embed, report) at tiny scale, in-process; and an MAE run
resumed from a mid-run checkpoint equal to the uninterrupted one (the masks come from the recipe's generator)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import read_manifest, read_metrics
from safetensors.torch import load_file

from ptcli.errors import UsageError
from ptcli.models.convnet import ConvNet
from ptcli.models.transformer import TransformerBody, TransformerEncoder
from ptcli.models.vit import ViT, rotary_2d
from ptcli.objectives.mae import MAE, kept_count, pixel_targets, random_masking

TINY_VIT = dict(dim=32, heads=2, layers=2, ffn_dim=64)
TINY_ARGS = ["model=vit", "data=digits", "model.dim=32", "model.heads=2", "model.layers=2", "model.ffn_dim=64",
             "trainer.batch_size=32", "trainer.log_every=1"]
OBJECTIVE_ARGS = {"simclr": ["objective=simclr", "objective.proj_hidden=32", "objective.proj_dim=16"],
                  "mae": ["objective=mae", "objective.decoder_dim=16", "objective.decoder_ffn_dim=32",
                          "objective.decoder_heads=2"]}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_vit(**kw) -> ViT:
    torch.manual_seed(0)
    return ViT(**{**TINY_VIT, **kw}).eval()


# ------------------------------------------------------------------------------------------------------------ ViT
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_vit_features_and_the_encoder_on_a_subset_of_patches(pooling):
    vit = tiny_vit(pooling=pooling)
    assert isinstance(vit, TransformerBody) and issubclass(TransformerEncoder, TransformerBody)  # one block stack
    x = torch.rand(3, 1, 8, 8, generator=gen(0))
    assert vit(x).shape == (3, 32)
    assert vit(torch.rand(2, 1, 12, 8)).shape == (2, 32)  # any size the patch divides (no grid-sized parameter)
    patches = vit.patchify(x)
    assert patches.shape == (3, 16, 4)
    assert torch.equal(patches[1, 5], x[1, 0, 2:4, 2:4].flatten())  # row-major patches: patch (1, 1)
    # Every patch kept, in any order: the same hidden states as forward, before pooling.
    keep = torch.stack([torch.randperm(16, generator=gen(i)) for i in range(3)])
    hidden = vit.forward_visible(patches, keep, (4, 4))
    lead = 1 if pooling == "cls" else 0
    assert hidden.shape == (3, 16 + lead, 32)
    back = hidden[:, lead:].gather(1, keep.argsort(1)[..., None].expand(-1, -1, 32))
    assert torch.allclose(vit.pool(torch.cat([hidden[:, :lead], back], 1)), vit(x), atol=1e-5)
    # Positions matter: the same patches in another arrangement give other features.
    assert not torch.allclose(vit(x.flip(-1)), vit(x), atol=1e-3)


def test_vit_2d_rotary_tables_turn_with_row_and_column():
    cos, sin = rotary_2d(2, 3, head_dim=8, cls=True)
    assert cos.shape == (7, 4) and torch.equal(cos[0], torch.ones(4)) and torch.equal(sin[0], torch.zeros(4))
    angles = torch.atan2(sin, cos)
    # Patch (row 1, column 2) is row-major index 5 (+1 for [CLS]); rows and columns count from 1, so its
    # angles at frequency 1 are 2 (row half) and 3 (column half).
    assert angles[6, 0].item() == pytest.approx(2.0) and angles[6, 2].item() == pytest.approx(3.0)
    assert torch.equal(angles[1, :2], angles[3, :2])  # same row, other column: the row half is equal


def test_vit_refuses_a_patch_size_that_does_not_divide_the_images_and_bad_sizes():
    with pytest.raises(UsageError, match=r"model\.patch_size=3 does not divide the images' size 8x8 \(data\.size\)"):
        tiny_vit(patch_size=3)(torch.rand(2, 1, 8, 8))
    with pytest.raises(UsageError, match=r"model\.in_channels=1"):
        tiny_vit()(torch.rand(2, 3, 8, 8))
    with pytest.raises(UsageError, match="multiple of 4"):
        ViT(dim=24, heads=4)
    with pytest.raises(UsageError, match=r"model\.pooling"):
        ViT(**TINY_VIT, pooling="max")
    with pytest.raises(UsageError, match=r"model\.patch_size"):
        ViT(patch_size=0)


def test_pretrain_names_model_patch_size_and_data_size(ptcli, tmp_path):
    r = ptcli("pretrain", *TINY_ARGS, *OBJECTIVE_ARGS["mae"], "model.patch_size=3", "trainer.max_steps=1",
              f"hydra.run.dir={tmp_path / 'run'}")
    assert r.code == 2 and "model.patch_size=3" in r.stderr and "data.size" in r.stderr, r


# ------------------------------------------------------------------------------------------------------------ MAE
def tiny_mae(**kw) -> MAE:
    vit = tiny_vit(pooling=kw.pop("pooling", "mean"))
    torch.manual_seed(1)
    return MAE(vit, decoder_dim=16, decoder_heads=2, decoder_ffn_dim=32, **kw)


def test_masking_is_per_image_uniform_and_follows_the_generator():
    keep, masked = random_masking(5, 16, 0.75, gen(0))
    assert keep.shape == (5, 4) and masked.shape == (5, 16) and (masked.sum(1) == 12).all()
    assert not masked.gather(1, keep).any()
    assert len({tuple(sorted(k.tolist())) for k in keep}) > 1  # each image its own mask
    assert torch.equal(random_masking(5, 16, 0.75, gen(0))[0], keep)
    assert not torch.equal(random_masking(5, 16, 0.75, gen(1))[0], keep)
    assert kept_count(16, 0.99) == 1 and kept_count(16, 0.01) == 15  # one visible, one masked at least


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_mae_encoder_sees_only_visible_patches_and_the_loss_reads_only_masked_ones(pooling):
    mae = tiny_mae(pooling=pooling)
    x = torch.rand(2, 1, 8, 8, generator=gen(0))
    keep, masked = random_masking(2, 16, 0.75, gen(1))
    seen = []
    mae.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    last_decoder_rows = []
    mae.decoder[-1].register_forward_hook(lambda m, args, out: last_decoder_rows.append(out.shape[0]))
    pred, target = mae.reconstruct(x, keep, masked)
    assert seen == [4 + (pooling == "cls")]  # 4 of 16 patches (+ [CLS]) enter the encoder
    assert last_decoder_rows == [24] and pred.shape == target.shape == (24, 4)  # 2 images x 12 masked patches
    assert torch.equal(target, mae.encoder.patchify(x)[masked])

    def loss_of(images):
        p, t = mae.reconstruct(images, keep, masked)
        return torch.nn.functional.mse_loss(p, t).item(), p

    base, base_pred = loss_of(x)
    hidden_patch, shown_patch = int(masked[0].nonzero()[0]), int(keep[0, 0])

    def changed(patch):
        y = x.clone()
        r, c = divmod(patch, 4)
        y[0, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] = 1 - y[0, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
        return y

    # A masked patch: the encoder and decoder never see it (same predictions), but it is a target.
    loss, p = loss_of(changed(hidden_patch))
    assert torch.equal(p, base_pred) and loss != pytest.approx(base, abs=1e-7)
    # A visible patch: an input, not a target -- what changes is the predictions only.
    p_vis, t_vis = mae.reconstruct(changed(shown_patch), keep, masked)
    assert torch.equal(t_vis, target) and not torch.equal(p_vis, base_pred)


def test_mae_forward_backward_reproducible_norm_pix_and_validation():
    mae = tiny_mae()
    x = torch.rand(4, 1, 8, 8, generator=gen(0))
    out = mae(x, generator=gen(3))
    assert out["count"] == 4 and torch.isfinite(out["loss"])
    assert mae(x, generator=gen(3))["loss"].item() == out["loss"].item()
    assert mae(x, generator=gen(4))["loss"].item() != out["loss"].item()
    out["loss"].backward()
    assert mae.encoder.patch_emb.weight.grad is not None and mae.mask_token.grad is not None
    t = pixel_targets(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), norm_pix=True)
    assert t.mean().item() == pytest.approx(0.0) and t.var().item() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(UsageError, match=r"objective=mae .*model=vit"):
        MAE(ConvNet(width=4, stages=2))
    with pytest.raises(UsageError, match=r"objective\.mask_ratio"):
        tiny_mae(mask_ratio=1.0)
    with pytest.raises(UsageError, match=r"objective\.decoder_dim"):
        MAE(tiny_vit(), decoder_dim=18, decoder_heads=2)


def test_mae_with_a_convnet_is_a_usage_error(ptcli, tmp_path):
    r = ptcli("pretrain", "model=convnet", "objective=mae", "data=digits", "trainer.max_steps=1",
              f"hydra.run.dir={tmp_path / 'run'}")
    assert r.code == 2 and "model=vit" in r.stderr, r


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("objective", ["simclr", "mae"])
@pytest.mark.slow  # several training runs (seconds of CPU)
def test_vit_pretrain_finetune_evaluate_embed_report(ptcli, objective, tmp_path):
    run = tmp_path / "runs" / "pretrain"
    r = ptcli("pretrain", *TINY_ARGS, *OBJECTIVE_ARGS[objective], "trainer.max_steps=4", "trainer.eval_every=2",
              f"hydra.run.dir={run}")
    assert r.code == 0, r
    m = read_manifest(run)
    assert m["status"] == "completed" and {"val/knn_acc", "val/knn_acc_init", "val/loss"} <= set(m["metrics"])
    ft = tmp_path / "runs" / "ft"
    r = ptcli("finetune", f"pretrained={run}", "data.labels_per_class=2", "trainer.max_steps=2",
              "trainer.eval_every=2", f"hydra.run.dir={ft}")
    assert r.code == 0, r
    assert "test/accuracy" in read_manifest(ft)["metrics"]
    weights = load_file(str(ft / "checkpoints" / "best" / "model.safetensors"))
    assert "encoder.patch_emb.weight" in weights and not any(k.startswith("decoder") for k in weights)
    r = ptcli("evaluate", str(run), "--json", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.code == 0, r
    assert {"test/knn_acc", "test/linear_acc"} <= set(json.loads(r.stdout))
    data = tmp_path / "few.npz"
    np.savez(data, x=np.random.default_rng(0).integers(0, 255, (5, 8, 8), dtype=np.uint8))
    r = ptcli("embed", str(run), "--input", str(data), "--out", str(tmp_path / "emb.npy"))
    assert r.code == 0, r
    assert np.load(tmp_path / "emb.npy").shape == (5, 32)
    r = ptcli("report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"))
    assert r.code == 0, r


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_mae_resumed_from_a_mid_run_checkpoint_matches_the_uninterrupted_run(ptcli, tmp_path):
    args = ["pretrain", *TINY_ARGS, *OBJECTIVE_ARGS["mae"], "trainer.max_steps=6", "trainer.eval_every=3",
            "seed=1", "trainer.checkpoint_every=1", "trainer.keep_last=8"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    r = ptcli(*args, f"hydra.run.dir={full}")
    assert r.code == 0, r
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "last")
    shutil.copytree(cut / "checkpoints" / "step-00000003", cut / "checkpoints" / "last")
    (cut / "run.json").write_text(json.dumps({**read_manifest(cut), "status": "interrupted", "step": 3}))
    r = ptcli("pretrain", f"resume={cut}")
    assert r.code == 0, r
    wa = load_file(str(full / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(cut / "checkpoints" / "last" / "model.safetensors"))
    assert "mask_token" in wa and wa.keys() == wb.keys()
    assert not [k for k in wa if not torch.equal(wa[k], wb[k])]
    losses = [[(e["step"], e["loss"]) for e in read_metrics(d) if e["split"] == "train"] for d in (full, cut)]
    assert losses[0] == losses[1] and len(losses[0]) == 6

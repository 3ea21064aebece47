"""The vision objectives besides SimCLR (VICReg, Barlow Twins, BYOL): their losses against hand computations,
BYOL's momentum target and its schedule, the image recipe for any objective that declares modality "image",
and each objective end to end (pretrain -> finetune pretrained= -> evaluate) at tiny scale, in-process."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import read_manifest, read_metrics
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

import ptcli.config  # noqa: F401  (registers the schemas the YAML files extend)
from ptcli.builders import build_image_objective
from ptcli.errors import UsageError
from ptcli.launch import conf_dir
from ptcli.models.convnet import ConvNet
from ptcli.objectives.barlow_twins import BarlowTwins, barlow_twins_loss, cross_correlation
from ptcli.objectives.byol import BYOL, byol_loss, byol_tau
from ptcli.objectives.vicreg import VICReg, vicreg_terms
from ptcli.optim import build_adamw

NEW = ["vicreg", "barlow_twins", "byol"]
# A convnet and heads small enough that a step takes milliseconds.
TINY_NET = ["model=convnet", "data=digits", "model.width=8", "model.stages=2", "objective.proj_hidden=32",
            "objective.proj_dim=16", "trainer.batch_size=32", "trainer.log_every=1"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------------ VICReg
def test_vicreg_terms_match_a_hand_computation():
    z1 = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    z2 = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    terms = vicreg_terms(z1, z2)
    # invariance: squared differences 0, 1, 0, 1 over 4 entries.
    assert terms["invariance"].item() == pytest.approx(0.5)
    # variance: every std of z1 is sqrt(2 + 1e-4) > 1 (no hinge); z2's second column is constant, std sqrt(1e-4),
    # hinge 1 - 0.01; each view's hinges are averaged over dimensions and halved.
    assert terms["variance"].item() == pytest.approx((0 + (0 + 0.99) / 2) / 2)
    # covariance: z1's covariance is [[2, 2], [2, 2]] (off-diagonal 2^2 + 2^2, / D=2), z2's is diagonal.
    assert terms["covariance"].item() == pytest.approx(4.0)
    model = VICReg(ConvNet(width=4, stages=2), proj_hidden=8, proj_dim=2, proj_layers=1)
    assert model.coeffs == {"invariance": 25.0, "variance": 25.0, "covariance": 1.0}
    total = sum(model.coeffs[k] * v for k, v in terms.items())
    assert total.item() == pytest.approx(25 * 0.5 + 25 * 0.2475 + 4.0)


def test_vicreg_forward_backward_and_validation():
    model = VICReg(ConvNet(width=4, stages=2), proj_hidden=16, proj_dim=8)
    out = model(torch.rand(6, 1, 8, 8), generator=gen(0))
    assert out["count"] == 6 and out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder.stem[0].weight.grad is not None
    assert len([m for m in model.expander if isinstance(m, torch.nn.Linear)]) == 3  # the paper's three layers
    with pytest.raises(UsageError, match=r"objective\.std_coeff"):
        VICReg(ConvNet(width=4), std_coeff=-1)
    with pytest.raises(UsageError, match=r"objective\.proj_layers"):
        VICReg(ConvNet(width=4), proj_layers=0)


# ------------------------------------------------------------------------------------------------ Barlow Twins
def _decorrelated(n: int, d: int, seed: int) -> torch.Tensor:
    """``[n, d]`` with centered, mutually orthogonal columns: its correlation matrix is the identity."""
    a = torch.randn(n, d, generator=gen(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(dim=0))
    return q.float() * 3 + 5  # any scale and offset: the loss standardizes each dimension


def test_barlow_twins_cross_correlation_is_pearson():
    z1, z2 = torch.randn(32, 4, generator=gen(0)), torch.randn(32, 4, generator=gen(1))
    expected = np.corrcoef(z1.numpy().T, z2.numpy().T)[:4, 4:]
    assert np.allclose(cross_correlation(z1, z2).numpy(), expected, atol=1e-4)


def test_barlow_twins_loss_is_zero_for_identical_decorrelated_views_and_larger_otherwise():
    z = _decorrelated(64, 8, seed=0)
    assert barlow_twins_loss(z, z.clone(), lambd=0.0051).item() == pytest.approx(0.0, abs=1e-3)
    # Independent views: the diagonal is far from 1.
    assert barlow_twins_loss(z, _decorrelated(64, 8, seed=1), lambd=0.0051).item() > 4
    # Identical but redundant views (a column repeated): the diagonal is 1, the off-diagonal is not 0.
    redundant = torch.cat([z[:, :4], z[:, :4]], dim=1)
    loss = barlow_twins_loss(redundant, redundant, lambd=0.5).item()
    assert loss == pytest.approx(0.5 * 8, abs=1e-2)  # four duplicated pairs, each C_ij = C_ji = 1


def test_barlow_twins_forward_backward_and_validation():
    model = BarlowTwins(ConvNet(width=4, stages=2), proj_hidden=16, proj_dim=8)
    assert model.lambd == 0.0051
    out = model(torch.rand(6, 1, 8, 8), generator=gen(0))
    assert out["count"] == 6 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder.stem[0].weight.grad is not None
    with pytest.raises(UsageError, match=r"objective\.lambd"):
        BarlowTwins(ConvNet(width=4), lambd=-0.1)


# -------------------------------------------------------------------------------------------------------- BYOL
def test_byol_tau_rises_by_a_cosine_from_tau_base_to_one():
    total = 100
    taus = [byol_tau(step, total, 0.99) for step in range(1, total + 1)]
    assert taus[0] == pytest.approx(0.99)  # the first update
    assert taus[50] == pytest.approx(1 - 0.01 * (math.cos(math.pi * 50 / total) + 1) / 2)
    assert all(a < b for a, b in zip(taus, taus[1:], strict=False)) and taus[-1] > 0.99999
    assert byol_tau(total + 5, total, 0.99) == 1.0  # past the end (a run resumed with more steps): held


def test_byol_loss_is_normalized_mse():
    q = torch.randn(5, 4, generator=gen(0))
    assert byol_loss(q, 3 * q).item() == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    assert byol_loss(q, -q).item() == pytest.approx(4.0)
    z = torch.randn(5, 4, generator=gen(1), requires_grad=True)
    byol_loss(q.requires_grad_(), z).backward()
    assert z.grad is None and q.grad is not None  # the target gets no gradient


def test_byol_target_moves_by_the_ema_rule_not_by_the_optimizer():
    torch.manual_seed(0)
    model = BYOL(ConvNet(width=4, stages=2), proj_hidden=16, proj_dim=8, pred_hidden=16, tau_base=0.9)
    names = [n for n, _ in model.named_parameters() if n.startswith("target_")]
    assert names and all(not p.requires_grad for n, p in model.named_parameters() if n in names)
    sd = model.state_dict()  # the target is part of checkpoints
    assert any(k.startswith("target_encoder.") for k in sd) and any(k.startswith("target_projector.") for k in sd)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_adamw(model, lr=1e-2, weight_decay=0.1, betas=[0.9, 0.98], eps=1e-6)
    model(torch.rand(8, 1, 8, 8), generator=gen(0))["loss"].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in names)
    opt.step()
    after_opt = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(torch.equal(after_opt[n], before[n]) for n in names)  # the optimizer left the target alone
    assert not torch.equal(after_opt["encoder.stem.0.weight"], before["encoder.stem.0.weight"])
    model.after_step(1, 10)
    tau = byol_tau(1, 10, 0.9)
    assert tau == pytest.approx(0.9)
    for online, target in model.online_target_pairs():
        name = next(n for n, p in model.named_parameters() if p is target)
        expected = tau * before[name] + (1 - tau) * online.detach()
        assert torch.allclose(target, expected, atol=1e-6), name
    assert not torch.equal(model.target_encoder.stem[0].weight, before["target_encoder.stem.0.weight"])
    with pytest.raises(UsageError, match=r"objective\.tau_base"):
        BYOL(ConvNet(width=4), tau_base=1.5)


# ------------------------------------------------------------------------------------------------ the recipe
def _compose(*overrides: str):
    with initialize_config_dir(str(conf_dir()), version_base=None):
        return compose(config_name="pretrain", overrides=["debug=smoke", *overrides])


@pytest.mark.parametrize("objective", NEW)
def test_the_image_builder_takes_any_objective_that_declares_images(objective):
    model = build_image_objective(_compose("model=convnet", f"objective={objective}", "data=digits"))
    assert type(model).modality == "image" and isinstance(model.encoder, ConvNet)


def test_the_image_builder_refuses_an_objective_for_text():
    with pytest.raises(UsageError, match="declares modality='text'"):
        build_image_objective(_compose("model=convnet", "objective=mlm", "data=digits"))


@pytest.fixture(scope="module", params=NEW)
def pretrained(request, ptcli, tmp_path_factory):
    run = tmp_path_factory.mktemp(request.param) / "pretrain"
    r = ptcli("pretrain", *TINY_NET, f"objective={request.param}", "trainer.max_steps=4", "trainer.eval_every=2",
              f"hydra.run.dir={run}")
    assert r.code == 0, r
    return request.param, run


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_pretrain_finetune_evaluate(ptcli, pretrained, tmp_path):
    objective, run = pretrained
    m = read_manifest(run)
    assert m["status"] == "completed" and f"objective={objective}" in m["overrides"]
    assert {"val/knn_acc", "val/knn_acc_init", "val/loss"} <= set(m["metrics"])
    assert [e["step"] for e in read_metrics(run) if e["split"] == "train"] == [1, 2, 3, 4]
    ft = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={run}", "data.labels_per_class=2", "trainer.max_steps=2",
              "trainer.eval_every=2", f"hydra.run.dir={ft}")
    assert r.code == 0, r
    assert "test/accuracy" in read_manifest(ft)["metrics"]
    r = ptcli("evaluate", str(run), "--json", f"hydra.run.dir={tmp_path / 'e'}")  # rebuilds the objective
    assert r.code == 0, r
    assert {"test/knn_acc", "test/linear_acc"} <= set(json.loads(r.stdout))


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_byol_resumed_from_a_mid_run_checkpoint_matches_the_uninterrupted_run(ptcli, tmp_path, monkeypatch):
    """The run keeps a snapshot of every step (trainer.keep_last); the resumed run starts from the step-3
    snapshot, which is what SIGTERM at step 3 writes (the same save of checkpoints/last)."""
    calls: list[tuple[int, int]] = []
    after_step = BYOL.after_step
    monkeypatch.setattr(BYOL, "after_step", lambda self, step, total: (calls.append((step, total)),
                                                                         after_step(self, step, total))[1])
    args = ["pretrain", *TINY_NET, "objective=byol", "trainer.max_steps=6", "trainer.eval_every=3", "seed=1",
            "trainer.checkpoint_every=1", "trainer.keep_last=8"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    r = ptcli(*args, f"hydra.run.dir={full}")
    assert r.code == 0, r
    assert calls == [(s, 6) for s in range(1, 7)]  # the trainer's hook, after every optimizer step
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "last")
    shutil.copytree(cut / "checkpoints" / "step-00000003", cut / "checkpoints" / "last")
    manifest = read_manifest(cut)
    (cut / "run.json").write_text(json.dumps({**manifest, "status": "interrupted", "step": 3}))
    r = ptcli("pretrain", f"resume={cut}")
    assert r.code == 0, r
    resumed = read_manifest(cut)
    assert resumed["status"] == "completed" and resumed["resumed"][0]["step"] == 3 and resumed["step"] == 6
    wa = load_file(str(full / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(cut / "checkpoints" / "last" / "model.safetensors"))
    assert any(k.startswith("target_encoder.") for k in wa) and wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    # The target is an average, not a copy, of the online network.
    assert not torch.equal(wa["target_encoder.stem.0.weight"], wa["encoder.stem.0.weight"])
    losses = [[(e["step"], e["loss"]) for e in read_metrics(run) if e["split"] == "train"] for run in (full, cut)]
    assert losses[0] == losses[1]
    assert {k: v for k, v in read_manifest(full)["metrics"].items() if "init" not in k} == resumed["metrics"]

"""GPU training options, tested on CPU: ``trainer.precision=fp16`` (autocast and a gradient scaler whose state a
resume restores; torch >= 2.3 computes float16 on CPU) and ``trainer.activation_checkpointing=true`` (the same
losses and gradients, lower peak memory), and the refusals of settings a device or model cannot honour."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import TINY_TRANSFORMER, read_manifest, read_metrics, require
from safetensors.torch import load_file

SMOKE = ["pretrain", "debug=smoke", *TINY_TRANSFORMER, "trainer.log_every=1", "trainer.eval_every=100"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """``data=text`` overrides for a small unlabeled corpus (pydocs costs a few seconds more per run)."""
    import random

    rng = random.Random(0)
    words = "open read write file path line sum square root number socket host port the of a to in".split()
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(30)) for _ in range(300)) + "\n")
    return ["data=text", f"data.train={path}", "tokenizer.vocab_size=200"]


def _scaler(run) -> dict:
    return torch.load(run / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)["scaler"]


def _train_losses(run) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in read_metrics(run) if e["split"] == "train"]


def test_fp16_on_cpu_trains_and_resume_restores_the_gradient_scaler(ptcli, corpus, tmp_path):
    run = tmp_path / "run"
    r = ptcli(*SMOKE, *corpus, "trainer.precision=fp16", "trainer.max_steps=3", f"hydra.run.dir={run}")
    assert r.code == 0, r
    logged = read_metrics(run)[0]
    assert logged["loss_scale"] == 2.0**16 and 1 < logged["loss"] < math.log(200)  # finite, near chance
    first = _scaler(run)
    assert first["_growth_tracker"] == 3  # three steps without an overflow since the scale last changed
    weights = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast: fp32 weights, fp16 compute
    r = ptcli("pretrain", f"resume={run}", "trainer.max_steps=6")
    assert r.code == 0, r
    assert read_manifest(run)["status"] == "completed"
    # A scaler started afresh on resume would count 3, not 6.
    assert _scaler(run) == {**first, "_growth_tracker": 6}


def test_precision_the_device_cannot_do_is_refused():
    from omegaconf import OmegaConf

    from ptcli.errors import UsageError
    from ptcli.trainer import TrainerConfig, check_precision, check_trainer_config

    with warnings.catch_warnings():  # supported: no error (a warning where this CPU emulates fp16)
        warnings.simplefilter("ignore")
        check_precision(OmegaConf.create({"precision": "fp16"}), torch.device("cpu"))
    with pytest.raises(UsageError, match=r"trainer.precision=fp16: .* on meta"):
        check_precision(OmegaConf.create({"precision": "fp16"}), torch.device("meta"))
    with pytest.raises(UsageError, match="trainer.precision must be one of fp32, bf16, fp16"):
        check_trainer_config(OmegaConf.structured(TrainerConfig(precision="fp8")))
    # (torch 2.13's ShardedGradScaler fails inside the fused AdamW: measured under torchrun, gloo)
    with pytest.raises(UsageError, match="trainer.precision=fp16 with trainer.strategy=fsdp .*precision=bf16"):
        check_trainer_config(OmegaConf.structured(TrainerConfig(precision="fp16", strategy="fsdp")))


@pytest.mark.parametrize("flags, warns", [
    ({"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False}, True),  # AVX2-only EPYC
    ({"_is_avx512_bf16_supported": True, "_is_amx_tile_supported": False}, False),  # Zen 4
    ({"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": True}, False),  # Xeon with AMX
    ({"_is_avx512_bf16_supported": None, "_is_amx_tile_supported": None}, False),  # a torch without the probes
])
def test_bf16_on_a_cpu_that_emulates_it_warns_and_names_the_fix(monkeypatch, flags, warns):
    import platform

    from omegaconf import OmegaConf

    from ptcli.trainer import check_precision

    # The hardware cannot be changed here: its feature flags as torch reports them can.
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for name, value in flags.items():
        if value is None:
            monkeypatch.delattr(torch.cpu, name)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda value=value: value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_precision(OmegaConf.create({"precision": "bf16"}), torch.device("cpu"))
        check_precision(OmegaConf.create({"precision": "fp32"}), torch.device("cpu"))  # never warns
    said = [str(w.message) for w in caught if "native" in str(w.message)]
    if warns:
        assert len(said) == 1 and "trainer.precision=bf16" in said[0] and "use trainer.precision=fp32" in said[0]
    else:
        assert said == []


def test_activation_checkpointing_gives_the_same_losses(ptcli, corpus, tmp_path):
    # MLM pre-training: the last block's masked-positions path (only=) is checkpointed too; dropout on, so the
    # recomputation must replay the same dropout masks.
    args = [*SMOKE, *corpus, "model.dropout=0.1", "trainer.max_steps=3"]
    r = ptcli(*args, f"hydra.run.dir={tmp_path / 'plain'}")
    assert r.code == 0, r
    r = ptcli(*args, "trainer.activation_checkpointing=true", f"hydra.run.dir={tmp_path / 'ckpt'}")
    assert r.code == 0, r
    plain, ckpt = _train_losses(tmp_path / "plain"), _train_losses(tmp_path / "ckpt")
    assert len(plain) == 3 and [s for s, _ in plain] == [s for s, _ in ckpt]
    assert [loss for _, loss in ckpt] == pytest.approx([loss for _, loss in plain], rel=1e-5)


def peak_allocated(fn) -> int:
    """Peak bytes held by torch's CPU allocator while ``fn`` runs (the profiler's allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    now = peak = 0
    for e in events:
        now += e.nbytes()
        peak = max(peak, now)
    return peak


def test_activation_checkpointing_same_gradients_less_memory():
    from ptcli.models.transformer import TransformerEncoder

    torch.manual_seed(0)
    encoder = TransformerEncoder(500, dim=64, heads=4, layers=4, ffn_dim=256)
    ids = torch.randint(0, 500, (8, 128))
    only = torch.rand(8, 128) < 0.15

    def step(checkpointing: bool):
        encoder.zero_grad(set_to_none=True)
        encoder.set_activation_checkpointing(checkpointing)
        peak = peak_allocated(lambda: encoder(ids, only=only).square().mean().backward())
        return peak, [p.grad.clone() for p in encoder.parameters()]

    peak_plain, grads_plain = step(False)
    peak_ckpt, grads_ckpt = step(True)
    for a, b in zip(grads_plain, grads_ckpt, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # Kept activations: four blocks' worth without, one block's (plus block inputs) with.
    assert peak_ckpt < 0.6 * peak_plain, (peak_ckpt, peak_plain)


def test_activation_checkpointing_of_a_padded_batch_same_gradients():
    """Padded batches run unpadded (``Unpadded``: real tokens only, attention grouped by row length); checkpointing
    recomputes those blocks with the same dropout masks: the same gradients."""
    from ptcli.models.transformer import TransformerEncoder

    torch.manual_seed(0)
    encoder = TransformerEncoder(500, dim=64, heads=4, layers=3, ffn_dim=128, dropout=0.1).train()
    ids = torch.randint(0, 500, (6, 64))
    mask = (torch.arange(64) < torch.tensor([5, 64, 20, 33, 9, 40])[:, None]).long()
    grads = []
    for checkpointing in (False, True):
        encoder.zero_grad(set_to_none=True)
        encoder.set_activation_checkpointing(checkpointing)
        torch.manual_seed(1)  # the same dropout masks in both runs
        encoder(ids, mask)[mask.bool()].square().mean().backward()
        grads.append([p.grad.clone() for p in encoder.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_activation_checkpointing_of_a_transformers_encoder_same_gradients():
    from ptcli.models.hf import HFEncoder

    transformers = require("transformers", "the `hf` extra is not installed")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, hidden_dropout_prob=0.1)
    torch.manual_seed(0)
    encoder = HFEncoder("unused", model=transformers.BertModel(config, add_pooling_layer=False)).train()
    ids = torch.randint(0, 100, (4, 16))

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        encoder.zero_grad(set_to_none=True)
        encoder.set_activation_checkpointing(checkpointing)
        torch.manual_seed(1)
        encoder(ids).square().mean().backward()
        return [p.grad.clone() for p in encoder.parameters()]

    def active() -> bool:  # (transformers 5 renamed is_gradient_checkpointing)
        m = encoder.model
        return m.is_activation_checkpointing if hasattr(type(m), "is_activation_checkpointing") else \
            m.is_gradient_checkpointing

    plain = grads(False)
    assert not active()
    checkpointed = grads(True)
    assert active()
    for a, b in zip(plain, checkpointed, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_activation_checkpointing_without_transformer_blocks_is_refused(ptcli, tmp_path):
    r = ptcli("pretrain", "model=convnet", "objective=simclr", "data=digits", "debug=smoke", "model.width=8",
              "model.stages=2", "trainer.max_steps=1", "trainer.activation_checkpointing=true",
              f"hydra.run.dir={tmp_path / 'r'}")
    assert r.code == 2, r
    assert "trainer.activation_checkpointing=true: ConvNet" in r.stderr

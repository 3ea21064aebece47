"""README "Extending ptcli", as a user does it: a model and an objective from their own package, each one module
and one YAML in a --config-dir, then pretrain, finetune and evaluate on them. Nothing under ptcli/ changes."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from ptcli.launch import launch

ENCODER = '''
"""A toy text encoder: token embedding + one GRU layer."""
from torch import nn


class GRUEncoder(nn.Module):
    # What it is (ptcli routes on these declarations, never on the class name):
    modality = "text"
    produces = "token_states"  # forward(ids, attention_mask) -> [B, T, dim]
    finetune_head = "sequence_classifier"
    hf_export = None

    def __init__(self, vocab_size: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.dim, self.vocab_size, self.max_len = dim, vocab_size, max_len
        self.tok_emb = nn.Embedding(vocab_size, dim)  # MaskedLM ties its decoder to it
        self.rnn = nn.GRU(dim, dim, batch_first=True)

    def forward(self, input_ids, attention_mask=None):
        return self.rnn(self.tok_emb(input_ids))[0]
'''

OBJECTIVE = '''
"""Span masking (SpanBERT-style, toy): contiguous spans of `span` tokens instead of single tokens."""
import torch
import torch.nn.functional as F

from ptcli.objectives.mlm import IGNORE, MaskedLM


class SpanMLM(MaskedLM):
    def __init__(self, span: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.span = span

    def mask(self, input_ids, generator=None):
        starts = torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < self.mask_rate / self.span
        # a position is covered when a span started at most span-1 tokens before it
        covered = F.max_pool1d(F.pad(starts.float()[:, None], (self.span - 1, 0)), self.span, stride=1)[:, 0]
        selected = covered.bool() & ~self.special[input_ids]
        labels = torch.where(selected, input_ids, IGNORE)
        return torch.where(selected, self.mask_id, input_ids), labels
'''

MODEL_YAML = """
# model=gru: a toy GRU encoder from my own package.
_target_: mylab_ext.encoder.GRUEncoder
dim: 32
max_len: 128
"""

OBJECTIVE_YAML = """
# objective=span_mlm: masks spans of 3 tokens.
_target_: mylab_ext.span_mlm.SpanMLM
mask_rate: 0.3
span: 3
"""


@pytest.fixture
def user_package(tmp_path, monkeypatch) -> Path:
    src = tmp_path / "src" / "mylab_ext"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "encoder.py").write_text(textwrap.dedent(ENCODER))
    (src / "span_mlm.py").write_text(textwrap.dedent(OBJECTIVE))
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "objective").mkdir()
    (conf / "model" / "gru.yaml").write_text(MODEL_YAML)
    (conf / "objective" / "span_mlm.yaml").write_text(OBJECTIVE_YAML)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.setenv("PTCLI_TRUSTED_PACKAGES", "mylab_ext")
    yield conf
    for name in [m for m in sys.modules if m.startswith("mylab_ext")]:
        del sys.modules[name]


def _manifest(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_a_users_model_and_objective_pretrain_finetune_and_evaluate(user_package, tmp_path, capsys, monkeypatch):
    conf, pre, fine = user_package, tmp_path / "pre", tmp_path / "fine"
    code = launch("pretrain", ["--config-dir", str(conf), "model=gru", "objective=span_mlm", "debug=smoke",
                               "trainer.max_steps=30", f"hydra.run.dir={pre}"])
    assert code == 0, capsys.readouterr().err
    metrics = _manifest(pre)["metrics"]
    first = json.loads((pre / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["train/loss"] < first["loss"] - 0.5, (first, metrics)  # it learned something
    saved = (pre / "config.yaml").read_text()
    assert "mylab_ext.encoder.GRUEncoder" in saved and "mylab_ext.span_mlm.SpanMLM" in saved

    # The span objective really masks spans: runs of masked positions are longer than single-token MLM's.
    import torch
    from omegaconf import OmegaConf

    from ptcli.build import component_class
    from ptcli.objectives.mlm import IGNORE

    cls = component_class(OmegaConf.create({"_target_": "mylab_ext.span_mlm.SpanMLM"}), "objective")
    enc = component_class(OmegaConf.create({"_target_": "mylab_ext.encoder.GRUEncoder"}), "model")(50, 8, 16)
    obj = cls(span=3, encoder=enc, special_ids=[0], mask_id=1, mask_rate=0.3)
    _, labels = obj.mask(torch.randint(2, 50, (4, 64)), generator=torch.Generator().manual_seed(0))
    masked = (labels != IGNORE).int()
    runs = (masked[:, 1:] & masked[:, :-1]).sum() / masked.sum()
    assert runs > 0.5, "spans: most masked tokens have a masked neighbour"

    code = launch("finetune", [f"pretrained={pre}", "debug=smoke", "trainer.max_steps=10", f"hydra.run.dir={fine}"])
    assert code == 0, capsys.readouterr().err
    assert "test/accuracy" in _manifest(fine)["metrics"]
    for run in (pre, fine):
        out = tmp_path / f"eval-{run.name}"
        assert launch("evaluate", [f"run_dir={run}", f"hydra.run.dir={out}"]) == 0, capsys.readouterr().err
        scored = _manifest(out)["metrics"]
        assert scored and all(k.startswith("test/") for k in scored)

    # Loading such a run needs the loading user's trust too.
    monkeypatch.delenv("PTCLI_TRUSTED_PACKAGES")
    capsys.readouterr()
    assert launch("evaluate", [f"run_dir={fine}", f"hydra.run.dir={tmp_path / 'untrusted'}"]) == 2
    assert "trusted_packages=[mylab_ext]" in capsys.readouterr().err

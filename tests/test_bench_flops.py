"""The one definition of MFU's numerator (scripts/bench_common.py), against what torch's FLOP counter sees ptcli run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_common import mlm_minimal_forward_flops  # noqa: E402

from ptcli.models.transformer import TransformerEncoder  # noqa: E402
from ptcli.objectives.mlm import IGNORE, MaskedLM  # noqa: E402


@pytest.mark.parametrize("masked_per_row", [3, 8])
def test_minimal_flops_are_what_ptcli_executes_when_every_row_has_as_many_masked_tokens(masked_per_row):
    # ptcli computes its last block's queries at the masked positions padded to the widest row: with the same
    # count in every row nothing is padded, so its weight matmuls are exactly the minimal ones (the formula's
    # attention part is not checked: CPU SDPA is opaque to the counter).
    dim, layers, ffn, seq, vocab, batch = 32, 3, 64, 16, 50, 4
    torch.manual_seed(0)
    model = MaskedLM(TransformerEncoder(vocab, dim=dim, layers=layers, heads=2, ffn_dim=ffn, max_len=seq),
                     special_ids=[0, 1, 2, 3, 4], mask_id=4).train()
    inputs = torch.randint(5, vocab, (batch, seq))
    labels = torch.full_like(inputs, IGNORE)
    for row in range(batch):
        where = torch.randperm(seq)[:masked_per_row]
        labels[row, where] = inputs[row, where]
    with FlopCounterMode(display=False) as counter:
        model(inputs, labels)["loss"].backward()
    counted = counter.get_total_flops() / inputs.numel()
    matmuls, _ = mlm_minimal_forward_flops(dim, layers, 4 * ffn * dim, seq, vocab, masked_per_row / seq)
    assert counted == pytest.approx(3 * matmuls, rel=1e-6)

"""The benchmarks are not tests of speed; CI runs each in a tiny mode so that they keep working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# Each script is its own process with its own imports and warm-up: CI (scripts/test.sh) runs them, the inner loop not.
pytestmark = pytest.mark.slow


def render_table(result: Path) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_table.py"), str(result)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def run_script(name: str, *args: str, cache_dir: Path) -> str:
    env = {**os.environ, "PTCLI_CACHE": str(cache_dir / "ptcli"), "HF_DATASETS_CACHE": str(cache_dir / "hf")}
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_mlm_tiny(cache_dir, tmp_path):
    require("accelerate", "the `bench` extra is not installed")  # the HF Trainer baseline
    result = tmp_path / "mlm.json"  # not scripts/results/bench/: tests/test_bench_results.py checks what lies there
    # bf16 here (every side under an autocast: the branch with more settings); the time-to-quality test runs fp32.
    # --size tiny: every code path at a fraction of the cost (a full-size bf16 step takes minutes on a CPU without
    # native bf16, such as an AVX2-only EPYC).
    out = run_script("bench_mlm.py", "--size", "tiny", "--precision", "bf16", "--rounds", "1", "--steps", "4",
                     "--warmup", "1", "--log-every", "2", "--val-blocks", "32", "--matmul-seconds", "0.05",
                     "--out", str(result), cache_dir=cache_dir)
    assert "ptcli" in out and "ratio ptcli/modernbert" in out and "MFU" in out and "HW util" in out
    data = json.loads(result.read_text())
    assert set(data["sides"]) == {"ptcli", "hf_bert", "modernbert"} and data["machine"]["cpu_count"] >= 1
    assert data["settings"]["size"] == "tiny" and data["settings"]["dim"] == 64 and data["settings"]["seq"] == 64
    assert data["settings"]["precision"] == "bf16" and data["matmul_rate_gflops"]["before"]["dtype"] == "bf16"
    assert "ModernBertForMaskedLM` (eager" in data["sides"]["modernbert"]["label"]
    for side in data["sides"].values():  # the FLOP formulas' weight matmuls = what torch's FLOP counter saw
        flops = side["flops_per_token"]
        assert flops["check_counted"] == pytest.approx(flops["check_formula_matmuls"], rel=0.01)
    table = render_table(result)
    assert "| ratio ptcli/hf_bert | **" in table and "ModernBertForMaskedLM" in table and ", bf16, " in table


def test_bench_mlm_time_to_quality_tiny(cache_dir, tmp_path):
    require("accelerate", "the `bench` extra is not installed")
    result = tmp_path / "ttq.json"
    # Two sides keep it short (the throughput test above runs all three): the mode's logic is side-agnostic.
    run_script("bench_mlm.py", "--size", "tiny", "--time-to-quality", "--sides", "ptcli,modernbert", "--budget", "1",
               "--eval-every", "2", "--log-every", "2", "--val-blocks", "16", "--matmul-seconds", "0.05", "--lr",
               "modernbert=1e-3", "--embed-norm", "--out", str(result), cache_dir=cache_dir)
    data = json.loads(result.read_text())
    assert set(data["curves"]) == {"ptcli", "modernbert"}
    assert "embedding LayerNorm" in data["sides"]["ptcli"]["label"] and data["settings"]["embed_norm"] is True
    assert "embedding LayerNorm (--embed-norm" in data["differences"]["ptcli"]
    assert data["settings"]["lr"] == {"ptcli": 5e-4, "hf_bert": 5e-4, "modernbert": 1e-3}  # per side
    assert data["target_val_loss"] == max(data["loss_at_budget"].values())
    assert all(curve[-1]["seconds"] >= 1 for curve in data["curves"].values())
    table = render_table(result)
    assert "seconds to target" in table and "| 0.0005 |" in table and "| 0.001 |" in table


def test_bench_simclr_tiny(cache_dir, tmp_path):
    result = tmp_path / "simclr.json"
    out = run_script("bench_simclr.py", "--no-peer", "--rounds", "1", "--steps", "3", "--warmup", "1",
                     "--matmul-seconds", "0.05", "--out", str(result), cache_dir=cache_dir)
    assert "images/s" in out and "FLOP utilization" in out
    assert "| ptcli `SimCLR`" in render_table(result)


PEER_PYTHON = SCRIPTS.parent / ".venv-peers" / "bin" / "python"


@pytest.mark.skipif(not PEER_PYTHON.exists(), reason="no .venv-peers (torch + torchvision + lightly, ~5.5 GB): "
                                                    "bash scripts/setup_peers.sh builds it")
def test_bench_simclr_lightly_side_tiny(cache_dir, tmp_path):
    result = tmp_path / "simclr.json"
    out = run_script("bench_simclr.py", "--rounds", "1", "--steps", "3", "--warmup", "1", "--matmul-seconds", "0.05",
                     "--out", str(result), cache_dir=cache_dir)
    assert "ratio ptcli/lightly" in out
    data = json.loads(result.read_text())
    assert data["sides"]["lightly"]["torchvision"] and 0 <= data["sides"]["lightly"]["knn_accuracy"] <= 1
    assert "| ratio ptcli/lightly | **" in render_table(result)


def test_bench_finetune_tiny(cache_dir, tmp_path):
    require("accelerate", "the `bench` extra is not installed")  # the HF Trainer baseline
    result = tmp_path / "finetune.json"
    # One HF side (the bf16 + eager one: the most settings apart from the shared ones) keeps it short.
    # Batch 8 of 32 tokens: a bf16 side costs minutes at full size on a CPU that emulates bf16 (AVX2-only EPYC).
    out = run_script("bench_finetune.py", "--rounds", "1", "--steps", "6", "--eval-every", "3", "--warmup", "1",
                     "--batch", "8", "--max-len", "32", "--hf-sides", "hf_bert_bf16", "--out", str(result),
                     cache_dir=cache_dir)
    assert "ratio ptcli/hf_bert_bf16" in out
    data = json.loads(result.read_text())
    assert data["settings"]["train_examples"] == 320  # 20 packages x 16 labels
    assert data["settings"]["batch"] == 8 and data["settings"]["max_len"] == 32
    assert data["settings"]["hf_variants"] == {"hf_bert_bf16": {"attn": "eager", "group_by_length": False,
                                                                "bf16": True}}
    assert data["sides"]["hf_bert_bf16"]["per_round"][0]["same_token_ids"]  # both sides saw the same token ids
    assert "BertForSequenceClassification" in render_table(result)


def test_bench_tokenize(cache_dir):
    out = run_script("bench_tokenize.py", "--vocab", "1000", "--docs", "500", "--corpus-cache",
                     str(cache_dir / "ptcli"), cache_dir=cache_dir)
    assert "encode_batch" in out and "tokens/s" in out


def test_bench_streaming_tiny(cache_dir):
    out = run_script("bench_streaming.py", "--tiny", "--no-contrast", cache_dir=cache_dir)
    assert "pretrain streaming big" in out and "stream whole file" in out and "peak RSS MB" in out


def test_gpu_check_dry_run_on_cpu(cache_dir):
    out = run_script("gpu_check.py", "--device", "cpu", "--size", "tiny", "--steps", "10", cache_dir=cache_dir)
    assert "tokens/s" in out and "MFU" in out

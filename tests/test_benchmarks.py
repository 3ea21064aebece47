"""The benchmarks are not tests of speed; CI runs each in a tiny mode so that they keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# Each script is its own process with its own imports and warm-up: CI (scripts/test.sh) runs them, the inner loop not.
pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, cache_dir: Path) -> str:
    env = {**os.environ, "PTCLI_CACHE": str(cache_dir / "ptcli"), "HF_DATASETS_CACHE": str(cache_dir / "hf")}
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_mlm_tiny(cache_dir):
    require("accelerate", "the `bench` extra is not installed")  # the HF Trainer baseline
    out = run_script("bench_mlm.py", "--rounds", "1", "--steps", "3", "--warmup", "1", cache_dir=cache_dir)
    assert "ptcli" in out and "ratio" in out.lower() and "MFU" in out


def test_bench_simclr_tiny(cache_dir):
    out = run_script("bench_simclr.py", "--steps", "3", "--warmup", "1", cache_dir=cache_dir)
    assert "images/s" in out and "FLOP utilization" in out


def test_bench_tokenize(cache_dir):
    out = run_script("bench_tokenize.py", "--vocab", "1000", "--docs", "500", cache_dir=cache_dir)
    assert "encode_batch" in out and "tokens/s" in out


def test_bench_streaming_tiny(cache_dir):
    out = run_script("bench_streaming.py", "--tiny", "--no-contrast", cache_dir=cache_dir)
    assert "pretrain streaming big" in out and "stream whole file" in out and "peak RSS MB" in out


def test_gpu_check_dry_run_on_cpu(cache_dir):
    out = run_script("gpu_check.py", "--device", "cpu", "--size", "tiny", "--steps", "10", cache_dir=cache_dir)
    assert "tokens/s" in out and "MFU" in out

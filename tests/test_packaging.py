"""The wheel ships conf/ inside the package, so a non-editable install finds its configs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # pip builds a wheel
def test_wheel_contains_configs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    if proc.returncode != 0 and "hatchling" in proc.stderr:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                               str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("ptcli-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for conf in ("pretrain.yaml", "finetune.yaml", "evaluate.yaml", "model/transformer.yaml", "debug/smoke.yaml",
                 "data/pydocs.yaml", "hydra/ptcli.yaml"):
        assert f"ptcli/conf/{conf}" in names, conf
    assert any(n.endswith("entry_points.txt") for n in names)

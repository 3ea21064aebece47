"""The README's performance tables are the measured ones: every result file in scripts/results/bench/ (the raw JSON
that scripts/bench_*.py write) rendered by scripts/bench_table.py must appear in README.md, character for character."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results" / "bench"
sys.path.insert(0, str(ROOT / "scripts"))

import bench_table  # noqa: E402

# The main machine's results, and those quoted from other machines (machines/<name>/); other subfolders hold runs
# the README describes without a table (sweeps, earlier versions).
FILES = sorted(RESULTS.glob("*.json")) + sorted(RESULTS.glob("machines/*/*.json"))
NO_FILES = pytest.param(None, marks=pytest.mark.skip(
    reason="no result files in scripts/results/bench/ yet: run the benchmarks (README: Performance), commit their "
           "JSON and paste what scripts/bench_table.py prints"))


@pytest.mark.parametrize("path", FILES or [NO_FILES], ids=lambda p: str(p.relative_to(RESULTS)) if p else "none")
def test_readme_table_matches_result_file(path: Path):
    expected = bench_table.render(json.loads(path.read_text()))
    readme = (ROOT / "README.md").read_text()
    assert expected in readme, (
        f"README.md lacks the table of {path.relative_to(ROOT)} (or holds an edited one). Paste the output of\n"
        f"  python scripts/bench_table.py {path.relative_to(ROOT)}\nExpected:\n{expected}")


def test_renderer_rejects_an_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        bench_table.render({"benchmark": "nope"})

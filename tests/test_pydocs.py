"""The embedded corpus: deterministic extraction, fixed splits, labels."""

from __future__ import annotations

import pytest

from ptcli.data.pydocs import extract_docstrings, load_pydocs
from ptcli.data.sources import Pydocs


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_extraction_is_deterministic_with_disjoint_splits(cache_dir):
    a = extract_docstrings()
    # The cached corpus was extracted by whichever process asked first (under xdist usually another worker, with
    # another hash seed): the same splits, texts and labels, in the same order.
    cached = load_pydocs()
    assert {s: cached[s].to_dict() for s in cached} == a
    sources = {s: set(a[s]["source"]) for s in a}
    assert not sources["train"] & sources["validation"] and not sources["train"] & sources["test"]
    assert len(a["train"]["text"]) > 5000 and len(a["validation"]["text"]) > 200 and len(a["test"]["text"]) > 200
    assert "email" in a["train"]["package"] and not any(p == "test" for p in a["train"]["package"])


def test_cached_arrow_dataset_and_top_labels(cache_dir):
    dd = load_pydocs()
    assert set(dd) == {"train", "validation", "test"}
    again = load_pydocs()
    assert again["train"]._fingerprint == dd["train"]._fingerprint  # loaded from the Arrow cache
    splits = Pydocs(num_labels=5).load()
    labels = {v for v in splits["train"]["label"] if v is not None}
    assert len(labels) == 5

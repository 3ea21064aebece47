"""Where ptcli caches derived data (corpora, trained tokenizers). ``PTCLI_CACHE`` overrides it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("PTCLI_CACHE")
    root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ptcli"
    root.mkdir(parents=True, exist_ok=True)
    return root

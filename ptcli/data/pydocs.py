"""``data=pydocs``: docstrings of the running Python's standard library, as an Arrow dataset.

Sources are parsed with ``ast`` (never imported). Order is deterministic (sorted paths, AST walk
order) and the validation/test split is a fixed hash of each docstring's location, so every machine
with the same Python gets the same splits. Two labels: ``package``, the top-level package or module (``email``,
``os``: largely decided by topic words), and ``kind``, what the docstring documents (``module``, ``class``,
``function``, ``method``: decided by how it is written, not by which package's words it uses).
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import sysconfig
import zlib
from pathlib import Path

from ptcli.cache import cache_root

# Test suites are code about code; site-packages is not the standard library.
EXCLUDED_PARTS = {"site-packages", "dist-packages", "test", "tests", "__pycache__"}
MIN_CHARS = 20


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _source_files(root: Path) -> list[Path]:
    # Pruned walk: every run fingerprints the tree, and rglob would also walk site-packages (often the largest part
    # of the stdlib folder) only to drop it.
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_PARTS]
        found.extend(Path(folder, f) for f in files if f.endswith(".py") and f not in EXCLUDED_PARTS)
    return sorted(found)


def _split_of(key: str) -> str:
    bucket = zlib.crc32(key.encode("utf-8")) % 100
    return "test" if bucket < 5 else "validation" if bucket < 10 else "train"


KINDS = ("module", "class", "function", "method")


def _kinds(tree: ast.Module) -> dict[ast.AST, str]:
    """What each documented node is: a function defined directly in a class body is a method."""
    kinds: dict[ast.AST, str] = {tree: "module"}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            if isinstance(child, ast.ClassDef):
                kinds[child] = "class"
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kinds[child] = "method" if isinstance(parent, ast.ClassDef) else "function"
    return kinds


def extract_docstrings(root: Path | None = None) -> dict[str, dict[str, list[str]]]:
    """Return ``{split: {"text": [...], "package": [...], "kind": [...], "source": [...]}}``."""
    root = root or stdlib_root()
    out = {s: {"text": [], "package": [], "kind": [], "source": []} for s in ("train", "validation", "test")}
    for path in _source_files(root):
        rel = path.relative_to(root)
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # a few stdlib files are intentionally invalid (lib2to3 fixtures, encodings)
        package = rel.parts[0].removesuffix(".py")
        kinds = _kinds(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < MIN_CHARS:
                continue
            name = getattr(node, "name", "<module>")
            source = f"{rel.as_posix()}:{getattr(node, 'lineno', 0)}:{name}"
            split = out[_split_of(source)]
            split["text"].append(doc)
            split["package"].append(package)
            split["kind"].append(kinds[node])
            split["source"].append(source)
    return out


def _fingerprint(root: Path) -> str:
    h = hashlib.sha256(f"v2|{root}|{MIN_CHARS}|{sorted(EXCLUDED_PARTS)}".encode())
    for p in _source_files(root):
        st = p.stat()
        h.update(f"{p}|{st.st_size}".encode())
    return h.hexdigest()[:16]


def load_pydocs():
    """The corpus as a ``DatasetDict`` (train/validation/test; columns text, package, kind, source)."""
    import datasets

    root = stdlib_root()
    target = cache_root() / "pydocs" / _fingerprint(root)
    if (target / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(target))
    splits = extract_docstrings(root)
    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict(cols) for name, cols in splits.items()})
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    dd.save_to_disk(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))

"""``ptcli embed``: pooled encoder embeddings (the backbone without its pre-training or task head).

Text: mean over real tokens of the final hidden states. Images: the encoder's pooled features.
Output: ``.npy`` (float32 ``[N, dim]``) or ``.parquet`` (one ``embedding`` list column).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ptcli.errors import UsageError


def _encoder(run_dir: Path):
    from ptcli.build import instantiate, run_config, run_modality
    from ptcli.checkpoint import load_into, trained_checkpoint
    from ptcli.rundir import RunDir

    run = RunDir.load(run_dir)
    cfg = run_config(run)  # trusted packages: PTCLI_TRUSTED_PACKAGES
    ckpt = trained_checkpoint(run)
    if run_modality(cfg) == "image":
        encoder, tok = instantiate(cfg.model, "model"), None
    else:
        from ptcli.tokenizer import load_tokenizer

        tok = load_tokenizer(run.tokenizer_dir)
        encoder = instantiate(cfg.model, "model", vocab_size=tok.get_vocab_size())
    # A head=cloze fine-tune keeps its encoder inside the masked LM it trained (ptcli/models/cloze.py).
    prefix = "mlm.encoder." if cfg.get("head") == "cloze" else "encoder."
    missing = load_into(encoder, ckpt, strict=False, prefix=prefix)
    if missing:
        raise UsageError(f"{ckpt}: no encoder weights {missing[:3]} in this checkpoint.")
    return encoder.eval(), tok, cfg


@contextmanager
def _as_option(option: str) -> Iterator[None]:
    """The readers name config keys (``data.path``, ``data.text_column``); here the user typed options."""
    try:
        yield
    except UsageError as exc:
        text = str(exc).replace("data.text_column=", "--text-column ").replace("data.text_column", "--text-column")
        for key in ("data.input", "data.path", "data.train"):
            text = text.replace(key, option)
        raise UsageError(text) from exc


@torch.no_grad()
def embed(run_dir: Path, input_path: Path, out: Path, text_column: str = "text", batch_size: int = 64) -> int:
    """Write embeddings of every row/image of ``input_path`` to ``out``; return the number of rows."""
    if not input_path.exists():
        raise UsageError(f"--input: '{input_path}' does not exist.")
    if out.suffix not in (".npy", ".parquet"):
        raise UsageError(f"--out: '{out}' must end in .npy or .parquet.")
    if out.is_dir():
        raise UsageError(f"--out: '{out}' is a directory; pass a file path ending in .npy or .parquet.")
    encoder, tok, cfg = _encoder(run_dir)
    if tok is None:
        from ptcli.data.images import load_image_folder

        with _as_option("--input"):
            x, _, _ = load_image_folder(str(input_path), int(cfg.data.get("size") or 8), int(cfg.model.in_channels))
        feats = torch.cat([encoder(x[i : i + 512]).float() for i in range(0, len(x), 512)])
    else:
        from ptcli.data.sources import TextFiles
        from ptcli.data.text import pad_batch, tokenize_texts
        from ptcli.models.classifier import masked_mean
        from ptcli.tokenizer import special_ids

        with _as_option("--input"):  # (the checks of data=text's files: exists, is a file, a known format)
            files = TextFiles(train=str(input_path), text_column=text_column, label_column="\0")
            ds = files._read("input", files._files()["train"])
        seqs = tokenize_texts(ds, tok, int(cfg.model.max_len), "--input")
        pad = special_ids(tok)["pad"]
        chunks = []
        for i in range(0, len(seqs), batch_size):
            ids, mask = pad_batch(seqs[i : i + batch_size], pad)
            chunks.append(masked_mean(encoder(ids, mask), mask).float())
        feats = torch.cat(chunks)
    arr = feats.numpy().astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, arr)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"embedding": list(arr)}), tmp)
    tmp.replace(out)
    return len(arr)

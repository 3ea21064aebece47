"""Text preparation throughput on the embedded ``pydocs`` corpus: tokenizer training, tokenization, and
packing into blocks, cold (empty caches) and warm (cached by fingerprint, as on a second run).

    python scripts/bench_tokenize.py                  # the default WordPiece 8192 of bench_mlm.py
    python scripts/bench_tokenize.py --vocab 1000     # a smaller vocabulary
    python scripts/bench_tokenize.py --vocab 1000 --docs 500 --corpus-cache DIR   # CI: a smoke run of the script

Prints documents, characters and tokens, and for each stage its time and throughput (tokens/s). The
``encode_batch`` line is the raw Rust tokenizer over the whole split in one call; ``pack_blocks`` adds
``datasets.map`` (Arrow writes, fingerprinted cache) around the same work.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--docs", type=int, default=None, help="only the first N training documents (CI: a smoke run)")
    parser.add_argument("--corpus-cache", default=None,
                        help="use this ptcli cache instead of an empty one (CI: the corpus extraction is then a "
                             "cache hit, as is anything this cache held before; the figures are not cold ones)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PTCLI_CACHE"] = args.corpus_cache or cache  # default cold: nothing cached yet
        os.environ["HF_DATASETS_CACHE"] = os.path.join(cache, "hf")
        import datasets
        from omegaconf import OmegaConf

        from ptcli.data.sources import Pydocs
        from ptcli.data.text import pack_blocks
        from ptcli.tokenizer import build_tokenizer

        datasets.disable_progress_bars()
        t = time.perf_counter()
        splits = Pydocs().load()
        load_s = time.perf_counter() - t
        train = splits["train"] if args.docs is None else splits["train"].select(range(args.docs))
        texts = train["text"]
        chars = sum(map(len, texts))
        tcfg = OmegaConf.create({"path": None, "kind": "wordpiece", "vocab_size": args.vocab, "lowercase": True,
                                 "min_frequency": 2})
        t = time.perf_counter()
        tok = build_tokenizer(tcfg, train)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        encodings = tok.encode_batch(texts, add_special_tokens=False)
        encode_s = time.perf_counter() - t
        tokens = sum(len(e.ids) for e in encodings)
        t = time.perf_counter()
        blocks = pack_blocks(train, tok, args.block_size, "bench")
        pack_cold_s = time.perf_counter() - t
        t = time.perf_counter()
        pack_blocks(train, tok, args.block_size, "bench")
        pack_warm_s = time.perf_counter() - t
        t = time.perf_counter()
        build_tokenizer(tcfg, train)
        train_warm_s = time.perf_counter() - t

    print(f"pydocs train split: {len(texts):,} documents, {chars / 1e6:.1f}M characters, {tokens / 1e6:.2f}M tokens "
          f"(WordPiece {args.vocab}), {len(blocks):,} blocks of {args.block_size}; cores: {os.cpu_count()}")
    print(f"{'stage':<34} {'seconds':>8} {'tokens/s':>12}")
    rows = [("corpus extraction (first run)", load_s, None), ("tokenizer training (cold)", train_s, None),
            ("tokenizer (warm: cache hit)", train_warm_s, None), ("encode_batch (raw tokenizer)", encode_s, tokens),
            ("pack_blocks (cold: tokenize+pack)", pack_cold_s, tokens),
            ("pack_blocks (warm: cache hit)", pack_warm_s, None)]
    for name, seconds, n in rows:
        rate = f"{n / seconds:,.0f}" if n else ""
        print(f"{name:<34} {seconds:>8.2f} {rate:>12}")


if __name__ == "__main__":
    main()

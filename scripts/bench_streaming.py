"""Streaming corpora: peak memory and throughput of ``data.streaming=true`` as the corpus grows.

    python scripts/bench_streaming.py                    # 200 MB corpus (and a 20 MB one), 100 steps each
    python scripts/bench_streaming.py --mb 500 --steps 300
    python scripts/bench_streaming.py --tiny             # CI: a 2 MB corpus, a few steps

Generates deterministic synthetic text files (Zipf-distributed pseudo-words, one document per line) in a
temporary directory, then runs each case in a child process and reports its peak RSS (``wait4``'s
``ru_maxrss``) and speed:

* ``pretrain streaming``: ``ptcli pretrain data=text data.train=FILE data.streaming=true`` for
  ``--steps`` steps on the big and on the small file. The same peak RSS on both shows that memory does not
  grow with the corpus. tokens/s is the trainer's own figure (median of its log lines).
* ``stream whole file``: read -> tokenize -> pack every block of the big file through ``StreamingBlocks``
  without training: memory over a full pass, and the data pipeline's throughput.
* ``pretrain in memory``: the same pretrain without streaming, for contrast (it tokenizes and holds the
  whole corpus before the first step): on the small file, or on the big one with ``--contrast-on big``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["model.dim=128", "model.layers=4", "model.heads=4", "model.ffn_dim=512"]
TINY_MODEL = ["model.dim=32", "model.layers=2", "model.heads=2", "model.ffn_dim=64"]


def make_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """Write ``megabytes`` of synthetic documents (one per line, 5-60 words); returns the line count."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "xe", "zu", "an", "el", "or", "is", "um", "qua"]
    vocab = np.array(sorted({"".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(40_000)}))
    p = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf: a few very frequent words, a long tail
    p /= p.sum()
    target, written, lines = int(megabytes * 1_000_000), 0, 0
    with path.open("w") as f:
        while written < target:
            lengths = rng.integers(5, 61, size=500)
            words = vocab[rng.choice(len(vocab), size=int(lengths.sum()), p=p)]
            cuts = np.cumsum(lengths)[:-1]
            chunk = "".join(" ".join(doc) + ".\n" for doc in np.split(words, cuts))
            f.write(chunk)
            written += len(chunk)
            lines += len(lengths)
    return lines


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[int, float, float, str]:
    """Start ``argv`` and reap it with ``os.wait4`` to get its own peak RSS."""
    t = time.perf_counter()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    log.seek(0)
    return proc.returncode, usage.ru_maxrss / 1024, wall, log.read()[-3000:]


def pretrain_case(name: str, data: Path, streaming: bool, args: argparse.Namespace, env: dict[str, str],
                  runs: Path) -> dict:
    run_dir = runs / name.replace(" ", "_")
    model = TINY_MODEL if args.tiny else MODEL
    argv = [sys.executable, "-m", "ptcli", "pretrain", "data=text", f"data.train={data}",
            f"data.streaming={'true' if streaming else 'false'}", *model, f"trainer.max_steps={args.steps}",
            f"trainer.batch_size={args.batch_size}", f"data.block_size={args.block_size}",
            f"model.max_len={args.block_size}", f"tokenizer.vocab_size={args.vocab}",
            f"trainer.log_every={max(1, args.steps // 10)}", f"trainer.eval_every={args.steps}",
            "trainer.eval_batches=4", "trainer.progress=log", f"data.num_workers={args.workers if streaming else 0}",
            f"hydra.run.dir={run_dir}"]
    code, rss, wall, tail = run_measured(argv, env)
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}):\n{tail}")
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [e["tokens_per_s"] for e in logs if e.get("split") == "train" and "tokens_per_s" in e][1:]
    manifest = json.loads((run_dir / "run.json").read_text())
    return {"case": name, "file_mb": data.stat().st_size / 1e6, "steps": args.steps, "rss_mb": rss, "wall_s": wall,
            "first_step_s": manifest.get("first_step_s"), "tokens_per_s": statistics.median(speeds) if speeds else None}


def drain(data: str, block_size: int, vocab: int, batch_size: int) -> None:
    """Child mode: stream every block of ``data`` once (no training); print blocks, tokens and seconds."""
    from omegaconf import OmegaConf

    from ptcli.data.sources import TextFiles
    from ptcli.data.streaming import StreamingBlocks, StreamingCorpus
    from ptcli.tokenizer import build_tokenizer

    corpus = StreamingCorpus(TextFiles(train=data, streaming=True), block_size, seed=0)
    tcfg = OmegaConf.create({"path": None, "kind": "wordpiece", "vocab_size": vocab, "lowercase": True,
                             "min_frequency": 2, "train_examples": None})
    tok = build_tokenizer(tcfg, corpus.tokenizer_sample())
    batches = StreamingBlocks(corpus, tok, batch_size, rank=0, world=1)
    t, blocks = time.perf_counter(), 0
    while True:
        next(batches)
        blocks += batch_size
        if batches.positions[0]["epoch"] > 0:  # the first full pass is done
            break
    print(json.dumps({"blocks": blocks, "tokens": blocks * block_size, "seconds": time.perf_counter() - t}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200, help="size of the big corpus (MB)")
    parser.add_argument("--small-mb", type=float, default=20, help="size of the small corpus (MB)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers of the streaming runs")
    parser.add_argument("--no-drain", action="store_true", help="skip the full pass over the big file")
    parser.add_argument("--no-contrast", action="store_true", help="skip the in-memory (non-streaming) run")
    parser.add_argument("--contrast-on", choices=("small", "big"), default="small",
                        help="corpus of the in-memory run (big: minutes, and memory that grows with the corpus)")
    parser.add_argument("--tiny", action="store_true", help="CI mode: 2 MB / 0.5 MB corpora, 5 steps, tiny model")
    parser.add_argument("--_drain", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._drain:
        drain(args._drain[0], args.block_size, args.vocab, args.batch_size)
        return
    if args.tiny:
        args.mb, args.small_mb, args.steps, args.vocab, args.batch_size = 2, 0.5, 5, 1000, 8
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PTCLI_CACHE": str(tmp_path / "cache"),
               "HF_DATASETS_CACHE": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
        big, small = tmp_path / "big.txt", tmp_path / "small.txt"
        t = time.perf_counter()
        docs = make_corpus(big, args.mb)
        make_corpus(small, args.small_mb, seed=1)
        print(f"corpora: {big.stat().st_size / 1e6:.0f} MB ({docs:,} documents) and "
              f"{small.stat().st_size / 1e6:.1f} MB, written in {time.perf_counter() - t:.0f}s", flush=True)
        rows = []
        # --tiny (CI) keeps one run of each kind: the small streaming run would only repeat the big one's code path.
        for name, data, streaming in (("pretrain streaming", big, True),
                                      *(() if args.tiny else (("pretrain streaming", small, True),)),
                                      *(() if args.no_contrast else
                                        (("pretrain in memory", big if args.contrast_on == "big" else small, False),))):
            rows.append(pretrain_case(f"{name} {data.stem}", data, streaming, args, env, tmp_path / "runs"))
            print(f"  done: {rows[-1]['case']}: {rows[-1]['rss_mb']:.0f} MB peak RSS", flush=True)
        if not args.no_drain:
            argv = [sys.executable, str(Path(__file__).resolve()), "--_drain", str(big),
                    "--block-size", str(args.block_size), "--vocab", str(args.vocab), "--batch-size", "256"]
            code, rss, wall, tail = run_measured(argv, env)
            if code != 0:
                raise SystemExit(f"stream whole file failed (exit {code}):\n{tail}")
            stats = json.loads(tail.strip().splitlines()[-1])
            rows.append({"case": "stream whole file (batches of 256)", "file_mb": big.stat().st_size / 1e6,
                         "steps": stats["blocks"] // 256, "rss_mb": rss, "wall_s": wall, "first_step_s": None,
                         "tokens_per_s": stats["tokens"] / stats["seconds"]})
    print(f"\nblock_size={args.block_size} batch_size={args.batch_size} vocab={args.vocab} "
          f"data.num_workers={args.workers}; model {' '.join(TINY_MODEL if args.tiny else MODEL)}")
    print(f"{'case':<34} {'file MB':>8} {'steps':>7} {'tokens/s':>10} {'1st step s':>10} {'wall s':>7} "
          f"{'peak RSS MB':>12}")
    for r in rows:
        tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"
        first = f"{r['first_step_s']:.1f}" if r["first_step_s"] else "-"
        print(f"{r['case']:<34} {r['file_mb']:>8.1f} {r['steps']:>7} {tps:>10} {first:>10} {r['wall_s']:>7.1f} "
              f"{r['rss_mb']:>12.0f}")


if __name__ == "__main__":
    main()
